"""Apple's MobileViT family (ml-cvnets) for the Hugging Face ecosystem.

The families live in `mobilevit/models/<family>/` and are reached by tools through the registry,
`mobilevit.auto`; their classes are also importable from here.
"""

import logging

# torchao (installed with the [executorch] extra, imported by transformers when present) warns on import that
# its CUDA kernels do not load on a CPU machine, and its enum registration triggers torch's pytree deprecation
# notice; both are expected and would clutter every command
logging.getLogger("torchao").setLevel(logging.ERROR)
logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)

from . import auto  # noqa: E402
from .image_processing_mobilevit import MobileViTImageProcessor  # noqa: E402
from .models.mobilevit import (
    VARIANTS,
    MobileViTBackbone,
    MobileViTConfig,
    MobileViTForImageClassification,
    MobileViTForObjectDetection,
    MobileViTForSemanticSegmentation,
    MobileViTModel,
    MobileViTPreTrainedModel,
)  # noqa: E402
from .models.mobilevitv2 import (  # noqa: E402
    MobileViTV2Backbone,
    MobileViTV2Config,
    MobileViTV2ForImageClassification,
    MobileViTV2ForObjectDetection,
    MobileViTV2ForSemanticSegmentation,
    MobileViTV2Model,
    MobileViTV2PreTrainedModel,
)
from .pipelines import pipeline  # noqa: E402

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
    "MobileViTForObjectDetection",
    "MobileViTBackbone",
    "MobileViTV2Config",
    "MobileViTV2PreTrainedModel",
    "MobileViTV2Model",
    "MobileViTV2ForImageClassification",
    "MobileViTV2ForSemanticSegmentation",
    "MobileViTV2ForObjectDetection",
    "MobileViTV2Backbone",
    "pipeline",
    "__version__",
]
