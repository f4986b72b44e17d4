"""What a model family registers: its config and model classes per task, its released sizes, how its
original checkpoints convert, how its inputs are prepared and how it is described.

Each family's folder (`models/<family>/__init__.py`) builds one `ModelFamily`; `mobilevit/auto.py` collects
them, and every tool asks `auto` instead of naming a family's classes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .image_processing_mobilevit import MobileViTImageProcessor, evaluation_image_processor
from .tasks import SEGMENTATION, canonical_task


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

    def task_of_class(self, cls: type) -> str | None:
        """The task a model class of this family serves (None for another class)."""
        return next((task for task, known in self.model_classes.items() if known is cls), None)

    def new_config(self, variant: str, task: str, **overrides):
        """The config of a released size for a task; `overrides` change any field."""
        return self.config_class.from_variant(self.canonical_variant(variant), task, **overrides)

    def image_processor(self, config) -> MobileViTImageProcessor:
        """The preprocessing the family's checkpoints were evaluated with, for a model at `config.image_size`
        (folders saved without a `preprocessor_config.json` get this), and its segmentation post-processing."""
        image_size = config.image_size
        return evaluation_image_processor(image_size[0] if isinstance(image_size, (list, tuple)) else image_size,
                                          logits_align_corners=self.segmentation_align_corners)


__all__ = ["ModelFamily"]
