"""Training data: loading local data sets offline, checking them before any training starts, and the torch
`Dataset` that turns examples into `pixel_values` / `labels` for `Trainer`.

Accepted sources (all read offline with the `datasets` library, nothing downloaded or cached):
* an image folder tree (`root/<class name>/<image>`, optionally with `train/`, `validation/`, `test/` level
  above the class folders), read here (`read_image_folder`): each class is a folder directly under the root
  (or split folder), symbolic links followed; its images may sit in sub-folders of it (they keep its class);
  hidden files and folders are left out; a name that is not valid UTF-8 is an error (it could not be a label);
  a plain folder of images (no class folders) is one unlabelled split (calibration images);
* a folder written by `datasets.Dataset.save_to_disk` or `DatasetDict.save_to_disk`: an image column plus a
  `ClassLabel`/integer column (classification) or a second image column holding label maps (segmentation);
* a `datasets.Dataset` / `DatasetDict` object (the demo's embedded data come this way).

Checked before any training (`prepare_task_data`): the folder tree (at least two class folders, none empty),
the columns and the label set (a validation or test split may not hold a class the training split lacks: the
model could never predict it; class ids of every split, and of a model's label set, are matched by name through
`mobilevit.labels.map_labels`), and then every example, with a progress bar: each image is decoded whole by
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
from ..labels import map_labels
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
    """Splits and label set of a data set, ready to be wrapped in `MobileViTDataset`.

    `id2label` is the label set the model learns (the training split's, or an existing model's after
    `use_label_set`); `label_maps[split]` turns the split's own class ids into ids of `id2label` (None: the same)."""

    train: object
    validation: object
    test: object | None
    image_column: str
    label_column: str
    id2label: dict[int, str]
    task: str  # "image-classification" or "semantic-segmentation"
    skipped: list[BadExample] = field(default_factory=list)  # left out with skip_bad=True
    source_name: str = "data"
    split_names: dict[str, list[str]] = field(default_factory=dict)  # each split's classes, in its own id order
    label_maps: dict[str, list[int] | None] = field(default_factory=dict)

    def use_label_set(self, id2label: dict[int, str], target: str) -> None:
        """Learn and evaluate in the label set `id2label` (an existing model's, `target` names it): each split's
        class names are matched to it (`map_labels`); a class it lacks is a DataError."""
        label2id = {name: index for index, name in sorted(id2label.items())}
        for split, names in self.split_names.items():
            mapping = map_labels(names, label2id, f"data {self.source_name}[{split}]", target, error=DataError)
            self.label_maps[split] = None if mapping == list(range(len(names))) else mapping
        self.id2label = dict(id2label)

    def dataset(self, split: str, transform, channel_order: str = "BGR") -> "MobileViTDataset":
        """A split as `MobileViTDataset` (pixels in `channel_order`), its class ids in the learned label set."""
        return MobileViTDataset(getattr(self, split), self.task, transform, self.image_column, self.label_column,
                                channel_order=channel_order, label_map=self.label_maps.get(split))


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
    """Load `path` offline as a `DatasetDict`: a `save_to_disk` folder, or an image folder tree
    (`read_image_folder`). With `class_folders` (training a classifier) the tree must hold at least two class
    folders, none empty; without (calibration images) a plain folder of images is one split."""
    import datasets

    path = Path(path)
    if not path.exists():
        raise DataError(f"data: expected an existing folder, got {str(path)!r} (does not exist)")
    if not path.is_dir():
        raise DataError(f"data: expected a folder (image folder tree or datasets.save_to_disk output), got file "
                        f"{str(path)!r}")
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        with _quiet_datasets():
            loaded = datasets.load_from_disk(str(path))
        return loaded if isinstance(loaded, datasets.DatasetDict) else datasets.DatasetDict({"train": loaded})
    if not _has_images(path):
        raise DataError(f"data: expected image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) in class sub-folders "
                        f"of {str(path)!r}, or a datasets.save_to_disk folder; found no images")
    if class_folders:
        check_class_folders(path)
    return read_image_folder(path)


