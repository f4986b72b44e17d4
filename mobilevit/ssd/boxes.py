"""Boxes of the SSD detector: the anchors (priors), the box coder, corner/centre conversions and IoU.

Every formula is ml-cvnets' own, evaluated in the same order in float32, so that anchors and decoded boxes
come out bit for bit equal to ml-cvnets' (`shared/fixtures/mlcvnets_ssd/README.md`, "Anchors" and
"Box coder"). Boxes are normalised to the image (0..1) throughout; two forms are used:

- centre-size `(cx, cy, w, h)`: anchors, the model's `pred_boxes`, training targets (transformers' DETR
  convention for `pred_boxes` and for the boxes of `labels`);
- corners `(x1, y1, x2, y2)`: IoU, NMS and the post-processed detections.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def center_to_corners(boxes: torch.Tensor) -> torch.Tensor:
    """(cx, cy, w, h) -> (x1, y1, x2, y2), ml-cvnets' `center_form_to_corner_form`."""
    centers, sizes = boxes[..., :2], boxes[..., 2:]
    return torch.cat((centers - sizes / 2, centers + sizes / 2), dim=-1)


def corners_to_center(boxes: torch.Tensor) -> torch.Tensor:
    """(x1, y1, x2, y2) -> (cx, cy, w, h), ml-cvnets' `corner_form_to_center_form`."""
    top_left, bottom_right = boxes[..., :2], boxes[..., 2:]
    return torch.cat(((top_left + bottom_right) / 2, bottom_right - top_left), dim=-1)


