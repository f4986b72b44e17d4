"""transformers pipelines with this package's classes: `mobilevit.pipeline(task, model_dir_or_model)`.

`transformers.pipeline("image-classification", model="folder")` works on a folder saved here, but it builds
*stock* transformers' classes: the `model_type`s of this package's families are registered there, and the
folders are interchangeable. `mobilevit.pipeline` builds this package's model and image processor from the
same folder (or takes model / processor objects) through the family registry (`mobilevit.auto`) and hands
them to `transformers.pipeline`, so outputs come from the code in this package. The task is read from the
config's `architectures` when it is not given.
"""

from __future__ import annotations

import copy
import os

from . import auto
from .tasks import CLASSIFICATION, PIPELINE_TASKS, SEGMENTATION, canonical_task


def pipeline(task: str | None = None, model=None, image_processor=None, **kwargs):
    """A `transformers.pipeline` running this package's classes.

    Args:
        task: "image-classification" or "image-segmentation" ("semantic-segmentation" is accepted too);
            inferred from the model (its config's `architectures`) when None.
        model: a folder saved by this package (`save_pretrained`, `mobilevit train`, `mobilevit convert`),
            a Hub repository id of one, or a classification / segmentation model object of this package.
        image_processor: a `MobileViTImageProcessor`; by default the folder's, or the family's evaluation
            preprocessing for the model's `image_size`. Segmentation runs it without its centre crop, so the
            masks cover the whole image at its own size (stock transformers' pipeline crops).
        **kwargs: passed on to `transformers.pipeline` (`device`, `dtype`, ...).

    Example:
        >>> classify = mobilevit.pipeline(model="runs/digits")        # task read from the folder
        >>> classify("photo.jpg", top_k=3)
        [{'label': 'seven', 'score': 0.91}, ...]
    """
    import transformers

    if task is not None:
        task = canonical_task(task, allowed=(CLASSIFICATION, SEGMENTATION))
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
    return transformers.pipeline(PIPELINE_TASKS[task], model=model, image_processor=image_processor, **kwargs)


__all__ = ["pipeline"]