class _quiet_datasets:
    """`datasets`' own progress bars off while it reads local files (its "Loading dataset" bars look like a
    download); ours show the work that takes time."""

    def __enter__(self):
        import datasets

        self.enabled = datasets.utils.logging.is_progress_bar_enabled()
        datasets.disable_progress_bars()

    def __exit__(self, *exc_info):
        import datasets

        if self.enabled:
            datasets.enable_progress_bars()


def _canonical_split(name: str) -> str | None:
    return next((split for split, names in SPLIT_ALIASES.items() if name.lower() in names), None)


def _utf8_name(path: Path, what: str) -> str:
    """`path.name`, which must be valid UTF-8 (a class name goes into config.json; a path into the data set)."""
    try:
        path.name.encode("utf-8")
    except UnicodeEncodeError:
        raise DataError(f"data: expected {what} names in UTF-8, got {os.fsencode(path)!r}; rename it") from None
    return path.name


def _visible_entries(folder: Path) -> list[Path]:
    return sorted(entry for entry in folder.iterdir() if not entry.name.startswith("."))


def _walk_images(folder: Path):
    """Image files in `folder` and its sub-folders (symbolic links followed, each real folder once), in order."""
    seen = set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:  # a link back up the tree
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            path = Path(root) / name
            if not name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
                yield path


def _images_under(folder: Path) -> list[str]:
    found = list(_walk_images(folder))
    for path in found:
        _utf8_name(path, "file")
        _utf8_name(path.parent, "folder")
    return [str(path) for path in found]


def read_image_folder(path: Path):
    """An image folder tree as a `DatasetDict` (see the module doc): one split per `train/`, `validation/`
    (`val/`, `valid/`, ...), `test/` folder, else the root is "train"; class folders give a `label` column
    (`ClassLabel` of that split's class folders, sorted), a folder of loose images an `image` column only."""
    import datasets

    roots = {}
    for entry in _visible_entries(path):
        split = _canonical_split(entry.name) if entry.is_dir() else None
        if split is not None:
            roots[split] = entry
    roots = roots or {"train": path}
    splits = {}
    for split, root in roots.items():
        classes = [entry for entry in _visible_entries(root) if entry.is_dir()]
        loose = [str(entry) for entry in _visible_entries(root)
                 if entry.is_file() and entry.suffix.lower() in IMAGE_EXTENSIONS]
        labelled = {_utf8_name(folder, "class folder"): _images_under(folder) for folder in classes}
        labelled = {name: files for name, files in labelled.items() if files}
        if labelled and not loose:
            names = sorted(labelled)
            files = [(file, index) for index, name in enumerate(names) for file in labelled[name]]
            features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
            splits[split] = datasets.Dataset.from_dict(
                {"image": [f for f, _ in files], "label": [i for _, i in files]}, features=features)
        else:  # no classes: every image under the root, unlabelled
            files = sorted(loose + [file for folder in classes for file in _images_under(folder)])
            if files:
                splits[split] = datasets.Dataset.from_dict({"image": files},
                                                           features=datasets.Features({"image": datasets.Image()}))
    if not splits:
        raise DataError(f"data: expected image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) in class sub-folders "
                        f"of {str(path)!r}, or a datasets.save_to_disk folder; found no images")
    return datasets.DatasetDict(splits)


def _has_images(folder: Path) -> bool:
    return next(_walk_images(folder), None) is not None


