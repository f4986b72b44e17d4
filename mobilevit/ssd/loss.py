"""SSD's training targets and multibox loss, as ml-cvnets computes them (`SSDMatcher`, `SSDLoss`).

Matching, per image (`match_anchors`): IoU of every ground-truth box with every anchor (in corners, with
ml-cvnets' 1e-5 added to the denominator); each anchor takes its best box (the first on a tie); then each
box's best anchor is forced to that box (a later box wins an anchor two boxes share), so that every box has
at least one positive even when it is smaller than every anchor; anchors whose best IoU is below the
threshold (0.5) are background (label 0). Regression targets are the matched boxes encoded against their
anchors, also for the negatives (never used). An image without boxes matches a dummy box (0, 0, 0, 0) of
label 0, as ml-cvnets does: every anchor is background and the size targets are -inf (log 0).

Loss (`multibox_loss`): hard-negative mining keeps, per image, all positives and the `3 x positives`
negatives with the largest background loss (-log softmax of column 0); the cross-entropy over those and the
smooth-L1 (beta 1) of the positives' regressions are summed and divided by the number of positives in the
batch. The guard is ml-cvnets v0.2's `max(1, num_pos)`: a batch without any box gives a loss of 0. v0.1
divides unguarded, which gives NaN (0 / 0) for such a batch and is otherwise identical. In eager mode the
sums are ml-cvnets' own (bit-equal); under `torch.compile` they are taken with shapes fixed by the input
(`_masked_sums`), so that the loss is part of the model's one graph.

Labels come as boxes (transformers' form; matched here, in the forward) or matched to the anchors already by
`LabelMatcher` in the data pipeline, as ml-cvnets' loader does (one compiled graph per input size).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch.nn import functional as F

from .boxes import AnchorGenerator, BoxCoder, box_iou, center_to_corners, corners_to_center
from .modeling import GLOBAL_LEVEL

MATCHER_IOU_EPS = 1e-5  # ml-cvnets' box_iou
BACKGROUND = 0
FORCED_MATCH_IOU = 2.0  # above any IoU: a box's best anchor is positive whatever the threshold


def match_anchors(boxes: torch.Tensor, labels: torch.Tensor, anchors: torch.Tensor, box_coder: BoxCoder,
                  iou_threshold: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """One image's targets: `boxes` (K, 4) in corners (x1, y1, x2, y2) normalised, `labels` (K,) in 1..C,
    `anchors` (N, 4) (cx, cy, w, h) -> (regression targets (N, 4), labels (N,), 0 = background)."""
    if labels.numel() == 0:  # ml-cvnets: a dummy box of label 0
        boxes = torch.zeros((1, 4), dtype=anchors.dtype, device=anchors.device)
        labels = torch.zeros(1, dtype=torch.int64, device=anchors.device)
    boxes = boxes.to(anchors.dtype)
    ious = box_iou(boxes[None, :, :], center_to_corners(anchors)[:, None, :], eps=MATCHER_IOU_EPS)  # (N, K)
    best_iou, best_box = ious.max(dim=1)
    best_anchor = ious.argmax(dim=0)  # (K,)
    # each box's best anchor goes to that box; where boxes share one, the later box wins (ml-cvnets' loop order)
    box_index = torch.arange(len(labels), device=anchors.device)
    forced = torch.full_like(best_box, -1).scatter_reduce(0, best_anchor, box_index, reduce="amax")
    is_forced = forced >= 0
    best_box = torch.where(is_forced, forced, best_box)
    best_iou = best_iou.masked_fill(is_forced, FORCED_MATCH_IOU)
    target_labels = labels[best_box].masked_fill(best_iou < iou_threshold, BACKGROUND)
    target_regression = box_coder.encode(corners_to_center(boxes[best_box]), anchors)
    return target_regression, target_labels


class MultiboxLoss(NamedTuple):
    total: torch.Tensor  # (regression + classification) / max(1, num_positives)
    classification: torch.Tensor  # cross-entropy summed over positives and mined negatives
    regression: torch.Tensor  # smooth-L1 summed over the positives
    num_positives: torch.Tensor  # 0-d integer tensor (a tensor, so that a compiled graph needs no sync)
    mask: torch.Tensor  # (B, N) anchors in the classification loss: positives and mined negatives


def hard_negative_mask(background_loss: torch.Tensor, target_labels: torch.Tensor, negative_ratio: int) -> torch.Tensor:
    """(B, N) positives plus, per image, the `negative_ratio x positives` negatives with the largest background
    loss; ml-cvnets' two sorts (rank < k), so ties resolve as they do there."""
    positive = target_labels > BACKGROUND
    num_negatives = positive.sum(dim=1, keepdim=True) * negative_ratio
    loss = background_loss.masked_fill(positive, -torch.inf)
    order = loss.sort(dim=1, descending=True).indices
    rank = order.sort(dim=1).indices
    return positive | (rank < num_negatives)


