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
divides unguarded, which gives NaN (0 / 0) for such a batch and is otherwise identical.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch.nn import functional as F

from .boxes import BoxCoder, box_iou, center_to_corners, corners_to_center

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
    num_positives: int
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
    with torch.no_grad():
        background_loss = -F.log_softmax(logits, dim=2)[:, :, BACKGROUND]
        mask = hard_negative_mask(background_loss, target_labels, negative_ratio)
    classification = F.cross_entropy(logits[mask, :].reshape(-1, logits.shape[-1]), target_labels[mask],
                                     reduction="sum")
    positive = target_labels > BACKGROUND
    predicted, targets = box_regression[positive, :].reshape(-1, 4), target_regression[positive, :].reshape(-1, 4)
    regression = F.smooth_l1_loss(predicted, targets, reduction="sum")
    num_positives = targets.shape[0]
    total = (regression + classification) / max(1, num_positives)
    return MultiboxLoss(total, classification, regression, num_positives, mask)


def check_labels(labels, batch: int, num_labels: int) -> None:
    """`labels` as transformers' detectors take them: one dict per image with `class_labels` (K,) integers in
    1 .. num_labels - 1 (0 is the background class) and `boxes` (K, 4) normalised (cx, cy, w, h)."""
    if not isinstance(labels, (list, tuple)) or len(labels) != batch:
        got = f"{type(labels).__name__} of length {len(labels)}" if isinstance(labels, (list, tuple)) else \
            type(labels).__name__
        raise ValueError(f"labels: expected a list of {batch} dicts (one per image) with 'class_labels' and 'boxes', "
                         f"got {got}")
    for i, target in enumerate(labels):
        if not isinstance(target, dict) or not {"class_labels", "boxes"} <= set(target):
            raise ValueError(f"labels[{i}]: expected a dict with 'class_labels' and 'boxes', got "
                             f"{sorted(target) if isinstance(target, dict) else type(target).__name__}")
        classes, boxes = target["class_labels"], target["boxes"]
        if not isinstance(classes, torch.Tensor) or classes.dim() != 1 or classes.is_floating_point():
            raise ValueError(f"labels[{i}]['class_labels']: expected a 1-D integer tensor, got "
                             f"{getattr(classes, 'dtype', type(classes).__name__)} of shape "
                             f"{tuple(getattr(classes, 'shape', ()))}")
        if not isinstance(boxes, torch.Tensor) or tuple(boxes.shape) != (len(classes), 4) or not boxes.is_floating_point():
            raise ValueError(f"labels[{i}]['boxes']: expected a float tensor of shape ({len(classes)}, 4), normalised "
                             f"(cx, cy, w, h), got {getattr(boxes, 'dtype', type(boxes).__name__)} of shape "
                             f"{tuple(getattr(boxes, 'shape', ()))}")
        bad = classes[(classes < 1) | (classes >= num_labels)]
        if bad.numel():
            raise ValueError(f"labels[{i}]['class_labels']: expected classes in [1, {num_labels - 1}] (0 is the "
                             f"background class), got {sorted(set(bad.tolist()))}")
        if boxes.numel() and not (torch.isfinite(boxes).all() and (boxes[:, 2:] >= 0).all()):
            raise ValueError(f"labels[{i}]['boxes']: expected finite (cx, cy, w, h) with w, h >= 0, got "
                             f"{boxes.tolist()[:3]}")


def detection_targets(labels, anchors: torch.Tensor, box_coder: BoxCoder, iou_threshold: float):
    """(B, N) target labels and (B, N, 4) regression targets of a batch of `labels` (see `check_labels`)."""
    targets = [match_anchors(center_to_corners(target["boxes"].to(anchors.device, anchors.dtype)),
                             target["class_labels"].to(anchors.device), anchors, box_coder, iou_threshold)
               for target in labels]
    return torch.stack([t[1] for t in targets]), torch.stack([t[0] for t in targets])


__all__ = ["match_anchors", "hard_negative_mask", "multibox_loss", "MultiboxLoss", "check_labels",
           "detection_targets", "MATCHER_IOU_EPS"]