def check_class_folders(path: Path) -> None:
    """An image folder tree for classification: at least two class folders, each holding images (directly or in
    `train/`, `validation/`, `test/`), and no images beside the class folders (they would have no class). An
    empty class folder would be left out without a word (the model would then lack that class)."""
    folders = [p for p in _visible_entries(path) if p.is_dir()]
    splits = [p for p in folders if _canonical_split(p.name) is not None]
    parents = splits or [path]
    for parent in parents:
        classes = [p for p in _visible_entries(parent) if p.is_dir()]
        empty = [p for p in classes if not _has_images(p)]
        if empty:
            raise DataError(f"data: expected images in every class folder, got none in {str(empty[0])!r} (remove the "
                            "folder, or add images: an empty class would silently be left out)")
        loose = [p for p in _visible_entries(parent) if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
        if loose and classes:
            raise DataError(f"data: expected every image inside a class folder, got {str(loose[0])!r} beside the class "
                            f"folders of {str(parent)!r} (move it into its class folder)")
        if parent is path or _canonical_split(parent.name) == "train":
            if len(classes) < 2:
                found = f"one, {classes[0].name!r}" if classes else "none (the images are not in class sub-folders)"
                raise DataError(f"data: expected at least two class folders in {str(parent)!r} (a classifier needs two "
                                f"classes), got {found}")


def read_label_file(path: Path) -> list[str]:
    """`id2label.json` next to the data: {"0": "background", "1": "cat", ...} or ["background", "cat", ...]."""
    try:
        content = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: expected a JSON object id -> name or a list of names, but it cannot be read ({err})"
                        ) from None
    if isinstance(content, dict):
        keys = {key.strip(): name for key, name in content.items()}
        ids = sorted(int(key) for key in keys if key.lstrip("-").isdigit())
        if len(ids) != len(keys) or ids != list(range(len(ids))):
            raise DataError(f"{path}: expected the ids 0..N-1 as keys (\"0\", \"1\", ...), got {sorted(content)[:10]}")
        return [str(keys[str(i)]) for i in ids]
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
                      skip_bad: bool = False, check_size=None) -> TaskData:
    """Load (if a path) and split `source`, find its columns and label set, and check every example.

    A missing validation split is carved out of "train" (`val_fraction`, fixed by `seed`, stratified for
    classification). Raises `DataError` (a `ValueError`) before any training if something is off; with
    `skip_bad`, examples that cannot be used are left out instead and listed in `TaskData.skipped`.
    `check_size(number of training examples)` runs before the examples are read (the batch sizes' checks).
    """
    import datasets

    if isinstance(source, (str, Path)):
        source_name = repr(str(source))
        label_file = Path(source) / LABEL_FILE
        if labels is None and label_file.is_file():
            labels = read_label_file(label_file)
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
        label_column = label_column or _class_column(train, image_columns, source_name)
    validation, test = _find_split(source, "validation"), _find_split(source, "test")
    if validation is None:
        if not 0 < val_fraction < 1:
            raise DataError(f"val_fraction: expected a fraction in (0, 1) to split off validation data, got "
                            f"{val_fraction!r}")
        stratify = label_column if isinstance(train.features.get(label_column), datasets.ClassLabel) else None
        train, validation = _split_off(train, val_fraction, seed, stratify)
    id2label = _label_set(train, task, label_column, labels, source_name)
    splits, skipped = {"train": train, "validation": validation, "test": test}, []
    data = TaskData(train, validation, test, image_column, label_column, id2label, task, source_name=source_name)
    for name, split in splits.items():
        if split is not None:  # each split's classes, by name; ids follow the training split's label set
            data.split_names[name] = _split_classes(split, task, label_column, id2label)
    data.use_label_set(id2label, "--labels" if labels else "the training split")
    if check_size is not None:
        check_size(len(train))
    for name, split in splits.items():
        if split is None:
            continue
        where = f"{source_name}[{name}]"
        bad = check_examples(split, task, image_column, label_column, len(data.split_names[name]), where,
                             skip_bad=True)
        if bad and len(bad) == len(split):
            raise DataError(f"data {where}: none of its {len(split)} examples can be used, e.g. {bad[0]}")
        if bad and skip_bad:
            dropped = {b.index for b in bad}
            splits[name] = split.select([i for i in range(len(split)) if i not in dropped], keep_in_memory=True)
        skipped += bad
    if skipped and not skip_bad:  # every split checked first, so that one run names every bad file
        raise_bad_examples(source_name, skipped, sum(len(split) for split in splits.values() if split is not None))
    data.train, data.validation, data.test = splits["train"], splits["validation"], splits["test"]
    data.skipped = skipped
    return data


