"""transformers pipelines with this package's classes: `mobilevit.pipeline(task, model_dir_or_model)`.

`transformers.pipeline("image-classification", model="folder")` works on a folder saved here, but it builds
*stock* transformers' classes: the `model_type`s of this package's families are registered there, and the
folders are interchangeable. `mobilevit.pipeline` builds this package's model and image processor from the
same folder (or takes model / processor objects) through the family registry (`mobilevit.auto`) and hands
them to `transformers.pipeline`, so outputs come from the code in this package. The task is read from the
config's `architectures` when it is not given.

The pipelines it returns are transformers' own image-classification, image-segmentation and object-detection
pipelines (same arguments, same outputs: `top_k`, `function_to_apply`, `subtask`, `threshold`, ...) whose calls
stream through
`mobilevit.inference` like `mobilevit predict`: one image gives its result, a list gives a list, and a
generator, a torch `Dataset` or any other iterable gives a generator of results, in input order, with images
read and preprocessed on worker threads (`num_workers`), batched by shape (`batch_size`, default 8 for
classification and detection, 1 for segmentation) and run by the runtime chosen when the pipeline was made (`runtime=`:
PyTorch, or the model's exported artefact in ONNX Runtime or OpenVINO, `mobilevit.runtimes`). Memory does not
grow with the number of images a generator yields. Images are local files, PIL images or arrays; a URL is
refused (nothing here downloads).

Object detection works the same way: the detector's graph ends at scores and corner boxes, which the processor's
`post_process_decoded_detections` turns into detections by its family's rule (with the pipeline's `threshold`,
0.5 unless given, and each image's size), the detections `transformers.pipeline("object-detection",
model=detector, image_processor=processor)` gives from the raw outputs; transformers only logs that it does not
know the model class, which `mobilevit.pipeline` keeps quiet.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os

from . import auto
from .tasks import CLASSIFICATION, OBJECT_DETECTION, PIPELINE_TASKS, SEGMENTATION, canonical_task

PIPELINE_TASK_NAMES = (CLASSIFICATION, SEGMENTATION, OBJECT_DETECTION)


def pipeline(task: str | None = None, model=None, image_processor=None, *, runtime: str = "pytorch",
             runtime_cache=None, **kwargs):
    """A `transformers.pipeline` running this package's classes, batched and streaming.

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
        runtime: "pytorch" (the model itself), "onnxruntime" or "openvino" (its exported artefact, exported once
            into the cache `runtime_cache` (default `mobilevit.runtimes.cache_root()`) and checked against
            PyTorch on the first batch).
        **kwargs: passed on to `transformers.pipeline` (`device`, `dtype`, `batch_size`, `num_workers`, ...).

    Examples:
        >>> classify = mobilevit.pipeline(model="demo-output/classification")        # task read from the folder
        >>> classify("photo.jpg", top_k=3)
        [{'label': 'seven', 'score': 0.91}, ...]
        >>> for result in classify(path for path in Path("photos").rglob("*.jpg")):   # streams
        ...     print(result[0]["label"])
        >>> detect = mobilevit.pipeline("object-detection", model="ssdlite-mobilevit-xx-small")
        >>> detect("photo.jpg", threshold=0.5)
        [{'score': 0.93, 'label': 'cat', 'box': {'xmin': 12, 'ymin': 40, 'xmax': 210, 'ymax': 300}}, ...]
    """
    import transformers

    from .runtimes import load_runtime

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
        # non-square photo would misplace everything outside it (as `mobilevit predict` does)
        image_processor = copy.deepcopy(image_processor)
        image_processor.do_center_crop = False
    with _quiet_model_type_check():
        made = transformers.pipeline(PIPELINE_TASKS[task], model=model, image_processor=image_processor,
                                     pipeline_class=_pipeline_classes()[task], **kwargs)
    made.task_name = task
    made.runtime = load_runtime(runtime, made.model, image_processor, whole_image=task != CLASSIFICATION,
                                device=made.device, cache=runtime_cache)
    return made


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


def _is_one_image(inputs) -> bool:
    import numpy as np
    import PIL.Image
    import torch

    return isinstance(inputs, (str, os.PathLike, PIL.Image.Image, np.ndarray, torch.Tensor, bytes))


class StreamingImagePipeline:
    """What the two pipeline classes below add to transformers' own: `__call__` through `mobilevit.inference`.
    `runtime` (set by `pipeline`) runs the batches; `model_outputs(outputs, item)` turns one image's outputs into
    what the stock class's `postprocess` reads."""

    runtime = None
    task_name: str

    def __call__(self, inputs=None, *, batch_size: int | None = None, num_workers: int | None = None, **kwargs):
        from .inference import DEFAULT_BATCH_SIZE, check_batch_size, check_workers, default_workers

        if "images" in kwargs:
            inputs = kwargs.pop("images")
        if inputs is None:
            raise ValueError("inputs: expected an image, a list of images or an iterable of them, got None")
        _, _, postprocess_params = self._sanitize_parameters(**kwargs)  # unknown keywords fail here, as in stock
        postprocess_params = {**self._postprocess_params, **postprocess_params}
        postprocess_params.pop("timeout", None)
        batch_size = check_batch_size(batch_size or self._batch_size or DEFAULT_BATCH_SIZE[self.task_name],
                                      ValueError, "batch_size")
        workers = num_workers if num_workers is not None else self._num_workers
        if _is_one_image(inputs):
            return next(self._stream([inputs], 1, 0, postprocess_params))
        workers = check_workers(workers if workers is not None else default_workers(), ValueError, "num_workers")
        results = self._stream(inputs, batch_size, workers, postprocess_params)
        return list(results) if isinstance(inputs, (list, tuple)) else results

    def _stream(self, images, batch_size: int, workers: int, postprocess_params: dict):
        from .image_reading import ImageError
        from .inference import ImageInput, WorkerPool, prepare_image, stream

        whole_image = self.task_name != CLASSIFICATION  # no centre crop: outputs map back onto the whole image

        def sources():
            for i, image in enumerate(images):
                if isinstance(image, str) and image.startswith(("http://", "https://")):
                    raise ImageError(f"inputs[{i}]: expected a local file, a PIL image or an array, got the URL "
                                     f"{image!r} (mobilevit.pipeline does not download: fetch the file first)")
                name = str(image) if isinstance(image, (str, os.PathLike)) else f"inputs[{i}]"
                yield ImageInput(name, image)

        def prepare(source, position):
            return prepare_image(source, self.image_processor, whole_image=whole_image, position=position)

        with WorkerPool(workers, model_threads=self.runtime.threads) as pool:
            for item, outputs in stream(sources(), prepare, self.runtime, batch_size=batch_size, pool=pool):
                if item.error is not None:
                    raise ImageError(item.error)
                yield self.postprocess(self.model_outputs(outputs, item), **postprocess_params)