def box_iou(boxes: torch.Tensor, others: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """IoU of corner boxes, broadcast over the leading axes: `boxes` (..., 4) against `others` (..., 4).
    `eps` is added to the denominator (ml-cvnets' matcher adds 1e-5; NMS adds nothing)."""
    top_left = torch.max(boxes[..., :2], others[..., :2])
    bottom_right = torch.min(boxes[..., 2:], others[..., 2:])
    overlap = (bottom_right - top_left).clamp(min=0.0)
    inter = overlap[..., 0] * overlap[..., 1]
    area = (boxes[..., 2] - boxes[..., 0]).clamp(min=0.0) * (boxes[..., 3] - boxes[..., 1]).clamp(min=0.0)
    other_area = (others[..., 2] - others[..., 0]).clamp(min=0.0) * (others[..., 3] - others[..., 1]).clamp(min=0.0)
    return inter / (area + other_area - inter + eps)


@dataclass(frozen=True)
class BoxCoder:
    """Regressions in variance units <-> boxes, relative to the anchors (SSD's encoding):
    `cx = dcx * cv * w_a + cx_a`, `w = exp(dw * sv) * w_a` and the inverse. No clamping before `exp`."""

    center_variance: float = 0.1
    size_variance: float = 0.2

    @classmethod
    def from_config(cls, config) -> BoxCoder:
        return cls(config.ssd_center_variance, config.ssd_size_variance)

    def decode(self, regression: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """(..., N, 4) regressions (dcx, dcy, dw, dh) and (N, 4) anchors -> (..., N, 4) boxes (cx, cy, w, h)."""
        sizes = torch.exp(regression[..., 2:] * self.size_variance) * anchors[..., 2:]
        centers = regression[..., :2] * self.center_variance * anchors[..., 2:] + anchors[..., :2]
        return torch.cat((centers, sizes), dim=-1)

    def encode(self, boxes: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """(..., N, 4) boxes (cx, cy, w, h) -> regressions against (N, 4) anchors; a box of zero size gives
        -inf size targets (ml-cvnets' empty-image targets, never used since only positives are regressed)."""
        centers = (boxes[..., :2] - anchors[..., :2]) / anchors[..., 2:] / self.center_variance
        sizes = torch.log(boxes[..., 2:] / anchors[..., 2:]) / self.size_variance
        return torch.cat((centers, sizes), dim=-1)


class AnchorGenerator:
    """SSD's anchors for a pyramid of feature maps, in ml-cvnets' order and arithmetic.

    Level k has scale `s_k` (`numpy.linspace(min_scale, max_scale, levels + 1)`) and `s'_k = sqrt(s_k s_k+1)`.
    Per location: `(s_k, s_k)`, `(s'_k, s'_k)`, then for each aspect ratio r (de-duplicated and sorted, as
    ml-cvnets' `set()` gives them): `(s_k sqrt(r), s_k / sqrt(r))` and `(s_k / sqrt(r), s_k sqrt(r))`.
    Locations row-major, centres `((x + 0.5) / W, (y + 0.5) / H)`; everything clamped to [0, 1] in
    centre-size form (a width above 1 becomes 1; the box is not clipped to the image). Levels follow each
    other in pyramid order; inside a level the index is `(y * W + x) * A + a`, the heads' output order.

    The sizes are Python floats computed in float64 and rounded once to float32, as ml-cvnets'
    `torch.tensor(list_of_floats)` does; the centres are computed in float32, which gives the same bits for
    maps of up to 2048 cells a side (checked exhaustively)."""

    def __init__(self, aspect_ratios, min_scale: float = 0.1, max_scale: float = 1.05) -> None:
        scales = np.linspace(min_scale, max_scale, len(aspect_ratios) + 1)
        self.shapes: list[list[tuple[float, float]]] = []  # per level, per anchor: (w, h)
        for level, ratios in enumerate(aspect_ratios):
            small, large = float(scales[level]), float((scales[level] * scales[level + 1]) ** 0.5)
            shapes = [(small, small), (large, large)]
            for ratio in sorted(set(ratios)):
                root = ratio ** 0.5
                shapes += [(small * root, small / root), (small / root, small * root)]
            self.shapes.append(shapes)

    @classmethod
    def from_config(cls, config) -> AnchorGenerator:
        return cls(config.ssd_aspect_ratios, config.ssd_min_scale, config.ssd_max_scale)

    @property
    def anchors_per_location(self) -> list[int]:
        return [len(shapes) for shapes in self.shapes]

    def num_anchors(self, level_sizes) -> int:
        return sum(h * w * a for (h, w), a in zip(level_sizes, self.anchors_per_location))

    def constant(self, level_sizes, device=None) -> torch.Tensor:
        """The same anchors as `__call__`, built from Python numbers: inside a traced graph (an export for one
        input size) they are one constant tensor rather than operations. Each value is computed in float64 and
        rounded once to float32, which equals `__call__`'s float32 arithmetic (see the class doc)."""
        rows = []
        for (height, width), shapes in zip(level_sizes, self.shapes):
            clamped = [(min(max(w, 0.0), 1.0), min(max(h, 0.0), 1.0)) for w, h in shapes]
            rows += [((x + 0.5) / width, (y + 0.5) / height, w, h)
                     for y in range(height) for x in range(width) for w, h in clamped]
        return torch.tensor(rows, dtype=torch.float32, device=device).reshape(-1, 4)

    def __call__(self, level_sizes, device=None) -> torch.Tensor:
        """(N, 4) anchors (cx, cy, w, h) for feature maps of `level_sizes` [(height, width), ...]. Sizes may be
        symbolic (an export for every input size): everything is tensor arithmetic on them."""
        levels = []
        for (height, width), shapes in zip(level_sizes, self.shapes):
            ys = (torch.arange(height, dtype=torch.float32, device=device) + 0.5) / height
            xs = (torch.arange(width, dtype=torch.float32, device=device) + 0.5) / width
            centers = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1).reshape(-1, 1, 2)  # (H*W, 1, 2)
            sizes = torch.tensor(shapes, dtype=torch.float32, device=device)  # (A, 2), rounded once from float64
            count = centers.shape[0]
            anchors = torch.cat((centers.expand(count, len(shapes), 2), sizes.expand(count, len(shapes), 2)), dim=-1)
            levels.append(anchors.reshape(-1, 4))
        return torch.cat(levels).clamp(0.0, 1.0)


__all__ = ["center_to_corners", "corners_to_center", "box_iou", "BoxCoder", "AnchorGenerator"]
