"""Training data: loading local data sets offline, checking them before any training starts, and the torch
`Dataset` that turns examples into `pixel_values` / `labels` for `Trainer`.

Accepted sources (all read with the `datasets` library, nothing downloaded):
* an image folder tree (`root/<class name>/<image>`, optionally with `train/`, `validation/`, `test/` level
  above the class folders): `datasets`' `imagefolder` builder; classification only;
* a folder written by `datasets.Dataset.save_to_disk` or `DatasetDict.save_to_disk`: an image column plus a
  `ClassLabel`/integer column (classification) or a second image column holding label maps (segmentation);
* a `datasets.Dataset` / `DatasetDict` object (the demo's embedded data come this way).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from .sampler import SampleKey
from .transforms import IGNORE_INDEX, image_to_tensor, mask_to_tensor

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
IMAGE_COLUMNS = ("image", "img", "pixel_values", "images")
CLASS_COLUMNS = ("label", "labels", "class", "target")
MASK_COLUMNS = ("annotation", "label", "mask", "segmentation", "semantic_map", "labels", "gt")
LABEL_FILE = "id2label.json"  # optional, next to a saved data set: the class names of segmentation masks
SPLIT_ALIASES = {"train": ("train", "training"), "validation": ("validation", "valid", "val", "eval", "dev"),
                 "test": ("test", "testing")}


class DataError(ValueError):
    """A data set that cannot be trained on; the message names the source, what was expected and what came."""


@dataclass
class TaskData:
    """Splits and label set of a data set, ready to be wrapped in `MobileViTDataset`."""

    train: object
    validation: object
    test: object | None
    image_column: str
    label_column: str
    id2label: dict[int, str]
    task: str  # "image-classification" or "semantic-segmentation"


def _is_segmentation(task: str) -> bool:
    return task == "semantic-segmentation"


def _image_feature_columns(dataset) -> list[str]:
    import datasets

    return [name for name, feature in dataset.features.items() if isinstance(feature, datasets.Image)]


def _pick(candidates, available, what, source):
    for name in candidates:
        if name in available:
            return name
    raise DataError(f"data {source}: expected {what} (one of {list(candidates)}), got columns {list(available)}")


def load_local_dataset(path: str | Path):
    """Load `path` offline as a `DatasetDict`: a `save_to_disk` folder, or an image folder tree."""
    import datasets

    path = Path(path)
    if not path.exists():
        raise DataError(f"data: expected an existing folder, got {str(path)!r} (does not exist)")
    if not path.is_dir():
        raise DataError(f"data: expected a folder (image folder tree or datasets.save_to_disk output), got file "
                        f"{str(path)!r}")
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        loaded = datasets.load_from_disk(str(path))
        return loaded if isinstance(loaded, datasets.DatasetDict) else datasets.DatasetDict({"train": loaded})
    images = [p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()]
    if not images:
        raise DataError(f"data: expected image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) in class sub-folders "
                        f"of {str(path)!r}, or a datasets.save_to_disk folder; found no images")
    return datasets.load_dataset("imagefolder", data_dir=str(path))


def _read_label_file(path: Path) -> list[str]:
    """`id2label.json` next to the data: {"0": "background", "1": "cat", ...} or ["background", "cat", ...]."""
    content = json.loads(path.read_text())
    if isinstance(content, dict):
        ids = sorted(int(k) for k in content)
        if ids != list(range(len(ids))):
            raise DataError(f"{path}: expected ids 0..N-1 as keys, got {sorted(content)}")
        return [str(content[str(i)]) for i in ids]
    if isinstance(content, list):
        return [str(name) for name in content]
    raise DataError(f"{path}: expected a JSON object id -> name or a list of names, got {type(content).__name__}")


def _find_split(dataset_dict, split: str):
    for name in SPLIT_ALIASES[split]:
        if name in dataset_dict:
            return dataset_dict[name]
    return None


def prepare_task_data(source, task: str, *, labels: list[str] | None = None, val_fraction: float = 0.1,
                      seed: int = 0, image_column: str | None = None, label_column: str | None = None) -> TaskData:
    """Load (if a path) and split `source`, find its columns and label set, and check every example.

    A missing validation split is carved out of "train" (`val_fraction`, fixed by `seed`, stratified for
    classification). Raises `DataError` (a `ValueError`) before any training if something is off.
    """
    import datasets

    if isinstance(source, (str, Path)):
        source_name = repr(str(source))
        label_file = Path(source) / LABEL_FILE
        if labels is None and label_file.is_file():
            labels = _read_label_file(label_file)
        source = load_local_dataset(source)
    else:
        source_name = type(source).__name__
        if isinstance(source, datasets.Dataset):
            source = datasets.DatasetDict({"train": source})
        elif not isinstance(source, datasets.DatasetDict):
            raise TypeError(f"data: expected a path, datasets.Dataset or datasets.DatasetDict, got "
                            f"{type(source).__name__}")
    train = _find_split(source, "train")
    if train is None:
        if len(source) != 1:
            raise DataError(f"data {source_name}: expected a 'train' split, got splits {list(source)}")
        train = next(iter(source.values()))
    if len(train) == 0:
        raise DataError(f"data {source_name}: the training split is empty")
    image_columns = _image_feature_columns(train)
    image_column = image_column or _pick(IMAGE_COLUMNS, image_columns, "an image column", source_name)
    if _is_segmentation(task):
        masks = [c for c in image_columns if c != image_column]
        label_column = label_column or _pick(MASK_COLUMNS, masks, "a column of segmentation masks (images of class "
                                             "ids)", source_name)
    else:
        label_column = label_column or _pick(CLASS_COLUMNS, train.column_names, "a column of class labels",
                                             source_name)
    validation, test = _find_split(source, "validation"), _find_split(source, "test")
    if validation is None:
        if not 0 < val_fraction < 1:
            raise DataError(f"val_fraction: expected a fraction in (0, 1) to split off validation data, got "
                            f"{val_fraction!r}")
        stratify = label_column if isinstance(train.features.get(label_column), datasets.ClassLabel) else None
        try:
            parts = train.train_test_split(test_size=val_fraction, seed=seed, stratify_by_column=stratify)
        except ValueError:  # too few examples per class to stratify
            parts = train.train_test_split(test_size=val_fraction, seed=seed)
        train, validation = parts["train"], parts["test"]
    id2label = _label_set(train, task, label_column, labels, source_name)
    for name, split in (("train", train), ("validation", validation), ("test", test)):
        if split is not None:
            check_examples(split, task, image_column, label_column, len(id2label), f"{source_name}[{name}]")
    return TaskData(train, validation, test, image_column, label_column, id2label, task)


def _label_set(train, task, label_column, labels, source_name) -> dict[int, str]:
    import datasets

    if labels:
        return {i: str(name) for i, name in enumerate(labels)}
    feature = train.features[label_column]
    if isinstance(feature, datasets.ClassLabel):
        return dict(enumerate(feature.names))
    if _is_segmentation(task):
        raise DataError(f"labels: segmentation data {source_name} carries no class names; pass them in the order "
                        f"of the ids in the masks (--labels background,cat,dog) or put an {LABEL_FILE} in the "
                        f"data folder")
    values = sorted(set(train[label_column]))
    if not all(isinstance(v, int) for v in values):
        raise DataError(f"data {source_name}: expected integer class ids in column {label_column!r}, got values "
                        f"like {values[:3]!r}")
    return {i: str(i) for i in range(max(values) + 1)}


def _image_size(value) -> tuple[int, int]:
    """(width, height) of an undecoded `datasets.Image` value, reading the header only."""
    from PIL import Image

    with Image.open(io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"]) as image:
        return image.size


def check_examples(dataset, task: str, image_column: str, label_column: str, num_labels: int, where: str) -> None:
    """Every image readable; every class id in [0, num_labels); for segmentation every mask the size of its
    image with values in [0, num_labels) or 255 (ignored)."""
    import datasets
    import numpy as np
    from PIL import Image

    if len(dataset) == 0:
        raise DataError(f"data {where}: the split is empty")
    if not _is_segmentation(task):
        values = np.asarray(dataset[label_column])
        bad = np.flatnonzero((values < 0) | (values >= num_labels))
        if bad.size:
            raise DataError(f"data {where}: expected class ids in [0, {num_labels}) (the label set), got "
                            f"{int(values[bad[0]])} at example {int(bad[0])} ({bad.size} such examples)")
        return
    raw = dataset.cast_column(image_column, datasets.Image(decode=False)).cast_column(
        label_column, datasets.Image(decode=False))
    for index, example in enumerate(raw):
        image_size = _image_size(example[image_column])
        mask_value = example[label_column]
        with Image.open(io.BytesIO(mask_value["bytes"]) if mask_value.get("bytes") else mask_value["path"]) as mask:
            if mask.size != image_size:
                raise DataError(f"data {where}: example {index}: expected a mask the size of its image "
                                f"{image_size[0]}x{image_size[1]} (WxH), got {mask.size[0]}x{mask.size[1]}")
            ids = np.unique(np.asarray(mask))
        bad = ids[(ids >= num_labels) & (ids != IGNORE_INDEX)]
        if bad.size:
            raise DataError(f"data {where}: example {index}: expected mask values in [0, {num_labels}) (the label "
                            f"set) or {IGNORE_INDEX} (ignored), got {bad.tolist()}")


class MobileViTDataset(torch.utils.data.Dataset):
    """Examples of a `datasets.Dataset` as {"pixel_values", "labels"} for MobileViT.

    Indexing with an int applies `transform` with torch's global random state (what a plain DataLoader does);
    indexing with a `SampleKey` (from `MultiScaleBatchSampler`) crops at the key's resolution with the key's
    seed, which makes a run reproducible and independent of worker and process counts.
    """

    def __init__(self, dataset, task: str, transform, image_column: str = "image", label_column: str = "label"):
        self.dataset, self.task, self.transform = dataset, task, transform
        self.image_column, self.label_column = image_column, label_column

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def image_size(self) -> tuple[int, int]:
        return self.transform.size

    def __getitem__(self, key):
        size = generator = None
        if isinstance(key, SampleKey):
            size, generator = (key.height, key.width), torch.Generator().manual_seed(key.seed)
            key = key.index
        example = self.dataset[int(key)]
        pixels = image_to_tensor(example[self.image_column])
        if _is_segmentation(self.task):
            mask = mask_to_tensor(example[self.label_column])
            if mask.shape != pixels.shape[-2:]:
                raise DataError(f"example {key}: mask size {tuple(mask.shape)} differs from image size "
                                f"{tuple(pixels.shape[-2:])} (HxW)")
            pixels, mask = self.transform(pixels, mask, size=size, generator=generator)
            return {"pixel_values": pixels, "labels": mask}
        pixels, _ = self.transform(pixels, None, size=size, generator=generator)
        return {"pixel_values": pixels, "labels": torch.tensor(int(example[self.label_column]))}


def collate(examples: list[dict]) -> dict[str, torch.Tensor]:
    """Stack a batch (all examples of a batch share one resolution)."""
    return {key: torch.stack([example[key] for example in examples]) for key in examples[0]}
