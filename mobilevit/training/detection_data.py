"""Detection data: COCO-format folders and `datasets` folders of boxes, checked when loaded, and the torch
`Dataset` and collator that feed a detector to `Trainer`.

Accepted sources (nothing downloaded):

* a COCO-format folder: an instances JSON (`images`, `annotations` with `bbox` [x, y, width, height] in pixels,
  `categories`) beside its images. Splits are found as for image folders (train / training, validation / valid /
  val / eval / dev, test / testing), in any of three layouts:
  - `root/<split>/` holding the split's images and exactly one `.json` (Roboflow's export, among others);
  - `root/annotations/instances_<split>*.json` with the images in `root/<split>*/` or `root/images/<split>*/`
    (COCO's own layout: `annotations/instances_train2017.json` + `train2017/`);
  - one `.json` directly in `root` (a single split: training); images in `root/` or `root/images/`;
* a `datasets.save_to_disk` folder (or a `datasets.Dataset` / `DatasetDict`): an `image` column and an
  `objects` column with `bbox` (COCO [x, y, width, height], pixels) and `category` per box (transformers'
  detection examples use this form, e.g. cppe-5); class names from the `category` ClassLabel, else `--labels`
  or `id2label.json` beside the data.

A missing validation split is carved out of the training split (10 %, fixed by the seed).

Checked when loaded, before any training (`prepare_detection_data`), every image decoded once:
- fixed, and counted in one printed line: boxes reaching outside their image are clipped to it; boxes of zero
  or negative width or height (also after clipping) are dropped; crowd regions (`iscrowd: 1`) are left out
  (ml-cvnets trains without them); training images without any box are left out (they add nothing to SSD's
  loss: no positives, so no mined negatives); evaluation images without boxes stay (their detections count);
- errors, one line naming the file and the annotation: a JSON that is not a COCO instances file, duplicate image,
  annotation or category ids, duplicate category names, an annotation of an image or category id that does not
  exist, a bbox that is not four finite numbers, a category outside the label set, a class named "background"
  (the model's class 0); images that cannot be read, or whose size differs from the JSON's, are named together
  (or left out with `skip_bad=True`).

Class ids: the data's categories in increasing id order become the model's labels 1..N, with 0 the background
(ml-cvnets' `coco_id_to_contiguous_id`); COCO's sparse ids (1..90 for 80 classes) thus become 1..80. Fine-tuning a
detector whose classes include every class of the data keeps its head and maps the data's classes to it by name.
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..image_reading import ImageError, image_pixels, open_image
from ..labels import map_labels
from .data import (IMAGE_COLUMNS, IMAGE_EXTENSIONS, LABEL_FILE, SPLIT_ALIASES, BadExample, DataError,
                   _find_split, raise_bad_examples, read_label_file)
from .sampler import SampleKey

BACKGROUND = "background"  # the model's class 0
OBJECT_COLUMNS = ("objects", "annotations", "labels")
BOX_KEYS = ("bbox", "bboxes", "boxes")
CATEGORY_KEYS = ("category", "categories", "category_id", "label", "labels")


@dataclass
class DetectionSplit:
    """One split: where each image comes from and its checked boxes.

    `source` is a list of image file paths (COCO folder) or a `datasets.Dataset` with `image_column`; `rows`
    the rows of `source` in this split; `boxes[i]` (K, 4) float32 pixel corners (x1, y1, x2, y2) inside the
    image; `labels[i]` (K,) int64 indices into the data's `categories`; `sizes[i]` (height, width);
    `image_ids[i]` the COCO image id (else the row); `names[i]` how messages name the image."""

    name: str
    source: object
    image_column: str | None
    rows: list[int]
    boxes: list[np.ndarray]
    labels: list[np.ndarray]
    sizes: list[tuple[int, int]]
    image_ids: list[int]
    names: list[str]

    def __len__(self) -> int:
        return len(self.rows)

    def select(self, keep, name: str | None = None) -> "DetectionSplit":
        keep = list(keep)
        return DetectionSplit(name or self.name, self.source, self.image_column, [self.rows[i] for i in keep],
                              [self.boxes[i] for i in keep], [self.labels[i] for i in keep],
                              [self.sizes[i] for i in keep], [self.image_ids[i] for i in keep],
                              [self.names[i] for i in keep])

    def image(self, index: int) -> np.ndarray:
        """uint8 (H, W, 3) RGB pixels of example `index`, read by the rules every tool shares."""
        row = self.rows[index]
        if isinstance(self.source, list):
            image = open_image(self.source[row])
        else:
            image = self.source[row][self.image_column]
        return image_pixels(image, self.names[index]).numpy()

    @property
    def num_boxes(self) -> int:
        return int(sum(len(b) for b in self.boxes))


@dataclass
class Fixes:
    """What loading fixed, counted over all splits (said in one line)."""

    clipped: int = 0
    empty_boxes: int = 0
    crowd: int = 0
    images_without_boxes: int = 0

    def describe(self) -> str:
        parts = [f"{self.clipped} boxes clipped to their image" if self.clipped else "",
                 f"{self.empty_boxes} boxes of zero or negative size dropped" if self.empty_boxes else "",
                 f"{self.crowd} crowd regions left out" if self.crowd else "",
                 f"{self.images_without_boxes} training images without boxes left out"
                 if self.images_without_boxes else ""]
        return ", ".join(p for p in parts if p) or "nothing to fix"


@dataclass
class DetectionData:
    """Splits and classes of a detection data set, ready for `DetectionDataset`."""

    train: DetectionSplit
    validation: DetectionSplit
    test: DetectionSplit | None
    categories: list[str]  # the data's classes, in the order of their ids (labels index this list)
    source_name: str
    fixes: Fixes = field(default_factory=Fixes)
    skipped: list[BadExample] = field(default_factory=list)
    label_set: dict[int, str] | None = None  # an existing model's label set the data is matched to (`use_label_set`)

    @property
    def id2label(self) -> dict[int, str]:
        """The label set the detector learns: an existing model's (`use_label_set`), else that of a new head:
        background, then the data's classes."""
        if self.label_set is not None:
            return dict(self.label_set)
        return {0: BACKGROUND, **{i + 1: name for i, name in enumerate(self.categories)}}

    @property
    def model_ids(self) -> np.ndarray:
        """The id in `id2label` of each of the data's categories."""
        if self.label_set is None:
            return np.arange(1, len(self.categories) + 1)
        return label_ids_for(self.categories, {name: index for index, name in self.label_set.items() if index != 0})

    def use_label_set(self, id2label: dict[int, str], target: str) -> None:
        """Learn and evaluate in the label set `id2label` (an existing detector's, class 0 the background; `target`
        names it): the data's classes are matched to it by name (`map_labels`, as for classification and
        segmentation); a class it lacks is a DataError. Every split shares the data's one class list (checked when
        loaded), so one match covers them all."""
        label2id = {name: index for index, name in sorted(id2label.items()) if index != 0}
        map_labels(self.categories, label2id, f"data {self.source_name}", target, error=DataError)
        self.label_set = {int(index): name for index, name in id2label.items()}

    def summary(self) -> str:
        splits = [s for s in (self.train, self.validation, self.test) if s is not None]
        counts = ", ".join(f"{s.name} {len(s)} images / {s.num_boxes} boxes" for s in splits)
        return f"data {self.source_name}: {len(self.categories)} classes; {counts}; {self.fixes.describe()}"


