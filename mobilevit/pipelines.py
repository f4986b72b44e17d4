"""transformers pipelines with this package's classes: `mobilevit.pipeline(task, model_dir_or_model)`.

`transformers.pipeline("image-classification", model="folder")` works on a folder saved here, but it builds
*stock* transformers' classes: `model_type` "mobilevit" is registered there, and the folder is
interchangeable. `mobilevit.pipeline` builds this package's model and image processor from the same folder
(or takes model / processor objects) and hands them to `transformers.pipeline`, so outputs come from the
code in this package. The task is read from the config's `architectures` when it is not given.
"""

from __future__ import annotations

import os
from pathlib import Path

from .configuration_mobilevit import MobileViTConfig
from .image_processing_mobilevit import MobileViTImageProcessor
from .modeling_mobilevit import (
    MobileViTForImageClassification,
    MobileViTForSemanticSegmentation,
    MobileViTPreTrainedModel,
)

# pipeline task -> the head class that serves it
TASK_MODEL_CLASSES = {
    "image-classification": MobileViTForImageClassification,
    "image-segmentation": MobileViTForSemanticSegmentation,
}
# other names people use for the same tasks (the config's and the model card's)
TASK_ALIASES = {
    "classification": "image-classification",
    "segmentation": "image-segmentation",
    "semantic-segmentation": "image-segmentation",
}
PREPROCESSOR_FILE = "preprocessor_config.json"


class NotAModelError(ValueError):
    """The path given as a model is not a folder saved by this package (or a Hub repository of one)."""


def canonical_pipeline_task(task: str) -> str:
    key = str(task).strip().lower()
    key = TASK_ALIASES.get(key, key)
    if key not in TASK_MODEL_CLASSES:
        raise ValueError(f"task: expected one of {sorted(TASK_MODEL_CLASSES) + sorted(TASK_ALIASES)}, got {task!r}")
    return key


def task_of(config: MobileViTConfig) -> str:
    """The pipeline task of a saved model, from the head class named in `config.architectures`."""
    for architecture in config.architectures or []:
        for task, cls in TASK_MODEL_CLASSES.items():
            if architecture == cls.__name__:
                return task
    raise ValueError(
        f"config.architectures: expected one of {[c.__name__ for c in TASK_MODEL_CLASSES.values()]} to infer the "
        f"task, got {config.architectures!r}; pass task='image-classification' or 'image-segmentation'"
    )


def load_config(model_dir: str | os.PathLike) -> MobileViTConfig:
    """The `MobileViTConfig` of a saved folder (or Hub repository), with a one-line error for anything else."""
    path = Path(model_dir)
    if path.exists():
        if not path.is_dir():
            raise NotAModelError(f"model: expected a model folder, got the file {str(path)!r}")
        if not (path / "config.json").is_file():
            raise NotAModelError(f"model: {str(path)!r} is not a saved model folder (it has no config.json)")
    try:
        config = MobileViTConfig.from_pretrained(str(model_dir))
    except OSError as err:  # transformers' "not a local folder nor a reachable Hub repository"
        raise NotAModelError(f"model: cannot load a model from {str(model_dir)!r} ({str(err).splitlines()[0]})") from None
    except ValueError as err:  # unreadable JSON, or a config of another model type
        raise NotAModelError(f"model: {str(model_dir)!r} does not hold a MobileViT config ({err})") from None
    if getattr(config, "model_type", None) != MobileViTConfig.model_type:
        raise NotAModelError(f"model: {str(model_dir)!r} is a {config.model_type!r} model, expected 'mobilevit'")
    return config


def default_image_processor(config: MobileViTConfig):
    """The evaluation preprocessing of the released checkpoints for a model at `config.image_size`
    (shortest edge resized to image_size + 32, centre crop image_size), for folders saved without one."""
    from .conversion import image_processor_for

    return image_processor_for(int(config.image_size))


def load_model_and_processor(model_dir: str | os.PathLike, task: str | None = None, **from_pretrained_kwargs):
    """This package's model (eval mode) and image processor from a saved folder or Hub repository.

    Returns `(model, processor, task)`. The processor is the folder's `preprocessor_config.json`, or the
    checkpoints' default preprocessing when the folder has none.
    """
    config = load_config(model_dir)
    task = canonical_pipeline_task(task) if task is not None else task_of(config)
    model = TASK_MODEL_CLASSES[task].from_pretrained(str(model_dir), config=config, **from_pretrained_kwargs).eval()
    try:
        processor = MobileViTImageProcessor.from_pretrained(str(model_dir), **from_pretrained_kwargs)
    except OSError:
        processor = default_image_processor(config)
    return model, processor, task


def pipeline(task: str | None = None, model=None, image_processor=None, **kwargs):
    """A `transformers.pipeline` running this package's MobileViT classes.

    Args:
        task: "image-classification" or "image-segmentation" ("semantic-segmentation" is accepted too);
            inferred from the model (its config's `architectures`) when None.
        model: a folder saved by this package (`save_pretrained`, `mobilevit train`, `mobilevit convert`),
            a Hub repository id of one, or a `MobileViTForImageClassification` /
            `MobileViTForSemanticSegmentation` instance.
        image_processor: a `MobileViTImageProcessor`; by default the folder's, or the checkpoints' default
            preprocessing for the model's `image_size`.
        **kwargs: passed on to `transformers.pipeline` (`device`, `dtype`, ...).

    Example:
        >>> classify = mobilevit.pipeline(model="runs/digits")        # task read from the folder
        >>> classify("photo.jpg", top_k=3)
        [{'label': 'seven', 'score': 0.91}, ...]
    """
    import transformers

    if model is None:
        raise ValueError("model: expected a model folder, a Hub repository id or a MobileViT model, got None")
    if isinstance(model, (str, os.PathLike)):
        model, folder_processor, task = load_model_and_processor(model, task)
        image_processor = image_processor if image_processor is not None else folder_processor
    elif isinstance(model, MobileViTPreTrainedModel):
        task = canonical_pipeline_task(task) if task is not None else task_of_model(model)
        if not isinstance(model, TASK_MODEL_CLASSES[task]):
            raise TypeError(f"model: expected a {TASK_MODEL_CLASSES[task].__name__} for task {task!r}, "
                            f"got {type(model).__name__}")
        if image_processor is None:
            image_processor = default_image_processor(model.config)
    else:
        raise TypeError(f"model: expected a folder path, a Hub repository id or a MobileViT model, "
                        f"got {type(model).__name__}")
    return transformers.pipeline(task, model=model, image_processor=image_processor, **kwargs)


def task_of_model(model: MobileViTPreTrainedModel) -> str:
    for task, cls in TASK_MODEL_CLASSES.items():
        if isinstance(model, cls):
            return task
    raise TypeError(f"model: expected a model with a classification or segmentation head, got {type(model).__name__}")


__all__ = ["pipeline", "load_model_and_processor", "load_config", "task_of", "default_image_processor",
           "NotAModelError", "TASK_MODEL_CLASSES"]
