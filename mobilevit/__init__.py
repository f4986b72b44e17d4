"""Apple's MobileViT family (ml-cvnets) for the Hugging Face ecosystem.

The families live in `mobilevit/models/<family>/` and are reached by tools through the registry,
`mobilevit.auto`; their classes are also importable from here.
"""

from . import auto
from .image_processing_mobilevit import MobileViTImageProcessor
from .models.mobilevit import (
    VARIANTS,
    MobileViTConfig,
    MobileViTForImageClassification,
    MobileViTForSemanticSegmentation,
    MobileViTModel,
    MobileViTPreTrainedModel,
)
from .models.mobilevitv2 import (
    MobileViTV2Config,
    MobileViTV2ForImageClassification,
    MobileViTV2ForSemanticSegmentation,
    MobileViTV2Model,
    MobileViTV2PreTrainedModel,
)
from .pipelines import pipeline

__version__ = "0.1.0"

__all__ = [
    "auto",
    "MobileViTConfig",
    "VARIANTS",
    "MobileViTImageProcessor",
    "MobileViTPreTrainedModel",
    "MobileViTModel",
    "MobileViTForImageClassification",
    "MobileViTForSemanticSegmentation",
    "MobileViTV2Config",
    "MobileViTV2PreTrainedModel",
    "MobileViTV2Model",
    "MobileViTV2ForImageClassification",
    "MobileViTV2ForSemanticSegmentation",
    "pipeline",
    "__version__",
]
