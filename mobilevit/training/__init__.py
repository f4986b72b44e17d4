"""Training MobileViT with transformers' Trainer: data loading and augmentation, the multi-scale sampler,
streaming metrics, the Trainer plug-in, the embedded demo data sets and the `train` / `demo` commands."""

from .data import DataError, MobileViTDataset, collate, prepare_task_data
from .job import TrainJob, TrainResult, train_and_save
from .metrics import ClassificationMetrics, SegmentationMetrics
from .sampler import MultiScaleBatchSampler, SampleKey, multiscale_batch_table
from .trainer import MobileViTTrainer, MultiScaleOptions
from .transforms import EvalTransform, TrainAugmentation

__all__ = [
    "ClassificationMetrics", "DataError", "EvalTransform", "MobileViTDataset", "MobileViTTrainer",
    "MultiScaleBatchSampler", "MultiScaleOptions", "SampleKey", "SegmentationMetrics", "TrainAugmentation",
    "TrainJob", "TrainResult", "collate", "multiscale_batch_table", "prepare_task_data", "train_and_save",
]
