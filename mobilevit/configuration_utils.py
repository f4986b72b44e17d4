"""Field checks every family's config runs when it is made (`MobileViTConfig.validate`, and the same for
other families): a wrong value fails on construction or on loading a `config.json`, with a `ValueError` that
names the field, what it expects and what came, instead of deep inside a model, or as a terabyte allocation.

Each check takes the config and a field name; families add only what is particular to their architecture.
"""

from __future__ import annotations

import math
import numbers

from transformers.activations import ACT2FN

# No width of a released MobileViT exceeds 640; this is 12x that. A larger width is almost certainly a typo,
# and would ask for many gigabytes before any error could show (hidden_sizes of 10**6: about 4 TB).
MAX_WIDTH = 8192
# The largest input side a config may state (image_size): the default preprocessing resizes to about that.
MAX_IMAGE_SIZE = 8192
# Patch sides that divide every MobileViT block's feature map (every release uses 2): feature maps halve from
# stage to stage (32, 16, 8 at 256 px), so any other size makes every block resize its map first, and one
# larger than the last stage's map leaves attention a single patch.
PATCH_SIZES = (1, 2, 4, 8)
# Ratios that multiply widths (released: 2 or 4); widths times these are widths too.
MAX_RATIO = 16


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a channel count to a multiple of `divisor` without losing more than 10% (MobileNetV2's rule)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def fail(config, field: str, expected: str):
    raise ValueError(f"{type(config).__name__}.{field}: expected {expected}, got {getattr(config, field)!r}")


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def check_int(config, field: str, minimum: int = 1, maximum: int | None = None) -> None:
    """An integer in [minimum, maximum]."""
    value = getattr(config, field)
    if is_int(value) and value >= minimum and (maximum is None or value <= maximum):
        return
    expected = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
    fail(config, field, expected + (f" of at most {maximum}" if maximum is not None else ""))


def check_int_list(config, field: str, length: int, maximum: int | None = None) -> None:
    """A list (or tuple) of `length` positive integers, each at most `maximum`."""
    value = getattr(config, field)
    expected = f"a list of {length} positive integers" + (f" of at most {maximum}" if maximum else "")
    if not isinstance(value, (list, tuple)) or len(value) != length:
        fail(config, field, expected)
    if not all(is_int(v) and 0 < v <= (maximum or v) for v in value):
        fail(config, field, expected)


def check_number(config, field: str, maximum: float | None = None) -> None:
    """A finite number above 0 and at most `maximum`."""
    value = getattr(config, field)
    if is_number(value) and value > 0 and (maximum is None or value <= maximum):
        return
    fail(config, field, "a positive number" + (f" of at most {maximum:g}" if maximum is not None else ""))


def check_probability(config, field: str) -> None:
    """A dropout probability in [0, 1)."""
    value = getattr(config, field)
    if not (is_number(value) and 0.0 <= value < 1.0):
        fail(config, field, "a probability in [0, 1)")


def check_activation(config, field: str, examples: str) -> None:
    """The name of one of transformers' activations (`ACT2FN`); `examples` shows the family's usual ones."""
    value = getattr(config, field)
    if not isinstance(value, str) or value not in ACT2FN:
        fail(config, field, f"an activation name such as {examples} (one of transformers' ACT2FN)")


def check_choice(config, field: str, choices) -> None:
    if getattr(config, field) not in choices:
        fail(config, field, "one of " + ", ".join(map(str, choices)))


def check_image_size(config, field: str = "image_size") -> None:
    """The training resolution: a positive int, or a [height, width] pair of them."""
    value = getattr(config, field)
    sides = list(value) if isinstance(value, (list, tuple)) else [value]
    if len(sides) not in (1, 2) or not all(is_int(v) and 0 < v <= MAX_IMAGE_SIZE for v in sides):
        fail(config, field, f"a positive integer (or a [height, width] pair) of at most {MAX_IMAGE_SIZE}")


def check_labels(config) -> None:
    """At least one class, with ids 0..N-1 (`num_labels` is the length of `id2label`)."""
    ids = sorted(config.id2label) if config.id2label is not None else []
    if not ids:
        raise ValueError(f"{type(config).__name__}.num_labels: expected at least 1 class, got {len(ids)} (id2label "
                         f"{config.id2label!r})")
    if ids != list(range(len(ids))):
        raise ValueError(f"{type(config).__name__}.id2label: expected class ids 0..{len(ids) - 1}, got {ids[:10]}")


def set_backbone_outputs(config, stage_names: list[str], kwargs: dict) -> None:
    """transformers' Backbone API fields of a family's config: `stage_names`, and `out_features` / `out_indices`
    taken out of `kwargs` (default: the last stage); a bad value is a ValueError naming the field."""
    kwargs.pop("stage_names", None)  # fixed by the architecture; a saved copy is not read back
    config.stage_names = list(stage_names)
    out_features, out_indices = kwargs.pop("out_features", None), kwargs.pop("out_indices", None)
    try:
        config.set_output_features_output_indices(out_features=out_features, out_indices=out_indices)
    except ValueError as err:
        field = "out_features" if out_features is not None else "out_indices"
        raise ValueError(f"{type(config).__name__}.{field}: expected names from {stage_names} (or their indices) in "
                         f"that order, got {out_features if out_features is not None else out_indices!r} ({err})"
                         ) from None


__all__ = ["set_backbone_outputs", "MAX_WIDTH", "MAX_IMAGE_SIZE", "PATCH_SIZES", "MAX_RATIO", "make_divisible", "fail", "is_int", "is_number", "check_int", "check_int_list",
           "check_number", "check_probability", "check_choice", "check_image_size", "check_labels"]
