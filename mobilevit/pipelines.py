"""transformers pipelines with this package's classes: `mobilevit.pipeline(task, model_dir_or_model)`.

`transformers.pipeline("image-classification", model="folder")` works on a folder saved here, but it builds
*stock* transformers' classes: the `model_type`s of this package's families are registered there, and the
folders are interchangeable. `mobilevit.pipeline` builds this package's model and image processor from the
same folder (or takes model / processor objects) through the family registry (`mobilevit.auto`) and hands
them to `transformers.pipeline`, so outputs come from the code in this package. The task is read from the
config's `architectures` when it is not given.

Object detection works the same way: transformers' own "object-detection" pipeline runs this package's
detector and calls the processor's `post_process_object_detection` (with its `threshold`, 0.5 unless given,
and each image's size), so `transformers.pipeline("object-detection", model=detector, image_processor=
processor)` gives the same detections; transformers only logs that it does not know the model class, which
`mobilevit.pipeline` keeps quiet.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os

from . import auto
from .tasks import CLASSIFICATION, OBJECT_DETECTION, PIPELINE_TASKS, SEGMENTATION, canonical_task

PIPELINE_TASK_NAMES = (CLASSIFICATION, SEGMENTATION, OBJECT_DETECTION)


def pipeline(task: str | None = None, model=None, image_processor=None, **kwargs):
    """A `transformers.pipeline` running this package's classes.

    Args:
        task: "image-classification", "image-segmentation" ("semantic-segmentation" is accepted too) or
            "object-detection"; inferred from the model (its config's `architectures`) when None.
        model: a folder saved by this package (`save_pretrained`, `mobilevit train`, `mobilevit convert`),
            a Hub repository id of one, or a classification / segmentation / detection model object of this
            package.
        image_processor: a `MobileViTImageProcessor`; by default the folder's, or the family's evaluation
            preprocessing for the model's `image_size` and task. Segmentation runs it without its centre crop, so
            the masks cover the whole image at its own size (stock transformers' pipeline crops). Detection
            squashes the whole image to the model's size and returns boxes in the image's pixels.
        **kwargs: passed on to `transformers.pipeline` (`device`, `dtype`, ...).

    Example:
        >>> classify = mobilevit.pipeline(model="runs/digits")        # task read from the folder
        >>> classify("photo.jpg", top_k=3)
        [{'label': 'seven', 'score': 0.91}, ...]
        >>> detect = mobilevit.pipeline("object-detection", model="ssdlite-mobilevit-xx-small")
        >>> detect("photo.jpg", threshold=0.5)
        [{'score': 0.93, 'label': 'cat', 'box': {'xmin': 12, 'ymin': 40, 'xmax': 210, 'ymax': 300}}, ...]
    """
    import transformers

    if task is not None:
        task = canonical_task(task, allowed=PIPELINE_TASK_NAMES)
    if model is None:
        raise ValueError("model: expected a model folder, a Hub repository id or a model of this package, got None")
    if isinstance(model, (str, os.PathLike)):
        model, folder_processor, task = auto.load_model_and_processor(model, task)
        image_processor = image_processor if image_processor is not None else folder_processor
    else:
        try:
            own_task = auto.task_of_model(model)
        except TypeError:
            raise TypeError(f"model: expected a folder path, a Hub repository id or a model of this package, "
                            f"got {type(model).__name__}") from None
        task = task or own_task
        if own_task != task:
            expected = auto.family_of(model).model_class(task).__name__
            raise TypeError(f"model: expected a {expected} for task {task!r}, got {type(model).__name__}")
        if image_processor is None:
            image_processor = auto.image_processor_for(model.config, task)
    if task not in PIPELINE_TASKS:
        raise ValueError(f"task: the {task!r} model has no pipeline; expected a model with one of the heads "
                         f"{sorted(PIPELINE_TASKS)}")
    if task == SEGMENTATION and getattr(image_processor, "do_center_crop", False) is not False:  # None: the default
        # segment the whole image: masks are resized back onto the photo, and a centre crop stretched over a
        # non-square photo would misplace everything outside it (as `mobilevit predict` does, predict.segment)
        image_processor = copy.deepcopy(image_processor)
        image_processor.do_center_crop = False
    with _quiet_model_type_check():
        return transformers.pipeline(PIPELINE_TASKS[task], model=model, image_processor=image_processor, **kwargs)


@contextlib.contextmanager
def _quiet_model_type_check():
    """transformers' pipelines log an error for a model class outside their own list (this package's detector),
    then run it all the same; the message would only mislead here."""
    logger = logging.getLogger("transformers.pipelines.base")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


__all__ = ["pipeline"]
