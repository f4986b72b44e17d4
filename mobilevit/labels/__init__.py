"""Class names of the data sets the released MobileViT checkpoints were trained on.

The JSON files are byte-for-byte the Hub's `huggingface/label-files` `imagenet-1k-id2label.json` and
`pascal-voc-id2label.json`, the lists embedded in the `apple/mobilevit-*` and `apple/deeplabv3-mobilevit-*`
configs, so a converted `config.json` carries the same `id2label` as the Hub's.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

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


def label2id(id2label: dict[int, str]) -> dict[str, int]:
    """The inverse mapping as transformers writes it: a name that appears twice (ImageNet has two
    "crane" classes, 134 the bird and 517 the machine) keeps its last index, as in the Hub's configs."""
    return {name: index for index, name in sorted(id2label.items())}


__all__ = ["imagenet_1k_id2label", "pascal_voc_id2label", "label2id"]