def _pipeline_classes() -> dict:
    """task -> transformers' pipeline class with streaming calls (made when first needed: transformers loads then)."""
    global _PIPELINE_CLASSES
    if _PIPELINE_CLASSES is None:
        from transformers import ImageClassificationPipeline, ImageSegmentationPipeline, ObjectDetectionPipeline
        from transformers.modeling_outputs import SemanticSegmenterOutput

        class MobileViTImageClassificationPipeline(StreamingImagePipeline, ImageClassificationPipeline):
            def model_outputs(self, outputs, item):
                return {"logits": outputs["logits"][None]}

        class MobileViTImageSegmentationPipeline(StreamingImagePipeline, ImageSegmentationPipeline):
            def model_outputs(self, outputs, item):
                model_outputs = SemanticSegmenterOutput(logits=outputs["logits"][None])
                model_outputs["target_size"] = [item.size]
                return model_outputs

        class MobileViTObjectDetectionPipeline(StreamingImagePipeline, ObjectDetectionPipeline):
            """Stock's output format from the graph's scores and corner boxes (`post_process_decoded_detections`,
            the rule stock's `postprocess` reaches through `post_process_object_detection`)."""

            def model_outputs(self, outputs, item):
                return {"scores": outputs["scores"][None], "boxes": outputs["boxes"][None], "target_size": [item.size]}

            def postprocess(self, model_outputs, threshold=0.5):
                found = self.image_processor.post_process_decoded_detections(
                    model_outputs["scores"].float(), model_outputs["boxes"].float(), threshold,
                    target_sizes=model_outputs["target_size"])[0]
                labels = [self.model.config.id2label[int(label)] for label in found["labels"]]
                return [{"score": float(score), "label": label, "box": self._get_bounding_box(box)}
                        for score, label, box in zip(found["scores"], labels, found["boxes"])]

        _PIPELINE_CLASSES = {CLASSIFICATION: MobileViTImageClassificationPipeline,
                             SEGMENTATION: MobileViTImageSegmentationPipeline,
                             OBJECT_DETECTION: MobileViTObjectDetectionPipeline}
    return _PIPELINE_CLASSES


_PIPELINE_CLASSES = None

__all__ = ["pipeline", "StreamingImagePipeline"]