def _split_off(dataset, fraction: float, seed: int, stratify: str | None):
    """(rest, held out): `fraction` of `dataset` held out, stratified by the column `stratify` where every class
    allows it, drawn with `seed`. The index lists stay in memory: `datasets`' own train_test_split writes them
    beside a saved data set (an input of the run), and refuses to keep them in memory for one."""
    import math

    import numpy as np
    from datasets.arrow_dataset import stratified_shuffle_split_generate_indices

    held_out = max(1, math.ceil(fraction * len(dataset)))
    generator = np.random.default_rng(seed)
    try:
        if stratify is None:
            raise ValueError("not stratified")
        labels = np.asarray(dataset.select_columns([stratify]).with_format("numpy")[stratify])
        rest, test = next(stratified_shuffle_split_generate_indices(labels, len(dataset) - held_out, held_out,
                                                                   rng=generator))
    except ValueError:  # too few examples per class to stratify
        permutation = generator.permutation(len(dataset))
        rest, test = permutation[held_out:], permutation[:held_out]
    return (dataset.select(sorted(int(i) for i in rest), keep_in_memory=True),
            dataset.select(sorted(int(i) for i in test), keep_in_memory=True))


def _class_column(train, image_columns: list[str], source_name: str) -> str:
    """The column of class labels: a ClassLabel or integer column, never one of images (segmentation masks)."""
    import datasets

    names = [c for c in train.column_names if c not in image_columns]
    for name in CLASS_COLUMNS:
        feature = train.features.get(name)
        if name in names and (isinstance(feature, datasets.ClassLabel) or
                              (isinstance(feature, datasets.Value) and feature.dtype.startswith(("int", "uint")))):
            return name
    masks = [c for c in image_columns if c in MASK_COLUMNS]
    hint = (f"; {masks[0]!r} holds images, as segmentation masks do: pass --task segmentation for such data"
            if masks else "")
    raise DataError(f"data {source_name}: expected a column of class labels (a ClassLabel or integer column named one "
                    f"of {list(CLASS_COLUMNS)}), got columns {list(train.column_names)}{hint}")


def _split_classes(split, task, label_column, id2label) -> list[str]:
    """A split's class names in its own id order: its ClassLabel's names where it has one (a split of a folder
    tree has its own class folders; they are matched to --labels by name, as to any label set), else the label
    set's (integer ids mean what --labels or the training split says)."""
    import datasets

    feature = split.features.get(label_column)
    if not _is_segmentation(task) and isinstance(feature, datasets.ClassLabel):
        return list(feature.names)
    return [id2label[i] for i in range(len(id2label))]


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
    values = list(train[label_column])
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
        shown = [v for v in values if not (isinstance(v, int) and v >= 0)][:3]
        raise DataError(f"data {source_name}: expected integer class ids >= 0 in column {label_column!r}, got values "
                        f"like {shown!r}")
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
                 channel_order: str = "BGR", label_map: list[int] | None = None):
        self.dataset, self.task, self.transform = dataset, task, transform
        self.image_column, self.label_column = image_column, label_column
        self.channel_order = channel_order  # the model family's (`ModelFamily.preprocessing`)
        # the split's class ids -> the model's (`TaskData.use_label_set`); masks keep IGNORE_INDEX
        self.label_map = None if label_map is None else torch.tensor(
            list(label_map) + [IGNORE_INDEX] * (IGNORE_INDEX + 1 - len(label_map)), dtype=torch.long)

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
            if self.label_map is not None:
                mask = self.label_map[mask.clamp(0, IGNORE_INDEX)]
            return {"pixel_values": pixels, "labels": mask}
        pixels, _ = self.transform(pixels, None, size=size, generator=generator)
        label = int(example[self.label_column])
        return {"pixel_values": pixels,
                "labels": torch.tensor(label if self.label_map is None else int(self.label_map[label]))}


def collate(examples: list[dict]) -> dict[str, torch.Tensor]:
    """Stack a batch (all examples of a batch share one resolution)."""
    return {key: torch.stack([example[key] for example in examples]) for key in examples[0]}