# ---------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------
def prepare_detection_data(source, *, labels: list[str] | None = None, val_fraction: float = 0.1, seed: int = 0,
                           skip_bad: bool = False, check_size=None) -> DetectionData:
    """Load (if a path) and check `source` (see the module docstring); returns the splits with checked boxes.
    Raises `DataError` before any training if something is off. `check_size(number of training images)` runs
    before the images are decoded (the batch sizes' checks), and again if the training split shrank (images
    unreadable, or without boxes, left out)."""
    import datasets

    fixes = Fixes()
    if isinstance(source, (str, Path)):
        path = Path(source)
        source_name = repr(str(source))
        if not path.is_dir():
            raise DataError(f"data: expected a folder (COCO-format or datasets.save_to_disk), got "
                            f"{'file' if path.exists() else 'nothing at'} {str(path)!r}")
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            if labels is None and (path / LABEL_FILE).is_file():
                labels = read_label_file(path / LABEL_FILE)
            loaded = datasets.load_from_disk(str(path))
            splits, categories = _from_datasets(loaded, labels, source_name)
        else:
            splits, categories = _from_coco_folder(path, fixes)
    elif isinstance(source, (datasets.Dataset, datasets.DatasetDict)):
        source_name = type(source).__name__
        splits, categories = _from_datasets(source, labels, source_name)
    else:
        raise TypeError(f"data: expected a path, datasets.Dataset or datasets.DatasetDict, got {type(source).__name__}")
    if BACKGROUND in categories:
        raise DataError(f"data {source_name}: a class is named {BACKGROUND!r}, the name of the detector's class 0 "
                        f"(every box is an object); rename it")
    duplicates = sorted({name for name in categories if categories.count(name) > 1})
    if duplicates:
        raise DataError(f"data {source_name}: expected distinct class names, got {duplicates[0]!r} more than once")
    if "train" not in splits:
        raise DataError(f"data {source_name}: expected a training split, got splits {sorted(splits)}")
    if "validation" not in splits:
        if not 0 < val_fraction < 1:
            raise DataError(f"val_fraction: expected a fraction in (0, 1), got {val_fraction!r}")
        train = splits["train"]
        order = np.random.default_rng(seed).permutation(len(train.rows))
        count = max(1, int(round(len(order) * val_fraction)))
        if len(order) - count < 1:
            raise DataError(f"data {source_name}: {len(order)} images cannot be split into training and validation")
        splits["validation"] = train.select(sorted(order[:count].tolist()), "validation")
        splits["train"] = train.select(sorted(order[count:].tolist()), "train")
    for name, split in splits.items():
        if len(split) == 0:
            raise DataError(f"data {source_name}[{name}]: the split is empty (no images)")
    checked_size = len(splits["train"])
    if check_size is not None:
        check_size(checked_size)
    bad = []
    for name in ("train", "validation", "test"):
        if name in splits:
            splits[name] = _check_split(splits[name], len(categories), source_name, fixes, bad)
    if bad and not skip_bad:
        raise_bad_examples(source_name, bad, sum(len(s) for s in splits.values()))
    dropped = {}
    for item in bad:
        dropped.setdefault(item.split, set()).add(item.index)
    for name, indices in dropped.items():
        splits[name] = splits[name].select([i for i in range(len(splits[name])) if i not in indices])
    train = splits["train"]
    without = [i for i in range(len(train)) if len(train.boxes[i]) == 0]
    if without:
        fixes.images_without_boxes = len(without)
        splits["train"] = train.select([i for i in range(len(train)) if len(train.boxes[i])])
    for name, split in splits.items():
        if len(split) == 0:
            raise DataError(f"data {source_name}[{name}]: no usable images left (every image was unreadable or, for "
                            f"training, without boxes)")
    if check_size is not None and len(splits["train"]) < checked_size:
        check_size(len(splits["train"]))
    return DetectionData(splits["train"], splits["validation"], splits.get("test"), categories, source_name, fixes,
                         bad)


