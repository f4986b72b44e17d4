"""Apple's MobileViT family (ml-cvnets) for the Hugging Face ecosystem.

The families live in `mobilevit/models/<family>/` and are reached by tools through the registry,
`mobilevit.auto`; their classes are also importable from here.

Names are imported when first used (PEP 562), so `import mobilevit` and the command line's argument parsing
do not load torch and transformers (seconds); `from mobilevit import MobileViTConfig` works as always.
"""

import importlib
import logging

# torchao (installed with the [executorch] extra, imported by transformers when present) warns on import that
# its CUDA kernels do not load on a CPU machine, and its enum registration triggers torch's pytree deprecation
# notice; both are expected and would clutter every command
logging.getLogger("torchao").setLevel(logging.ERROR)
logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)

__version__ = "0.1.0"

# public name -> the module that defines it
_LAZY = {
    "auto": "mobilevit.auto",
    "MobileViTImageProcessor": "mobilevit.image_processing_mobilevit",
    "pipeline": "mobilevit.pipelines",
    **{name: "mobilevit.models.mobilevit" for name in (
        "VARIANTS", "MobileViTConfig", "MobileViTForImageClassification", "MobileViTForSemanticSegmentation",
        "MobileViTForObjectDetection", "MobileViTBackbone", "MobileViTModel", "MobileViTPreTrainedModel")},
    **{name: "mobilevit.models.mobilevitv2" for name in (
        "MobileViTV2Config", "MobileViTV2ForImageClassification", "MobileViTV2ForSemanticSegmentation",
        "MobileViTV2ForObjectDetection", "MobileViTV2Backbone", "MobileViTV2Model", "MobileViTV2PreTrainedModel")},
}


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'mobilevit' has no attribute {name!r}")
    module = importlib.import_module(_LAZY[name])
    value = module if module.__name__ == f"mobilevit.{name}" else getattr(module, name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + list(_LAZY))


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