def multibox_loss(logits: torch.Tensor, box_regression: torch.Tensor, target_labels: torch.Tensor,
                  target_regression: torch.Tensor, negative_ratio: int = 3) -> MultiboxLoss:
    """ml-cvnets' `SSDLoss` on (B, N, C) logits and (B, N, 4) regressions against (B, N) / (B, N, 4) targets."""
    log_probs = F.log_softmax(logits, dim=2)
    mask = hard_negative_mask(-log_probs[:, :, BACKGROUND].detach(), target_labels, negative_ratio)
    positive = target_labels > BACKGROUND
    sums = _masked_sums if torch.compiler.is_compiling() else _selected_sums
    classification, regression = sums(logits, log_probs, box_regression, target_labels, target_regression, mask,
                                      positive)
    num_positives = positive.sum()
    total = (regression + classification) / num_positives.clamp(min=1)
    return MultiboxLoss(total, classification, regression, num_positives, mask)


def _selected_sums(logits, log_probs, box_regression, target_labels, target_regression, mask, positive):
    """ml-cvnets' sums over the selected anchors (`logits[mask]`), bit-equal to its loss; eager mode."""
    classification = F.cross_entropy(logits[mask, :].reshape(-1, logits.shape[-1]), target_labels[mask],
                                     reduction="sum")
    regression = F.smooth_l1_loss(box_regression[positive, :].reshape(-1, 4),
                                  target_regression[positive, :].reshape(-1, 4), reduction="sum")
    return classification, regression


def _masked_sums(logits, log_probs, box_regression, target_labels, target_regression, mask, positive):
    """The same sums with shapes fixed by the input, for `torch.compile` (selecting anchors gives sizes that
    depend on the data, which a full graph cannot hold): every anchor's term, the unselected ones zeroed
    (`torch.where`, so the -inf size targets of an image without boxes reach no sum and no gradient). The same
    terms and gradients summed in another order: within 1e-6 relative of ml-cvnets', not bit-equal."""
    cross_entropy = -log_probs.gather(2, target_labels.unsqueeze(2)).squeeze(2)
    classification = torch.where(mask, cross_entropy, 0.0).sum()
    positive = positive.unsqueeze(2)
    smooth_l1 = F.smooth_l1_loss(box_regression, torch.where(positive, target_regression, 0.0), reduction="none")
    return classification, torch.where(positive, smooth_l1, 0.0).sum()


BOX_KEYS = ("class_labels", "boxes")  # transformers' form: the boxes of each image
MATCHED_KEYS = ("anchor_labels", "anchor_targets")  # matched to the anchors already (`LabelMatcher`)