def _check_split(split: DetectionSplit, num_categories: int, source_name: str, fixes: Fixes,
                 bad: list) -> DetectionSplit:
    """Decode every image (unreadable ones and sizes that contradict the annotations go to `bad`), clip the
    boxes to the image and drop empty ones (counted in `fixes`)."""
    from tqdm.auto import tqdm

    where = f"{source_name}[{split.name}]"
    progress = tqdm(range(len(split)), desc=f"checking {where}", unit="image", leave=False,
                    disable=int(os.environ.get("RANK", "0")) != 0)
    boxes, labels, sizes = [], [], []
    for index in progress:
        found = split.boxes[index]
        try:
            height, width = _decoded_size(split, index)
        except ImageError as err:
            bad.append(BadExample(split.name, index, split.names[index],
                                  str(err).replace(f"image {split.names[index]} ", "")))
        else:
            stated = split.sizes[index]
            if stated is not None and tuple(stated) != (height, width):
                bad.append(BadExample(split.name, index, split.names[index],
                                      f"the annotations give its size as {stated[1]}x{stated[0]} (WxH), the file is "
                                      f"{width}x{height}"))
        if bad and bad[-1].split == split.name and bad[-1].index == index:  # left out or named: boxes as they are
            boxes.append(found)
            labels.append(split.labels[index])
            sizes.append(split.sizes[index] or (0, 0))
            continue
        clipped = found.copy()
        clipped[:, 0::2] = clipped[:, 0::2].clip(0, width)
        clipped[:, 1::2] = clipped[:, 1::2].clip(0, height)
        empty = (found[:, 2] <= found[:, 0]) | (found[:, 3] <= found[:, 1])
        keep = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
        fixes.empty_boxes += int((~keep).sum())
        fixes.clipped += int(((clipped != found).any(axis=1) & keep & ~empty).sum())
        boxes.append(clipped[keep])
        labels.append(split.labels[index][keep])
        sizes.append((height, width))
        outside = split.labels[index][(split.labels[index] < 0) | (split.labels[index] >= num_categories)]
        if outside.size:
            raise DataError(f"data {where}: {split.names[index]}: expected class ids in [0, {num_categories}) (the "
                            f"label set), got {sorted(set(outside.tolist()))}")
    return DetectionSplit(split.name, split.source, split.image_column, split.rows, boxes, labels, sizes,
                          split.image_ids, split.names)


