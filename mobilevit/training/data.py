"""Training data: loading local data sets offline, checking them before any training starts, and the torch
`Dataset` that turns examples into `pixel_values` / `labels` for `Trainer`.

Accepted sources (all read with the `datasets` library, nothing downloaded):
* an image folder tree (`root/<class name>/<image>`, optionally with `train/`, `validation/`, `test/` level
  above the class folders): `datasets`' `imagefolder` builder; classification only;
* a folder written by `datasets.Dataset.save_to_disk` or `DatasetDict.save_to_disk`: an image column plus a
  `ClassLabel`/integer column (classification) or a second image column holding label maps (segmentation);
* a `datasets.Dataset` / `DatasetDict` object (the demo's embedded data come this way).

Checked before any training (`prepare_task_data`): the folder tree (at least two class folders, none empty),
the columns and the label set, and then every example, with a progress bar: each image is decoded whole by
the rules every tool shares (`mobilevit.image_reading`: a truncated or unreadable file, a mode or value range
those rules refuse), each class id lies in the label set, each mask is a map of class ids the size of its
image with values in the label set or 255. Bad examples are named (their file, or split and index) in one
`DataError`, or, with `skip_bad=True`, left out and reported.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import UserError
from ..image_reading import ImageError, image_pixels, label_map, open_image
from .sampler import SampleKey
from .transforms import IGNORE_INDEX, image_to_tensor, mask_to_tensor

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
IMAGE_COLUMNS = ("image", "img", "pixel_values", "images")
CLASS_COLUMNS = ("label", "labels", "class", "target")
MASK_COLUMNS = ("annotation", "label", "mask", "segmentation", "semantic_map", "labels", "gt")
LABEL_FILE = "id2label.json"  # optional, next to a saved data set: the class names of segmentation masks
SPLIT_ALIASES = {"train": ("train", "training"), "validation": ("validation", "valid", "val", "eval", "dev"),
                 "test": ("test", "testing")}


SHOWN_BAD_EXAMPLES = 5  # named in the error; all of them in the skip report


class DataError(UserError):
    """A data set that cannot be trained on; the message names the source, what was expected and what came."""


@dataclass(frozen=True)
class BadExample:
    """An example that cannot be used: its split, its index there, its name (file or index) and why."""

    split: str
    index: int
    name: str
    reason: str

    def __str__(self) -> str:
        return f"{self.name}: {self.reason}"


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
    skipped: list[BadExample] = field(default_factory=list)  # left out with skip_bad=True


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


def load_local_dataset(path: str | Path, class_folders: bool = False):
    """Load `path` offline as a `DatasetDict`: a `save_to_disk` folder, or an image folder tree. With
    `class_folders` (training a classifier) the tree must hold at least two class folders, none empty;
    without (calibration images) a plain folder of images is one split."""
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
    if class_folders:
        check_class_folders(path)
    return datasets.load_dataset("imagefolder", data_dir=str(path))


def _has_images(folder: Path) -> bool:
    return any(p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file() for p in folder.rglob("*"))


def check_class_folders(path: Path) -> None:
    """An image folder tree for classification: at least two class folders, each holding images (directly or in
    `train/`, `validation/`, `test/`). `datasets` would drop an empty class folder without a word (the model
    would then lack that class) and give a single class folder no label column at all."""
    folders = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    splits = [p for p in folders if any(p.name in names for names in SPLIT_ALIASES.values())]
    parents = splits or [path]
    for parent in parents:
        classes = sorted(p for p in parent.iterdir() if p.is_dir() and not p.name.startswith("."))
        empty = [p for p in classes if not _has_images(p)]
        if empty:
            raise DataError(f"data: expected images in every class folder, got none in {str(empty[0])!r} (remove the "
                            "folder, or add images: an empty class would silently be left out)")
        if parent is path or parent.name in SPLIT_ALIASES["train"]:
            if len(classes) < 2:
                found = f"one, {classes[0].name!r}" if classes else "none (the images are not in class sub-folders)"
                raise DataError(f"data: expected at least two class folders in {str(parent)!r} (a classifier needs two "
                                f"classes), got {found}")


def _read_label_file(path: Path) -> list[str]:
    """`id2label.json` next to the data: {"0": "background", "1": "cat", ...} or ["background", "cat", ...]."""
    try:
        content = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: expected a JSON object id -> name or a list of names, but it cannot be read ({err})"
                        ) from None
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
                      seed: int = 0, image_column: str | None = None, label_column: str | None = None,
                      skip_bad: bool = False) -> TaskData:
    """Load (if a path) and split `source`, find its columns and label set, and check every example.

    A missing validation split is carved out of "train" (`val_fraction`, fixed by `seed`, stratified for
    classification). Raises `DataError` (a `ValueError`) before any training if something is off; with
    `skip_bad`, examples that cannot be used are left out instead and listed in `TaskData.skipped`.
    """
    import datasets

    if isinstance(source, (str, Path)):
        source_name = repr(str(source))
        label_file = Path(source) / LABEL_FILE
        if labels is None and label_file.is_file():
            labels = _read_label_file(label_file)
        source = load_local_dataset(source, class_folders=not _is_segmentation(task))
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
    splits, skipped = {"train": train, "validation": validation, "test": test}, []
    for name, split in splits.items():
        if split is None:
            continue
        where = f"{source_name}[{name}]"
        bad = check_examples(split, task, image_column, label_column, len(id2label), where, skip_bad=True)
        if bad and len(bad) == len(split):
            raise DataError(f"data {where}: none of its {len(split)} examples can be used, e.g. {bad[0]}")
        if bad and skip_bad:
            dropped = {b.index for b in bad}
            splits[name] = split.select([i for i in range(len(split)) if i not in dropped])
        skipped += bad
    if skipped and not skip_bad:  # every split checked first, so that one run names every bad file
        raise_bad_examples(source_name, skipped, sum(len(split) for split in splits.values() if split is not None))
    return TaskData(splits["train"], splits["validation"], splits["test"], image_column, label_column, id2label, task,
                    skipped)


def _label_set(train, task, label_column, labels, source_name) -> dict[int, str]:
    import datasets

    if labels:
        duplicates = sorted({name for name in labels if list(labels).count(name) > 1})
        if duplicates:
            raise DataError(f"labels: expected distinct class names, got {duplicates[0]!r} more than once", usage=True)
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


def _example_name(value, where: str, index: int) -> str:
    """How an example is named in messages: its file, else its split and index."""
    return repr(value["path"]) if isinstance(value, dict) and value.get("path") else f"{where}[{index}]"


def _read(value, name: str, quick: bool = False):
    """Decode an undecoded `datasets.Image` value (bytes and/or path) whole; ImageError names `name`. `quick`:
    JPEGs at a reduced scale (every byte still read), where the image's size does not matter."""
    source = value.get("bytes") or value.get("path")
    if source is None:
        raise ImageError(f"image {name} has neither bytes nor a path")
    return open_image(source, name, quick=quick)


