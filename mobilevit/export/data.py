"""The user's images for int8: calibration (any images) and a held-out labelled split whose accuracy is
measured before and after quantization (top-1 for classification, mean IoU for segmentation).

A source is a folder of images (class sub-folders give classification labels) or a `datasets.save_to_disk`
folder, read offline with the training code's reader, so the same folders serve training and export.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..labels import map_labels
from ..tasks import CLASSIFICATION, SEGMENTATION
from ..training.data import (
    CLASS_COLUMNS,
    IMAGE_COLUMNS,
    LABEL_FILE,
    MASK_COLUMNS,
    DataError,
    load_local_dataset,
    read_label_file,
)
from ..training.metrics import ClassificationMetrics, SegmentationMetrics
from .common import ExportError, preprocess

DEFAULT_CALIBRATION_SIZE = 128
DEFAULT_CALIBRATION_SPLIT = "train"
DEFAULT_EVALUATION_SPLIT = "test"


@dataclass
class ImageSet:
    """Images of one split, with their class ids (of the model's label set) or masks when the split has them.
    Images are decoded a batch at a time (`batches`): a large held-out set never sits in memory whole."""

    dataset: object  # a datasets.Dataset
    image_column: str
    label_column: str | None
    mapping: list[int] | None  # the data's class ids -> the model's (None: the same)
    task: str | None
    description: str  # e.g. "'data/'[test], 360 images"

    def __len__(self) -> int:
        return len(self.dataset)

    def batches(self, batch_size: int):
        """(RGB PIL images, their labels or None) per `batch_size` examples, in order."""
        for start in range(0, len(self.dataset), batch_size):
            chunk = self.dataset[start:start + batch_size]
            images = [image.convert("RGB") for image in chunk[self.image_column]]
            labels = None
            if self.label_column is not None:
                labels = chunk[self.label_column]
                if self.mapping is not None:
                    labels = _relabel(labels, self.mapping, self.task)
            yield images, labels


def read_split(source: str | Path, split: str, argument: str, labelled: bool, task: str | None = None,
               limit: int | None = None, seed: int = 0, id2label: dict | None = None, model: str = "the model"
               ) -> ImageSet:
    """`split` of `source` (`limit` images drawn with `seed`, all by default); `labelled`: also the labels of
    `task` (class ids or masks), which must then be there, as ids of the model's label set `id2label`: class
    names are matched by name (`mobilevit.labels.map_labels`), never by the data's own order, so a folder
    holding some of the model's classes is measured right; a class the model lacks is an error."""
    try:
        splits = load_local_dataset(source)
    except DataError as err:
        raise ExportError(f"{argument}: {str(err).removeprefix('data: ')}") from None
    if split not in splits:
        if len(splits) == 1 and split == DEFAULT_CALIBRATION_SPLIT:
            split = next(iter(splits))  # a plain folder of images: its one split
        else:
            raise ExportError(f"{argument}: expected a split named {split!r} in {str(source)!r}, got {list(splits)}")
    dataset = splits[split]
    if len(dataset) == 0:
        raise ExportError(f"{argument}: the split {split!r} of {str(source)!r} holds no images")
    image_columns = [name for name, feature in dataset.features.items() if type(feature).__name__ == "Image"]
    image_column = next((c for c in IMAGE_COLUMNS if c in image_columns), None)
    if image_column is None:
        raise ExportError(f"{argument}: expected an image column (one of {list(IMAGE_COLUMNS)}) in "
                          f"{str(source)!r}[{split}], got columns {dataset.column_names}")
    label_column = None
    if labelled:
        candidates = [c for c in image_columns if c != image_column] if task == SEGMENTATION else dataset.column_names
        names = MASK_COLUMNS if task == SEGMENTATION else CLASS_COLUMNS
        label_column = next((c for c in names if c in candidates), None)
        if label_column is None:
            what = "a mask column" if task == SEGMENTATION else "a class label column (or class sub-folders)"
            raise ExportError(f"{argument}: expected {what} in {str(source)!r}[{split}] to measure accuracy, "
                              f"got columns {dataset.column_names}")
    if limit is not None and limit < len(dataset):  # in memory: nothing is written beside a saved data set
        order = np.random.default_rng(seed).permutation(len(dataset))[:limit]
        dataset = dataset.select(sorted(int(i) for i in order), keep_in_memory=True)
    mapping = None
    if label_column is not None and id2label is not None:
        names = _class_names(dataset, label_column, source, task)
        if names is not None:
            label2id = {name: index for index, name in sorted(id2label.items())}
            mapping = map_labels(names, label2id, f"{argument} {str(source)!r}[{split}]", f"the model {model}",
                                 error=ExportError)
    return ImageSet(dataset, image_column, label_column, mapping, task,
                    f"{str(source)!r}[{split}], {len(dataset)} images")


def _class_names(dataset, label_column: str, source, task: str) -> list[str] | None:
    """The data's class names in its id order: its ClassLabel's (class folders), or for segmentation masks the
    data folder's id2label.json; None where the data carries no names (ids are then the model's)."""
    import datasets

    if task == SEGMENTATION:
        label_file = Path(source) / LABEL_FILE
        return read_label_file(label_file) if label_file.is_file() else None
    feature = dataset.features.get(label_column)
    return list(feature.names) if isinstance(feature, datasets.ClassLabel) else None


def _relabel(labels: list, mapping: list[int], task: str) -> list:
    """Class ids (or masks of class ids; 255 stays ignored) in the data's order -> the model's."""
    if task != SEGMENTATION:
        return [mapping[int(label)] for label in labels]
    table = np.full(65536, 255, dtype=np.int64)
    table[: len(mapping)] = mapping
    return [table[np.asarray(mask, dtype=np.int64).clip(0, 65535)] for mask in labels]


def calibration_batches(images: ImageSet, processor, size: tuple[int, int], batch_size: int = 8):
    """The calibration images as the model's processor prepares them, in batches of `batch_size` (decoded a
    batch at a time; the prepared batches are what calibration keeps, bounded by --calibration-size)."""
    return [preprocess(processor, chunk, size) for chunk, _ in images.batches(batch_size)]


def evaluate(run, images: ImageSet, processor, size: tuple[int, int], task: str, config,
             align_corners: bool, batch_size: int = 64) -> dict:
    """Top-1 (classification) or mean IoU (segmentation) of `run` (NCHW float32 array -> outputs) on a
    labelled split, `batch_size` images per call (runners of fixed-batch artefacts loop over them)."""
    if task == CLASSIFICATION:
        metric = ClassificationMetrics(top_k=(1,))
    else:
        metric = SegmentationMetrics(config.num_labels, id2label=config.id2label, align_corners=align_corners)
    for chunk, labels in images.batches(batch_size):
        if task == CLASSIFICATION:
            pixel_values = preprocess(processor, chunk, size)
            target = torch.as_tensor([int(label) for label in labels])
        else:
            masks = [np.asarray(mask, dtype=np.int64) for mask in labels]
            prepared = processor(chunk, segmentation_maps=masks, return_tensors="pt")
            pixel_values, target = prepared["pixel_values"].float(), prepared["labels"]
            if tuple(pixel_values.shape[-2:]) != tuple(size):
                raise ExportError(f"--eval-data: the processor makes {tuple(pixel_values.shape[-2:])} inputs, the "
                                  f"artefact takes {size}; evaluate at the processor's crop size")
        logits = torch.as_tensor(np.asarray(run(pixel_values.numpy())[0]), dtype=torch.float32)
        metric.update(logits, target)
    result = metric.compute()
    return {"accuracy": result["accuracy"]} if task == CLASSIFICATION else \
        {"mean_iou": result["mean_iou"], "pixel_accuracy": result["pixel_accuracy"]}


__all__ = ["ImageSet", "read_split", "calibration_batches", "evaluate", "DEFAULT_CALIBRATION_SIZE",
           "DEFAULT_CALIBRATION_SPLIT", "DEFAULT_EVALUATION_SPLIT"]