def _decoded_size(split: DetectionSplit, index: int) -> tuple[int, int]:
    """(height, width) of the decoded image (every byte read; EXIF orientation applied)."""
    row = split.rows[index]
    if isinstance(split.source, list):
        image = open_image(split.source[row], split.names[index], quick=False)
    else:
        value = split.source[row][split.image_column]
        if value is None:
            raise ImageError(f"image {split.names[index]} is missing (None)")
        image = value
    pixels = image_pixels(image, split.names[index])
    return int(pixels.shape[0]), int(pixels.shape[1])


# -- COCO-format folders -----------------------------------------------------------------------------------------
def find_coco_splits(root: Path) -> dict[str, tuple[Path, list[Path]]]:
    """split -> (instances JSON, folders to look for its images in), by the layouts of the module docstring."""
    found: dict[str, tuple[Path, list[Path]]] = {}
    folders = {p.name.lower(): p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}
    for split, aliases in SPLIT_ALIASES.items():
        for alias in aliases:
            folder = folders.get(alias)
            if folder is None:
                continue
            jsons = sorted(folder.glob("*.json"))
            if len(jsons) > 1:
                raise DataError(f"data: expected one instances JSON in {str(folder)!r}, got {len(jsons)} "
                                f"({', '.join(p.name for p in jsons[:4])})")
            if jsons:
                found[split] = (jsons[0], [folder, folder / "images"])
                break
    annotations = root / "annotations"
    if annotations.is_dir():
        for path in sorted(annotations.glob("*.json")):
            stem = path.stem.lower()
            for split, aliases in SPLIT_ALIASES.items():
                # instances_train2017 -> "train2017": the split word starts the part after the last underscore
                tail = stem.rsplit("_", 1)[-1]
                alias = next((a for a in aliases if tail.startswith(a)), None)
                if alias is None:
                    continue
                if split in found:
                    raise DataError(f"data: two instances JSON files for the {split} split: {str(found[split][0])!r} "
                                    f"and {str(path)!r}")
                found[split] = (path, [root / tail, root / "images" / tail, root / "images", root])
    if not found:
        jsons = sorted(p for p in root.glob("*.json") if p.name != LABEL_FILE)
        if len(jsons) > 1:
            raise DataError(f"data: expected one instances JSON in {str(root)!r} (or split folders), got "
                            f"{len(jsons)} ({', '.join(p.name for p in jsons[:4])})")
        if jsons:
            found["train"] = (jsons[0], [root, root / "images"])
    if not found:
        raise DataError(f"data: expected a COCO-format folder (an instances JSON in {str(root)!r}, in split folders "
                        f"train/ validation/ test/, or annotations/instances_<split>.json) or a datasets.save_to_disk "
                        f"folder; found neither")
    return found