def check_examples(dataset, task: str, image_column: str, label_column: str, num_labels: int, where: str,
                   skip_bad: bool = False) -> list[BadExample]:
    """Every image decodes whole and reads by the image rules; every class id is in [0, num_labels); for
    segmentation every mask is a class-id map the size of its image with values in [0, num_labels) or 255
    (ignored). Raises DataError naming the bad examples, or with `skip_bad` returns them."""
    import datasets
    import numpy as np
    from tqdm.auto import tqdm

    if len(dataset) == 0:
        raise DataError(f"data {where}: the split is empty")
    segmentation = _is_segmentation(task)
    columns = [image_column, label_column] if segmentation else [image_column]
    raw = dataset.select_columns(columns + ([] if segmentation else [label_column]))
    for column in columns:
        raw = raw.cast_column(column, datasets.Image(decode=False))
    bad, labelled = [], not segmentation  # segmentation: does any mask label a pixel?
    progress = tqdm(raw, desc=f"checking {where}", unit="example", total=len(raw), leave=False,
                    disable=int(os.environ.get("RANK", "0")) != 0)
    for index, example in enumerate(progress):
        name = _example_name(example[image_column], where, index)
        try:
            # a mask must match its image's size, so segmentation images are decoded at full size
            pixels = image_pixels(_read(example[image_column], name, quick=not segmentation), name)
            if not segmentation:
                label = example[label_column]
                if not (isinstance(label, int) and 0 <= label < num_labels):
                    raise DataError(f"expected a class id in [0, {num_labels}) (the label set), got {label!r}")
                continue
            mask_name = _example_name(example[label_column], where, index)
            mask = label_map(_read(example[label_column], mask_name), mask_name)
            if tuple(mask.shape) != tuple(pixels.shape[:2]):
                raise DataError(f"expected a mask the size of its image {pixels.shape[1]}x{pixels.shape[0]} (WxH), "
                                f"got {mask.shape[1]}x{mask.shape[0]}")
            ids = np.unique(mask.numpy())
            labelled = labelled or bool((ids != IGNORE_INDEX).any())
            outside = ids[((ids < 0) | (ids >= num_labels)) & (ids != IGNORE_INDEX)]
            if outside.size:
                raise DataError(f"expected mask values in [0, {num_labels}) (the label set) or {IGNORE_INDEX} "
                                f"(ignored), got {outside.tolist()}")
        except (ImageError, DataError) as err:
            bad.append(BadExample(where, index, name, str(err).replace(f"image {name} ", "").replace(f"{name}: ", "")))
            if not progress.disable:  # each bad file as it is found; the summary follows
                progress.write(f"data {where}: {bad[-1]}", file=sys.stderr)
    if bad and not skip_bad:
        raise_bad_examples(where, bad, len(raw))
    if not labelled and len(bad) < len(raw):  # the loss and the metrics would have nothing to count
        raise DataError(f"data {where}: expected masks that label some pixels, got only {IGNORE_INDEX} (ignored) "
                        "in every mask")
    return bad


def raise_bad_examples(where: str, bad: list[BadExample], total: int):
    shown = "; ".join(map(str, bad[:SHOWN_BAD_EXAMPLES]))
    more = f"; and {len(bad) - SHOWN_BAD_EXAMPLES} more" if len(bad) > SHOWN_BAD_EXAMPLES else ""
    raise DataError(f"data {where}: {len(bad)} of {total} examples cannot be used: {shown}{more} (pass "
                    "--skip-bad-images / skip_bad=True to train without them)")


class MobileViTDataset(torch.utils.data.Dataset):
    """Examples of a `datasets.Dataset` as {"pixel_values", "labels"} for MobileViT.

    Indexing with an int applies `transform` with torch's global random state (what a plain DataLoader does);
    indexing with a `SampleKey` (from `MultiScaleBatchSampler`) crops at the key's resolution with the key's
    seed, which makes a run reproducible and independent of worker and process counts.
    """

    def __init__(self, dataset, task: str, transform, image_column: str = "image", label_column: str = "label",
                 channel_order: str = "BGR"):
        self.dataset, self.task, self.transform = dataset, task, transform
        self.image_column, self.label_column = image_column, label_column
        self.channel_order = channel_order  # the model family's (`ModelFamily.preprocessing`)

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
        pixels = image_to_tensor(example[self.image_column], self.channel_order)
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
