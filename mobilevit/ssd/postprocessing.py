"""From SSD scores and boxes to detections: thresholds, per-class candidates, class-wise NMS, caps.

The two ml-cvnets releases post-process differently, and each detector is evaluated by its own release's rule
(a `PostProcessing`, saved in the folder's `preprocessor_config.json` as `detection_postprocessing`):

| | MobileViT v1 (cvnets-v0.1 `predict`) | MobileViTv2 (cvnets-v0.2) |
|---|---|---|
| score threshold | 0.05 | 0.01 |
| candidates per class before NMS | all | the top 400 |
| NMS | per class, IoU > 0.5 | per class (`batched_nms`), IoU > 0.5 |
| cap | 200 per class, none per image | 200 per image |
| order | by class, then score | by score |

Scores are the softmax over all classes (background included); the background column is then dropped. A
class's candidates are its scores strictly above the threshold; its top k are the first k in decreasing score
with ties in anchor order (ml-cvnets' `torch.topk` leaves the order of ties open; the fixtures have none at
the cut). NMS is greedy in decreasing score (ties in anchor order, as a stable sort keeps them) and suppresses
a later box whose IoU with a kept one is strictly above the threshold, the IoU in float32 without eps compared
in float64: torchvision's CPU kernel, exactly.

`class_wise_nms` is that greedy NMS for every class at once, in plain torch (no torchvision): the IoUs of only
the same-class pairs that can overlap enough (found by sorting the left edges), then the greedy choice as the
fixed point of "kept = not suppressed by a kept box before it", reached after as many rounds as the longest
chain of suppressions (each round settles at least one more box), each round one tensor operation over the
pairs. torchvision's `batched_nms` also does per-class NMS for more than 1000 boxes, and for fewer shifts
every class's boxes apart and runs one NMS: that differs from per-class NMS in rare float-rounding cases
(ml-cvnets' fixtures: 1-8 boxes ranked below the 200 kept). Per class is what the shift approximates, so it is
used throughout.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from ..limits import MAX_RESULTS_PER_IMAGE
from .boxes import box_iou

# the margins by which the search for overlapping pairs widens its bound (float rounding of the IoU's terms)
RELATIVE_MARGIN, ABSOLUTE_MARGIN = 1e-4, 1e-6
ORDERS = ("class", "score")
# with a cap per image, NMS first looks at the best max(PREFIX_MIN, PREFIX_FACTOR x cap) candidates
PREFIX_MIN, PREFIX_FACTOR = 256, 4


@dataclass(frozen=True)
class PostProcessing:
    """How detections are chosen from scores and boxes (see the module's table)."""

    score_threshold: float = 0.05
    nms_iou_threshold: float = 0.5
    candidates_per_class: int | None = None  # top-k of a class's candidates before NMS (None: all)
    detections_per_class: int | None = 200  # kept after NMS per class (None: all)
    detections_per_image: int | None = None  # kept per image, best first (None: all)
    order: str = "class"  # "class": by class id then score (ml-cvnets v0.1); "score": by score over all classes

    def __post_init__(self):
        for name in ("score_threshold", "nms_iou_threshold"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"detection_postprocessing.{name}: expected a number in [0, 1], got {value!r}")
        for name in ("candidates_per_class", "detections_per_class", "detections_per_image"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or
                                      not 1 <= value <= MAX_RESULTS_PER_IMAGE):
                raise ValueError(f"detection_postprocessing.{name}: expected an integer from 1 to "
                                 f"{MAX_RESULTS_PER_IMAGE} (mobilevit.limits) or null, got {value!r}")
        if self.order not in ORDERS:
            raise ValueError(f"detection_postprocessing.order: expected one of {list(ORDERS)}, got {self.order!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values) -> "PostProcessing":
        if isinstance(values, PostProcessing):
            return values
        if not isinstance(values, dict):
            raise ValueError(f"detection_postprocessing: expected a dict of settings, got {values!r}")
        unknown = sorted(set(values) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"detection_postprocessing: unknown settings {unknown}; expected some of "
                             f"{list(cls.__dataclass_fields__)}")
        return cls(**values)


# ml-cvnets' evaluation rules of its two releases (README of shared/fixtures/mlcvnets_ssd, "Post-processing")
MLCVNETS_V01 = PostProcessing(score_threshold=0.05, nms_iou_threshold=0.5, candidates_per_class=None,
                              detections_per_class=200, detections_per_image=None, order="class")
MLCVNETS_V02 = PostProcessing(score_threshold=0.01, nms_iou_threshold=0.5, candidates_per_class=400,
                              detections_per_class=None, detections_per_image=200, order="score")


def float32_strictly_above(threshold: float) -> float:
    """The float32 number t with `x > t` <=> `x > threshold` for every float32 x (the comparison in float64 that
    torchvision's kernel makes, done in float32): the largest float32 not above `threshold`."""
    value = np.float32(threshold)
    if float(value) > threshold:
        value = np.nextafter(value, np.float32(-np.inf))
    return float(value)


def class_wise_nms(boxes: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy NMS within each class. `boxes` (M, 4) corners, `scores` (M,), `classes` (M,) integers, sorted so
    that each class's candidates are contiguous and in decreasing score (earlier = better). Returns a (M,)
    bool: kept.

    Only pairs that can overlap by more than the threshold are looked at: IoU > t needs an overlap of more
    than t times the larger width (and height), so after sorting a class's boxes by their left edge, box i
    can only pair with the boxes whose left edge lies less than (1 - t) w_i to its right (with a margin for
    rounding); of those pairs, the ones whose top edges are as close get their exact IoU."""
    count = len(scores)
    if count == 0:
        return torch.zeros(0, dtype=torch.bool, device=scores.device)
    source, target = _overlapping_pairs(boxes, classes, iou_threshold)
    iou = box_iou(boxes[source], boxes[target])
    above = iou > float32_strictly_above(iou_threshold)
    # i suppresses j: the better-scored (earlier) box of each overlapping pair suppresses the other
    better, worse = torch.minimum(source, target)[above], torch.maximum(source, target)[above]
    return _greedy_fixed_point(better, worse, count)


def _overlapping_pairs(boxes: torch.Tensor, classes: torch.Tensor, iou_threshold: float):
    """Index pairs (a, b) of same-class boxes that may have an IoU above `iou_threshold` (a superset of them)."""
    count = len(classes)
    slack = 1.0 - iou_threshold
    left, top = boxes[:, 0].double(), boxes[:, 1].double()
    width, height = (boxes[:, 2] - boxes[:, 0]).double(), (boxes[:, 3] - boxes[:, 1]).double()
    # sorted by class, then left edge; keys are exact integers: class * count + the left edge's global rank
    by_left = torch.sort(left, stable=True).indices
    left_rank = torch.empty_like(by_left)
    left_rank[by_left] = torch.arange(count, device=boxes.device)
    keys = classes.long() * count + left_rank
    order = torch.sort(keys).indices
    sorted_keys = keys[order]
    # box i pairs with the boxes after it in this order whose left edge is below left_i + slack * width_i
    reach = left + slack * width * (1 + RELATIVE_MARGIN) + ABSOLUTE_MARGIN
    reach_rank = torch.searchsorted(left[by_left].contiguous(), reach, right=False)
    stop = torch.searchsorted(sorted_keys, classes.long() * count + reach_rank, right=False)
    position = torch.empty_like(order)
    position[order] = torch.arange(count, device=boxes.device)
    start = position + 1
    lengths = (stop - start).clamp(min=0)
    first = torch.repeat_interleave(torch.arange(count, device=boxes.device), lengths)
    offsets = torch.arange(int(lengths.sum()), device=boxes.device) - torch.repeat_interleave(
        torch.cumsum(lengths, 0) - lengths, lengths)
    second = order[torch.repeat_interleave(start, lengths) + offsets]
    # the same bound on the top edges
    close = (top[first] - top[second]).abs() < slack * torch.maximum(height[first], height[second]) * (
        1 + RELATIVE_MARGIN) + ABSOLUTE_MARGIN
    return first[close], second[close]


def _greedy_fixed_point(better: torch.Tensor, worse: torch.Tensor, count: int) -> torch.Tensor:
    """Greedy keep of `count` boxes from the edges "better[e] suppresses worse[e]" (better before worse). Box j is
    kept iff no kept box before it suppresses it: iterate that rule from "all kept"; after round r the first r
    boxes are settled, and the first round that changes nothing is the fixed point (the greedy answer). It
    comes after as many rounds as the longest chain of suppressions, a handful in practice."""
    keep = torch.ones(count, dtype=torch.bool, device=better.device)
    while True:
        suppressed = torch.zeros_like(keep)
        suppressed[worse[keep[better]]] = True
        updated = ~suppressed
        if torch.equal(updated, keep):
            return keep
        keep = updated


def select_detections(scores: torch.Tensor, boxes: torch.Tensor, rule: PostProcessing,
                      score_threshold: float | None = None, max_detections: int | None = None):
    """One image's detections: `scores` (N, C) softmax probabilities of the object classes 1..C (background
    column dropped), `boxes` (N, 4) corners. Returns (boxes (K, 4), scores (K,), labels (K,) in 1..C) in the
    rule's order. `score_threshold` and `max_detections` replace the rule's threshold and per-image cap.

    With a cap per image, only the best-scored candidates need NMS: whether a box is kept (and its rank in its
    class) depends only on the boxes of its class scored above it, so the candidates scoring at least as much
    as the P-th best (over all classes) decide their own fate exactly, and once `cap` of them are chosen the
    rest cannot enter. P starts at a few times the cap and doubles while too few are chosen."""
    threshold = rule.score_threshold if score_threshold is None else score_threshold
    cap = rule.detections_per_image if max_detections is None else max_detections
    anchor, class_index = (scores > threshold).nonzero(as_tuple=True)  # anchor-major
    candidate_scores = scores[anchor, class_index]
    count = len(candidate_scores)
    seen = count if cap is None else min(count, max(PREFIX_MIN, PREFIX_FACTOR * cap))
    while True:
        if seen < count:  # the best `seen`, and every candidate tied with the last of them
            best = (candidate_scores >= candidate_scores.topk(seen).values[-1]).nonzero(as_tuple=True)[0]
        else:
            best = torch.arange(count, device=scores.device)
        chosen = _choose(best, anchor, class_index, candidate_scores, boxes, rule)
        if seen >= count or len(chosen) >= cap:
            break
        seen = min(count, 2 * seen)
    if rule.order == "score" or cap is not None:
        by_score = torch.sort(candidate_scores[chosen], descending=True, stable=True).indices[:cap]
        # "class": the best `cap` over all classes, listed class by class as before
        chosen = chosen[by_score] if rule.order == "score" else chosen[by_score.sort().values]
    return boxes[anchor[chosen]], candidate_scores[chosen], class_index[chosen] + 1


def _choose(candidates: torch.Tensor, anchor: torch.Tensor, class_index: torch.Tensor, scores: torch.Tensor,
            boxes: torch.Tensor, rule: PostProcessing) -> torch.Tensor:
    """The `candidates` (indices, anchor-major) that the rule keeps: each class's top k, NMS, the cap per class;
    returned class by class, in decreasing score within a class (ties in anchor order)."""
    # one stable sort of class - score (exact in float64: scores are float32 in [0, 1])
    key = class_index[candidates].double() * 2 - scores[candidates].double()
    candidates = candidates[torch.sort(key, stable=True).indices]
    if rule.candidates_per_class is not None:
        candidates = candidates[_rank_within_class(class_index[candidates]) < rule.candidates_per_class]
    kept = class_wise_nms(boxes[anchor[candidates]], scores[candidates], class_index[candidates],
                          rule.nms_iou_threshold)
    candidates = candidates[kept]
    if rule.detections_per_class is not None:
        candidates = candidates[_rank_within_class(class_index[candidates]) < rule.detections_per_class]
    return candidates


def _rank_within_class(class_index: torch.Tensor) -> torch.Tensor:
    """Position of each entry among the entries of its class (entries of a class are contiguous)."""
    if class_index.numel() == 0:
        return class_index
    _, sizes = torch.unique_consecutive(class_index, return_counts=True)
    starts = torch.cumsum(sizes, 0) - sizes
    return torch.arange(len(class_index), device=class_index.device) - torch.repeat_interleave(starts, sizes)


__all__ = ["PostProcessing", "MLCVNETS_V01", "MLCVNETS_V02", "class_wise_nms", "select_detections",
           "float32_strictly_above"]