def _from_coco_folder(root: Path, fixes: Fixes) -> tuple[dict[str, DetectionSplit], list[str]]:
    splits, categories = {}, None
    for split, (json_path, image_dirs) in find_coco_splits(root).items():
        content = read_coco_json(json_path)
        names = [name for _, name in content["categories"]]
        if categories is None:
            categories, reference = names, json_path
        elif names != categories:
            raise DataError(f"data: {str(json_path)!r} has the categories {names[:6]}, {str(reference)!r} has "
                            f"{categories[:6]}; every split needs the same categories (ids and names)")
        splits[split] = _coco_split(split, content, image_dirs, fixes)
    return splits, categories


def read_coco_json(path: Path) -> dict:
    """A COCO instances file, checked: {"images": [(id, file_name, (h, w) or None)], "categories": [(id, name)]
    sorted by id, "annotations": {image id: [(bbox corners, category index, iscrowd)]}}. Raises a one-line
    DataError naming the file and the entry."""
    where = repr(str(path))
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"data: {where} cannot be read as JSON ({err})") from None
    if not isinstance(content, dict) or not {"images", "annotations", "categories"} <= set(content):
        got = sorted(content)[:6] if isinstance(content, dict) else type(content).__name__
        raise DataError(f"data: {where}: expected a COCO instances file (keys images, annotations, categories), got "
                        f"{got}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(content[key], list):
            raise DataError(f"data: {where}: expected {key!r} to be a list, got {type(content[key]).__name__}")

    categories, by_id, names = [], {}, {}
    for position, entry in enumerate(content["categories"]):
        if not isinstance(entry, dict) or not _is_id(entry.get("id")) or not isinstance(entry.get("name"), str):
            raise DataError(f"data: {where}: categories[{position}]: expected an integer 'id' and a 'name', got "
                            f"{_short(entry)}")
        if entry["id"] in by_id:
            raise DataError(f"data: {where}: categories[{position}] has id {entry['id']}, which categories"
                            f"[{by_id[entry['id']]}] has too (category ids must be unique)")
        if entry["name"] in names:
            raise DataError(f"data: {where}: categories[{position}] is named {entry['name']!r}, like categories"
                            f"[{names[entry['name']]}] (category names must be unique: classes are matched by name)")
        by_id[entry["id"]], names[entry["name"]] = position, position
        categories.append((int(entry["id"]), entry["name"]))
    categories.sort()
    index_of = {category_id: index for index, (category_id, _) in enumerate(categories)}

    images, image_position = [], {}
    for position, entry in enumerate(content["images"]):
        if not isinstance(entry, dict) or not _is_id(entry.get("id")) or not isinstance(entry.get("file_name"), str):
            raise DataError(f"data: {where}: images[{position}]: expected an integer 'id' and a 'file_name', got "
                            f"{_short(entry)}")
        if entry["id"] in image_position:
            raise DataError(f"data: {where}: images[{position}] has id {entry['id']}, which images"
                            f"[{image_position[entry['id']]}] has too (image ids must be unique)")
        image_position[entry["id"]] = position
        size = None
        if _is_id(entry.get("height")) and _is_id(entry.get("width")):
            size = (int(entry["height"]), int(entry["width"]))
        images.append((int(entry["id"]), entry["file_name"], size))

    annotations: dict[int, list] = {image_id: [] for image_id, _, _ in images}
    seen = {}
    for position, entry in enumerate(content["annotations"]):
        if not isinstance(entry, dict):
            raise DataError(f"data: {where}: annotations[{position}]: expected an object, got {_short(entry)}")
        named = f"annotation id {entry['id']} (annotations[{position}])" if "id" in entry else \
            f"annotations[{position}]"
        if "id" in entry:
            if not _is_id(entry["id"]):
                raise DataError(f"data: {where}: {named}: expected an integer id, got {entry['id']!r}")
            if entry["id"] in seen:
                raise DataError(f"data: {where}: {named}: annotations[{seen[entry['id']]}] has the same id "
                                f"(annotation ids must be unique)")
            seen[entry["id"]] = position
        if entry.get("image_id") not in annotations:
            raise DataError(f"data: {where}: {named} names image_id {entry.get('image_id')!r}, which no image has")
        if entry.get("category_id") not in index_of:
            known = ", ".join(str(c) for c, _ in categories[:8]) + (", ..." if len(categories) > 8 else "")
            raise DataError(f"data: {where}: {named} has category_id {entry.get('category_id')!r}, which is not among "
                            f"the categories ({known})")
        box = entry.get("bbox")
        if not (isinstance(box, (list, tuple)) and len(box) == 4 and all(_is_finite(v) for v in box)):
            raise DataError(f"data: {where}: {named}: expected bbox [x, y, width, height] of four finite numbers, "
                            f"got {box!r}")
        x, y, w, h = (float(v) for v in box)
        annotations[entry["image_id"]].append(((x, y, x + w, y + h), index_of[entry["category_id"]],
                                               bool(entry.get("iscrowd", 0))))
    return {"images": images, "categories": categories, "annotations": annotations}


def _coco_split(split: str, content: dict, image_dirs: list[Path], fixes: Fixes) -> DetectionSplit:
    paths, boxes, labels, sizes, ids, names = [], [], [], [], [], []
    for image_id, file_name, size in content["images"]:
        path = next((d / file_name for d in image_dirs if (d / file_name).is_file()), image_dirs[0] / file_name)
        entries = content["annotations"][image_id]
        kept = [(box, label) for box, label, is_crowd in entries if not is_crowd]
        fixes.crowd += len(entries) - len(kept)
        paths.append(path)
        boxes.append(np.array([box for box, _ in kept], dtype=np.float32).reshape(-1, 4))
        labels.append(np.array([label for _, label in kept], dtype=np.int64))
        sizes.append(size)
        ids.append(image_id)
        names.append(repr(str(path)))
    return DetectionSplit(split, paths, None, list(range(len(paths))), boxes, labels, sizes, ids, names)


def _is_id(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _short(value) -> str:
    text = json.dumps(value) if isinstance(value, (dict, list, str, int, float)) else type(value).__name__
    return text if len(text) <= 80 else text[:77] + "..."


# -- datasets folders ----------------------------------------------------------------------------------------
def _from_datasets(source, labels, source_name) -> tuple[dict[str, DetectionSplit], list[str]]:
    import datasets

    if isinstance(source, datasets.Dataset):
        source = datasets.DatasetDict({"train": source})
    found = {split: _find_split(source, split) for split in SPLIT_ALIASES}
    if found["train"] is None:
        if len(source) != 1:
            raise DataError(f"data {source_name}: expected a 'train' split, got splits {list(source)}")
        found["train"] = next(iter(source.values()))
    train = found["train"]
    image_columns = [n for n, f in train.features.items() if isinstance(f, datasets.Image)]
    image_column = next((c for c in IMAGE_COLUMNS if c in image_columns), None)
    if image_column is None:
        raise DataError(f"data {source_name}: expected an image column (one of {list(IMAGE_COLUMNS)}), got columns "
                        f"{list(train.column_names)}")
    objects_column = next((c for c in OBJECT_COLUMNS if c in train.column_names), None)
    if objects_column is None:
        raise DataError(f"data {source_name}: expected a column of boxes (one of {list(OBJECT_COLUMNS)}, each holding "
                        f"'bbox' [x, y, width, height] and 'category' per box), got columns {list(train.column_names)}")
    names = list(labels) if labels else _category_names(train.features[objects_column])
    splits = {}
    for split, dataset in found.items():
        if dataset is None:
            continue
        if len(dataset) == 0:
            raise DataError(f"data {source_name}[{split}]: the split is empty")
        splits[split] = _datasets_split(split, dataset, image_column, objects_column, source_name)
        own = _category_names(dataset.features.get(objects_column))
        if own is not None and names is not None and own != names:  # a split's named classes, matched by name
            ids = np.array(map_labels(own, {name: i for i, name in enumerate(names)}, f"data {source_name}[{split}]",
                                      "--labels" if labels else "the training split", error=DataError), dtype=np.int64)
            splits[split].labels = [_remapped(found_labels, ids) for found_labels in splits[split].labels]
    if names is None:  # integer categories without names: ids 0..max
        largest = max((int(l.max()) for s in splits.values() for l in s.labels if l.size), default=0)
        names = [str(i) for i in range(largest + 1)]
    return splits, list(names)


def _remapped(labels: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """`labels` through `ids`; an id outside the split's ClassLabel stays as it is (`_check_split` names it)."""
    inside = (labels >= 0) & (labels < len(ids))
    return np.where(inside, ids[np.where(inside, labels, 0)], labels).astype(np.int64)


def _category_names(feature) -> list[str] | None:
    """The ClassLabel names of the `category` of an objects feature (a dict of lists, or a list of dicts)."""
    import datasets

    inner = getattr(feature, "feature", feature)  # List({...}) -> {...}
    if not isinstance(inner, dict):
        return None
    key = next((k for k in CATEGORY_KEYS if k in inner), None)
    category = inner.get(key)
    category = getattr(category, "feature", category)  # List(ClassLabel) -> ClassLabel
    return list(category.names) if isinstance(category, datasets.ClassLabel) else None


def _datasets_split(split, dataset, image_column, objects_column, source_name) -> DetectionSplit:
    where = f"{source_name}[{split}]"
    boxes, labels, ids, names = [], [], [], []
    seen_ids, seen_objects = {}, {}
    has_image_id = "image_id" in dataset.column_names
    columns = [objects_column] + (["image_id"] if has_image_id else [])
    for index, example in enumerate(dataset.select_columns(columns)):
        name = f"{where}[{index}]"
        objects = _as_object_list(example[objects_column], name, objects_column)
        found_boxes, found_labels = [], []
        for position, item in enumerate(objects):
            box = next((item[k] for k in BOX_KEYS if k in item), None)
            category = next((item[k] for k in CATEGORY_KEYS if k in item), None)
            if not (isinstance(box, (list, tuple)) and len(box) == 4 and all(_is_finite(v) for v in box)):
                raise DataError(f"data {name}: {objects_column}[{position}]: expected bbox [x, y, width, height] of "
                                f"four finite numbers, got {box!r}")
            if not _is_id(category):
                raise DataError(f"data {name}: {objects_column}[{position}]: expected an integer category, got "
                                f"{category!r}")
            if "id" in item and item["id"] is not None:
                if item["id"] in seen_objects:
                    raise DataError(f"data {name}: {objects_column}[{position}] has id {item['id']}, which "
                                    f"{seen_objects[item['id']]} has too (box ids must be unique)")
                seen_objects[item["id"]] = f"{where}[{index}]"
            x, y, w, h = (float(v) for v in box)
            found_boxes.append((x, y, x + w, y + h))
            found_labels.append(int(category))
        image_id = example["image_id"] if has_image_id else index
        if has_image_id:
            if image_id in seen_ids:
                raise DataError(f"data {name}: image_id {image_id!r} is also the id of {where}[{seen_ids[image_id]}] "
                                f"(image ids must be unique)")
            seen_ids[image_id] = index
        boxes.append(np.array(found_boxes, dtype=np.float32).reshape(-1, 4))
        labels.append(np.array(found_labels, dtype=np.int64))
        ids.append(int(image_id) if _is_id(image_id) else index)
        names.append(name)
    count = len(dataset)
    # only the image column is read from here on (decoding a row decodes every column)
    return DetectionSplit(split, dataset.select_columns([image_column]), image_column, list(range(count)), boxes,
                          labels, [None] * count, ids, names)


def _as_object_list(value, name: str, column: str) -> list[dict]:
    """An example's objects as a list of dicts, from a dict of lists (datasets' Sequence of a dict) or a list."""
    if isinstance(value, dict):
        keys = list(value)
        lengths = {len(value[k]) for k in keys if isinstance(value[k], (list, tuple))}
        if len(lengths) > 1:
            raise DataError(f"data {name}: {column}: expected lists of one length per box, got lengths {sorted(lengths)}")
        count = lengths.pop() if lengths else 0
        return [{k: value[k][i] for k in keys} for i in range(count)]
    if isinstance(value, (list, tuple)) and all(isinstance(v, dict) for v in value):
        return list(value)
    raise DataError(f"data {name}: {column}: expected the boxes of the image (bbox and category per box), got "
                    f"{type(value).__name__}")


# ---------------------------------------------------------------------------------------------------------
# Labels: the data's classes -> the model's ids
# ---------------------------------------------------------------------------------------------------------
def label_ids_for(categories: list[str], label2id: dict[str, int]) -> np.ndarray | None:
    """The model id of each data class, by name, when the model's label set holds every one (None otherwise)."""
    if all(name in label2id for name in categories):
        return np.array([label2id[name] for name in categories], dtype=np.int64)
    return None


# ---------------------------------------------------------------------------------------------------------
# The torch Dataset and collator
# ---------------------------------------------------------------------------------------------------------
class DetectionDataset(torch.utils.data.Dataset):
    """A `DetectionSplit` as {"pixel_values", "labels"} for a detector.

    `labels` is the model's form (one dict per image): `class_labels` (K,) in 1..N, `boxes` (K, 4) normalised
    (cx, cy, w, h), plus `image_id` and `orig_size` (height, width) for the COCO evaluation. Training
    (`augmentation` given): ml-cvnets' SSD augmentation with the `SampleKey`'s seed and size; evaluation: the
    processor's resize to `size` (the family's preprocessing: a stretch, nothing cropped, boxes unchanged)."""

    takes_sample_keys = True  # MobileViTTrainer builds its batch sampler for it

    def __init__(self, split: DetectionSplit, model_ids: np.ndarray, processor, size: tuple[int, int],
                 augmentation=None):
        self.split, self.model_ids, self.processor = split, np.asarray(model_ids, dtype=np.int64), processor
        self.size, self.augmentation = tuple(size), augmentation

    def __len__(self) -> int:
        return len(self.split)

    @property
    def image_size(self) -> tuple[int, int]:
        return self.size

    def __getitem__(self, key):
        from .detection_transforms import normalised_center_boxes, resize_for_model

        size, seed = self.size, None
        if isinstance(key, SampleKey):
            size, seed, key = (key.height, key.width), key.seed, key.index
        index = int(key)
        pixels = self.split.image(index)
        boxes, labels = self.split.boxes[index], self.model_ids[self.split.labels[index]]
        if self.augmentation is not None:
            pixel_values, centre_boxes, class_labels = self.augmentation(pixels, boxes, labels, size=size, seed=seed)
        else:
            pixel_values = resize_for_model(self.processor, pixels, *size)
            centre_boxes = normalised_center_boxes(boxes, pixels.shape[0], pixels.shape[1])
            class_labels = torch.from_numpy(labels)
        return {"pixel_values": pixel_values,
                "labels": {"class_labels": class_labels, "boxes": centre_boxes,
                           "image_id": torch.tensor(self.split.image_ids[index]),
                           "orig_size": torch.tensor([pixels.shape[0], pixels.shape[1]])}}


def collate_detection(examples: list[dict]) -> dict:
    """A batch: `pixel_values` stacked (one size per batch), `labels` a list of one dict per image (boxes vary)."""
    return {"pixel_values": torch.stack([e["pixel_values"] for e in examples]),
            "labels": [e["labels"] for e in examples]}


def print_summary(data: DetectionData) -> None:
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"mobilevit train: {data.summary()}", file=sys.stderr, flush=True)


__all__ = ["DetectionData", "DetectionSplit", "DetectionDataset", "Fixes", "collate_detection",
           "prepare_detection_data", "find_coco_splits", "read_coco_json", "label_ids_for", "BACKGROUND"]