def check_labels(labels, batch: int | None, num_labels: int) -> None:
    """`labels`, one dict per image (`batch` of them; None: any number), in either form the detector takes:

    - as transformers' detectors take them: `class_labels` (K,) integers in 1 .. num_labels - 1 (0 is the
      background class) and `boxes` (K, 4) normalised (cx, cy, w, h);
    - matched to the anchors already (`LabelMatcher`): `anchor_labels` (N,) integers in 0 .. num_labels - 1
      (0: background) and `anchor_targets` (N, 4), the encoded regression targets; the same N in every image.

    The checks of values (class range, finite boxes) run in eager mode only: under `torch.compile` they would
    branch on the data, which a graph cannot (the structure, shapes and dtypes are checked there too)."""
    expected = "dicts (one per image) with 'class_labels' and 'boxes', or with 'anchor_labels' and 'anchor_targets'"
    if not isinstance(labels, (list, tuple)) or batch is not None and len(labels) != batch:
        got = f"{type(labels).__name__} of length {len(labels)}" if isinstance(labels, (list, tuple)) else \
            type(labels).__name__
        raise ValueError(f"labels: expected a list of {'' if batch is None else f'{batch} '}{expected}, got {got}")
    matched = bool(labels) and isinstance(labels[0], dict) and MATCHED_KEYS[0] in labels[0]
    keys = MATCHED_KEYS if matched else BOX_KEYS
    for i, target in enumerate(labels):
        if not isinstance(target, dict) or not set(keys) <= set(target):
            raise ValueError(f"labels[{i}]: expected a dict with {' and '.join(map(repr, keys))} (as labels[0]), "
                             f"got {sorted(target) if isinstance(target, dict) else type(target).__name__}")
        classes, boxes = (target[key] for key in keys)
        if not isinstance(classes, torch.Tensor) or classes.dim() != 1 or classes.is_floating_point():
            raise ValueError(f"labels[{i}][{keys[0]!r}]: expected a 1-D integer tensor, got "
                             f"{getattr(classes, 'dtype', type(classes).__name__)} of shape "
                             f"{tuple(getattr(classes, 'shape', ()))}")
        if matched and len(classes) != len(labels[0][keys[0]]):
            raise ValueError(f"labels[{i}][{keys[0]!r}]: expected {len(labels[0][keys[0]])} anchors (as labels[0]), "
                             f"got {len(classes)}")
        if not isinstance(boxes, torch.Tensor) or tuple(boxes.shape) != (len(classes), 4) or not boxes.is_floating_point():
            what = "encoded regression targets" if matched else "normalised (cx, cy, w, h)"
            raise ValueError(f"labels[{i}][{keys[1]!r}]: expected a float tensor of shape ({len(classes)}, 4), {what}, "
                             f"got {getattr(boxes, 'dtype', type(boxes).__name__)} of shape "
                             f"{tuple(getattr(boxes, 'shape', ()))}")
        if torch.compiler.is_compiling():
            continue
        lowest = BACKGROUND if matched else BACKGROUND + 1
        bad = classes[(classes < lowest) | (classes >= num_labels)]
        if bad.numel():
            background = "" if matched else " (0 is the background class)"
            raise ValueError(f"labels[{i}][{keys[0]!r}]: expected classes in [{lowest}, {num_labels - 1}]{background}, "
                             f"got {sorted(set(bad.tolist()))}")
        if not matched and boxes.numel() and not (torch.isfinite(boxes).all() and (boxes[:, 2:] >= 0).all()):
            raise ValueError(f"labels[{i}]['boxes']: expected finite (cx, cy, w, h) with w, h >= 0, got "
                             f"{boxes.tolist()[:3]}")


