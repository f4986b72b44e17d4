"""Training MobileViT with transformers' Trainer: data loading and augmentation, the multi-scale sampler,
streaming metrics, the Trainer plug-in, the embedded demo data sets and the `train` / `demo` commands.

Names are imported when first used (PEP 562), so the `train` and `demo` command lines parse their arguments
without loading torch and transformers.
"""

import importlib

# public name -> the module of this package that defines it
_LAZY = {
    **dict.fromkeys(("DataError", "MobileViTDataset", "collate", "prepare_task_data"), "data"),
    **dict.fromkeys(("TrainJob", "TrainResult", "train_and_save"), "job"),
    **dict.fromkeys(("ClassificationMetrics", "SegmentationMetrics"), "metrics"),
    **dict.fromkeys(("MultiScaleBatchSampler", "SampleKey", "multiscale_batch_table"), "sampler"),
    **dict.fromkeys(("MobileViTTrainer", "MultiScaleOptions"), "trainer"),
    **dict.fromkeys(("EvalTransform", "TrainAugmentation"), "transforms"),
}


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'mobilevit.training' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + list(_LAZY))


__all__ = [
    "ClassificationMetrics", "DataError", "EvalTransform", "MobileViTDataset", "MobileViTTrainer",
    "MultiScaleBatchSampler", "MultiScaleOptions", "SampleKey", "SegmentationMetrics", "TrainAugmentation",
    "TrainJob", "TrainResult", "collate", "multiscale_batch_table", "prepare_task_data", "train_and_save",
]
