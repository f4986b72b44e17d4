"""What a model family registers: its config and model classes per task, its released sizes, how its
original checkpoints convert, how its inputs are prepared and how it is described.

Each family's folder (`models/<family>/__init__.py`) builds one `ModelFamily`; `mobilevit/auto.py` collects
them, and every tool asks `auto` instead of naming a family's classes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .image_processing_mobilevit import (
    MobileViTImageProcessor,
    detection_image_processor,
    evaluation_image_processor,
)
from .tasks import OBJECT_DETECTION, SEGMENTATION, canonical_task


@dataclass(frozen=True)
class ModelFamily:
    model_type: str  # the config's `model_type`, the key of the registry
    title: str  # how cards and messages name the family, e.g. "MobileViT v1"
    config_class: type
    model_classes: Mapping[str, type]  # task (see tasks.py) -> PreTrainedModel subclass
    pretrained_class: type  # the family's PreTrainedModel base, which every model class derives from
    variants: tuple[str, ...]  # the released sizes, as `config_class.from_variant` takes them
    canonical_variant: Callable[[str], str]  # any accepted spelling -> an entry of `variants` (ValueError if none)
    converter: object | None  # a `conversion_utils.CheckpointConverter` for the original checkpoints
    description: str  # a paragraph for model cards
    citation: str  # BibTeX of the paper
    backbone_class: type | None = None  # transformers' Backbone API over the same stages (`out_features`)

    def __repr__(self) -> str:
        return f"ModelFamily({self.model_type!r}: {self.title}, tasks {list(self.model_classes)})"

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self.model_classes)

    def model_class(self, task: str) -> type:
        task = canonical_task(task)
        if task not in self.model_classes:
            raise ValueError(f"task: {self.title} has no {task!r} model; expected one of {list(self.model_classes)}")
        return self.model_classes[task]

    @property
    def segmentation_align_corners(self) -> bool:
        """How the checkpoints' segmentation logits were upsampled to the label size (loss and evaluation);
        the segmentation class holds the fact (`logits_align_corners`), beside the loss that uses it."""
        return bool(getattr(self.model_classes.get(SEGMENTATION), "logits_align_corners", False))

    @property
    def detection_postprocessing(self):
        """The rule this family's detectors were evaluated with (`mobilevit.ssd.PostProcessing`); the detection
        class holds the fact (`postprocessing`)."""
        return self.model_classes[OBJECT_DETECTION].postprocessing

    def task_of_class(self, cls: type) -> str | None:
        """The task a model class of this family serves (None for another class)."""
        return next((task for task, known in self.model_classes.items() if known is cls), None)

    def new_config(self, variant: str, task: str, **overrides):
        """The config of a released size for a task; `overrides` change any field."""
        return self.config_class.from_variant(self.canonical_variant(variant), task, **overrides)

    def image_processor(self, config, task: str | None = None) -> MobileViTImageProcessor:
        """The preprocessing the family's checkpoints of `task` (default: the one `config.architectures` names)
        were evaluated with, for a model at `config.image_size` (folders saved without a
        `preprocessor_config.json` get this), and its post-processing: segmentation's upsampling, detection's
        thresholds and NMS."""
        image_size = config.image_size
        size = image_size[0] if isinstance(image_size, (list, tuple)) else image_size
        task = canonical_task(task) if task is not None else self.task_of_architectures(config)
        if task == OBJECT_DETECTION:
            return detection_image_processor(size, self.detection_postprocessing)
        return evaluation_image_processor(size, logits_align_corners=self.segmentation_align_corners)

    def task_of_architectures(self, config) -> str | None:
        """The task of the first class of this family named in `config.architectures` (None if none is)."""
        names = {cls.__name__: task for task, cls in self.model_classes.items()}
        return next((names[name] for name in config.architectures or [] if name in names), None)


__all__ = ["ModelFamily"]
