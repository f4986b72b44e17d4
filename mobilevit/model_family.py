"""What a model family registers: its config and model classes per task, its released sizes, how its
original checkpoints convert, how its inputs are prepared and how it is described.

Each family's folder (`models/<family>/__init__.py`) builds one `ModelFamily`; `mobilevit/auto.py` collects
them, and every tool asks `auto` instead of naming a family's classes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from .image_processing_mobilevit import MobileViTImageProcessor
from .tasks import CLASSIFICATION, OBJECT_DETECTION, SEGMENTATION, canonical_task

# How an evaluation transform brings an image to a model's input size s (`Preprocessing.resize`)
SHORTEST_EDGE_THEN_CROP = "shortest edge, then centre crop s x s"  # keeps the aspect ratio
STRETCH = "stretch to s x s"  # no crop, the aspect ratio is not kept


@dataclass(frozen=True)
class Preprocessing:
    """How the ml-cvnets release that trained a family's checkpoints read and resized images in its evaluation
    transforms (docs/image-processor.md gives the evidence for every field)."""

    release: str  # e.g. "ml-cvnets v0.1"
    channel_order: str  # "BGR" (OpenCV's cv2.imread) or "RGB" (Pillow's Image.open(...).convert("RGB"))
    resample: int  # PILImageResampling: 2 bilinear, 3 bicubic
    antialias: bool  # Pillow's filters (antialiased when shrinking), not OpenCV's plain INTER_LINEAR
    resize: Mapping[str, str]  # task -> SHORTEST_EDGE_THEN_CROP or STRETCH
    # input size -> the shortest edge before the crop, where a release recipe is not "input size + 32"
    shortest_edge: Mapping[int, int] = field(default_factory=dict)

    @property
    def pixel_settings(self) -> dict:
        """The processor settings that say how pixels are read and resampled (not the sizes)."""
        return {"do_flip_channel_order": self.channel_order == "BGR", "resample": int(self.resample),
                "resize_antialias": self.antialias}

    def describe(self) -> str:
        resample = {2: "bilinear", 3: "bicubic"}[self.resample]
        library = "Pillow" if self.antialias else "OpenCV"
        return f"{self.release}: {self.channel_order}, {library} {resample}"

    def image_processor(self, task: str, image_size: int, **overrides) -> MobileViTImageProcessor:
        """The evaluation preprocessing of a `task` model with input size `image_size`."""
        task = canonical_task(task, allowed=tuple(self.resize))
        size = int(image_size)
        crop = {"height": size, "width": size}
        if self.resize[task] == STRETCH:
            geometry = {"size": crop, "do_center_crop": False, "crop_size": crop}
        else:
            geometry = {"size": {"shortest_edge": self.shortest_edge.get(size, size + 32)}, "crop_size": crop}
        return MobileViTImageProcessor(**geometry, **self.pixel_settings, **overrides)


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
    preprocessing: Preprocessing  # how the checkpoints' release prepared images
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

    def task_named_by(self, config) -> str | None:
        """The task of the first head class of this family that `config.architectures` names (None if none)."""
        names = {cls.__name__: task for task, cls in self.model_classes.items()}
        return next((names[name] for name in config.architectures or [] if name in names), None)

    def new_config(self, variant: str, task: str, **overrides):
        """The config of a released size for a task; `overrides` change any field."""
        return self.config_class.from_variant(self.canonical_variant(variant), task, **overrides)

    def image_processor(self, config, task: str | None = None) -> MobileViTImageProcessor:
        """The preprocessing the family's checkpoints were evaluated with, for a `task` model at
        `config.image_size` (default task: the head `config.architectures` names, else classification), with
        the family's post-processing: segmentation's upsampling, detection's thresholds and NMS. Folders saved
        without a `preprocessor_config.json` get this."""
        task = canonical_task(task) if task is not None else (self.task_named_by(config) or CLASSIFICATION)
        image_size = config.image_size
        post_processing = {"logits_align_corners": self.segmentation_align_corners}
        if task == OBJECT_DETECTION:
            post_processing["detection_postprocessing"] = self.detection_postprocessing.to_dict()
        return self.preprocessing.image_processor(task, image_size[0] if isinstance(image_size, (list, tuple))
                                                  else image_size, **post_processing)


__all__ = ["ModelFamily", "Preprocessing", "SHORTEST_EDGE_THEN_CROP", "STRETCH"]
