"""MobileViT (Mehta & Rastegari, ICLR 2022) for the Hugging Face ecosystem."""

from .configuration_mobilevit import VARIANTS, MobileViTConfig
from .image_processing_mobilevit import MobileViTImageProcessor
from .modeling_mobilevit import (
    MobileViTForImageClassification,
    MobileViTForSemanticSegmentation,
    MobileViTModel,
    MobileViTPreTrainedModel,
)
from .pipelines import pipeline

__version__ = "0.1.0"

__all__ = [
    "MobileViTConfig",
    "VARIANTS",
    "MobileViTImageProcessor",
    "MobileViTPreTrainedModel",
    "MobileViTModel",
    "MobileViTForImageClassification",
    "MobileViTForSemanticSegmentation",
    "pipeline",
    "__version__",
]
