"""Class names of the data sets the released MobileViT checkpoints were trained on.

`imagenet-1k.json` and `pascal-voc.json` are byte-for-byte the Hub's `huggingface/label-files`
`imagenet-1k-id2label.json` and `pascal-voc-id2label.json`, the lists embedded in the `apple/mobilevit-*` and
`apple/deeplabv3-mobilevit-*` configs, so a converted `config.json` carries the same `id2label` as the Hub's.
`ade20k.json` holds the 150 ADE20k (SceneParsing) classes with the names and order of the Hub's
`ade20k-id2label.json` and of ml-cvnets' ADE20k data set, whose class i + 1 is index i here: ml-cvnets v0.2
drops the background class (its labels are `mask - 1`), so its DeepLabV3 checkpoints have 150 outputs. A
checkpoint with 151 outputs (background kept, as transformers' converter assumes) gets "background" first.
`coco.json` holds the 80 COCO object classes in ml-cvnets' order (its class i + 1 is index i here: its SSD
checkpoints have a background class 0 and 81 outputs), and `coco-category-ids.json` the official COCO category id
of each (ml-cvnets maps its label i to the i-th smallest id when it writes COCO results; the ids have gaps).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from ..errors import UserError

LABELS_DIR = Path(__file__).resolve().parent


@lru_cache(maxsize=None)
def _read(filename: str) -> tuple[tuple[int, str], ...]:
    with open(LABELS_DIR / filename, encoding="utf-8") as f:
        raw = json.load(f)
    return tuple(sorted((int(key), name) for key, name in raw.items()))


def imagenet_1k_id2label() -> dict[int, str]:
    """The 1000 ImageNet-1k classes, index -> name (a fresh dict on every call)."""
    return dict(_read("imagenet-1k.json"))


def pascal_voc_id2label() -> dict[int, str]:
    """The 21 PASCAL VOC segmentation classes (0 = background), index -> name."""
    return dict(_read("pascal-voc.json"))


def ade20k_id2label() -> dict[int, str]:
    """The 150 ADE20k classes without background (0 = wall), as ml-cvnets v0.2's checkpoints predict them."""
    return dict(_read("ade20k.json"))


def ade20k_with_background_id2label() -> dict[int, str]:
    """The 150 ADE20k classes after a background class 0 (151 outputs)."""
    return {0: "background", **{index + 1: name for index, name in _read("ade20k.json")}}


def coco_id2label() -> dict[int, str]:
    """The 80 COCO object classes (0 = person ... 79 = toothbrush), as COCO 2017 names them."""
    return dict(_read("coco.json"))


def coco_with_background_id2label() -> dict[int, str]:
    """The 80 COCO classes after a background class 0 (81 outputs): ml-cvnets' SSD detectors."""
    return {0: "background", **{index + 1: name for index, name in _read("coco.json")}}


def coco_category_ids() -> dict[int, int]:
    """Index into `coco_id2label` -> the official COCO category id (1 ... 90, with gaps), for COCO result files."""
    return {index: int(category) for index, category in _read("coco-category-ids.json")}


# The data sets the released checkpoints of each task were trained on, and a reader of their class names.
KNOWN_LABEL_SETS = {
    "image-classification": {"imagenet-1k": imagenet_1k_id2label},
    "semantic-segmentation": {"pascal-voc": pascal_voc_id2label, "ade20k": ade20k_id2label,
                              "ade20k-with-background": ade20k_with_background_id2label},
    "object-detection": {"coco": coco_with_background_id2label},
}


def label_set_for(task: str, num_labels: int) -> tuple[dict[int, str], str | None]:
    """The class names of the known data set of `task` with `num_labels` classes, and the data set's name;
    generic names (LABEL_0, ...) and None when no known set has that many classes."""
    for dataset, read in KNOWN_LABEL_SETS.get(task, {}).items():
        id2label = read()
        if len(id2label) == num_labels:
            return id2label, dataset
    return {i: f"LABEL_{i}" for i in range(num_labels)}, None


def label2id(id2label: dict[int, str]) -> dict[str, int]:
    """The inverse mapping as transformers writes it: a name that appears twice (ImageNet has two
    "crane" classes, 134 the bird and 517 the machine) keeps its last index, as in the Hub's configs."""
    return {name: index for index, name in sorted(id2label.items())}


def map_labels(names, label2id: dict[str, int], source: str, target: str, error: type[UserError] = UserError
               ) -> list[int]:
    """The id under `label2id` (an existing model's, or a training split's) of each class name in `names` (a data
    split's classes, in its own id order). Every tool that reads labelled data against an existing label set
    maps through here (export --eval-data, train --resume and fine-tuning, a validation or test split against
    the training split), so class ids never come from a folder's own order. A class `label2id` lacks is a
    one-line `UserError` naming it: `source` is the data ("data 'x'[test]"), `target` what lacks it ("the
    model 'm'")."""
    missing = [name for name in names if name not in label2id]
    if missing:
        shown = ", ".join(map(repr, missing[:5])) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        known = ", ".join(map(repr, list(label2id)[:8])) + (", ..." if len(label2id) > 8 else "")
        raise error(f"{source}: holds the class{'es' if len(missing) > 1 else ''} {shown}, which {target} lacks "
                        f"(its classes: {known})")
    return [label2id[name] for name in names]


__all__ = ["map_labels", "imagenet_1k_id2label", "pascal_voc_id2label", "ade20k_id2label",
           "ade20k_with_background_id2label", "coco_id2label", "coco_with_background_id2label", "coco_category_ids",
           "label2id", "label_set_for", "KNOWN_LABEL_SETS"]