def detection_targets(labels, anchors: torch.Tensor, box_coder: BoxCoder, iou_threshold: float):
    """(B, N) target labels and (B, N, 4) regression targets of a batch of `labels` (see `check_labels`): matched
    here, or stacked where they come matched (then N must be the model's anchors at this input size)."""
    if MATCHED_KEYS[0] in labels[0]:
        count = labels[0][MATCHED_KEYS[0]].shape[0]
        if count != anchors.shape[0]:
            raise ValueError(f"labels: expected 'anchor_labels' matched to this input's {anchors.shape[0]} anchors, "
                             f"got {count} (match them for the input size the model is given)")
        return (torch.stack([target[MATCHED_KEYS[0]] for target in labels]).to(anchors.device),
                torch.stack([target[MATCHED_KEYS[1]] for target in labels]).to(anchors.device, anchors.dtype))
    targets = [match_anchors(center_to_corners(target["boxes"].to(anchors.device, anchors.dtype)),
                             target["class_labels"].to(anchors.device), anchors, box_coder, iou_threshold)
               for target in labels]
    return torch.stack([t[1] for t in targets]), torch.stack([t[0] for t in targets])


class LabelMatcher:
    """A detector's anchor matching as a step of the data pipeline, where ml-cvnets does it (its SSD dataset
    matches every image in the loader's workers): `LabelMatcher(config)(labels, (height, width))` gives the
    labels matched to the anchors of an input of that size, a dict per image with `anchor_labels` (N,) and
    `anchor_targets` (N, 4), which the detector takes as `labels` in place of the boxes: the same targets, the
    same loss.

    What it is for: a compiled model (`torch.compile`) guards on the shape of every tensor it is given, and boxes
    come K to an image, so every new combination of box counts in a batch compiles a new graph (Dynamo treats
    sizes 0 and 1 apart, so dynamic shapes do not help). Matched labels have the anchors' shape, fixed by the input
    size: one graph per input size. Small and picklable (DataLoader workers); built from a detector's config."""

    def __init__(self, config) -> None:
        self.anchor_generator = AnchorGenerator.from_config(config)
        self.box_coder = BoxCoder.from_config(config)
        self.output_strides = tuple(config.ssd_output_strides)
        self.iou_threshold = config.ssd_matcher_iou_threshold
        self.num_labels = config.num_labels

    def level_sizes(self, height: int, width: int) -> list[tuple[int, int]]:
        """ml-cvnets' rule for its training anchors: `ceil(side / stride)` per level, 1x1 for the global one. These
        are the model's own maps at every size for MobileViT v1, and for MobileViTv2 where both sides are multiples
        of 64 (320, the released size, is): its blocks pad an odd map to whole patches and do not resize it back.
        The detector refuses labels matched to another number of anchors than its own, in one line."""
        return [(1, 1) if stride == GLOBAL_LEVEL else (-(-height // stride), -(-width // stride))
                for stride in self.output_strides]

    def __call__(self, labels, image_size: tuple[int, int]) -> list[dict[str, torch.Tensor]]:
        """`labels` in transformers' form (one dict per image, see `check_labels`) for inputs of `image_size`
        (height, width) -> one dict per image with `anchor_labels` and `anchor_targets`."""
        if not (isinstance(image_size, (tuple, list)) and len(image_size) == 2
                and all(isinstance(side, int) and side >= 32 for side in image_size)):
            raise ValueError(f"image_size: expected (height, width), integers >= 32, got {image_size!r}")
        check_labels(labels, None, self.num_labels)
        if labels and MATCHED_KEYS[0] in labels[0]:
            raise ValueError("labels: expected 'class_labels' and 'boxes' to match, got labels matched already")
        anchors = self.anchor_generator(self.level_sizes(*image_size))
        if not labels:
            return []
        target_labels, target_regression = detection_targets(labels, anchors, self.box_coder, self.iou_threshold)
        return [{MATCHED_KEYS[0]: classes, MATCHED_KEYS[1]: regression}
                for classes, regression in zip(target_labels, target_regression)]


__all__ = ["match_anchors", "hard_negative_mask", "multibox_loss", "MultiboxLoss", "check_labels",
           "detection_targets", "LabelMatcher", "MATCHER_IOU_EPS", "BOX_KEYS", "MATCHED_KEYS"]
