"""Box-aware training augmentation for detectors: ml-cvnets' SSD recipe, on albumentations.

ml-cvnets trains its SSDLite detectors (`COCODetectionSSD._training_transforms`, both releases) with, in order:

1. `SSDCroping`: pick a minimum IoU from {none, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0} ("none": keep the whole image);
   try up to 40 crops of 0.3-1x the image's width and height, aspect ratio (h/w) in [0.5, 2], at least 100
   pixels a side, until one overlaps some box by that IoU and holds the centre of at least one box; keep the
   boxes whose centre lies inside it, clipped to it (no crop found: draw another minimum IoU);
2. `PhotometricDistort`: brightness (x 0.875-1.125), then contrast (x 0.5-1.5) either here or after hue,
   saturation (x 0.5-1.5), hue (+-0.05 of the circle), each with probability 0.5, then a random channel
   permutation with probability 0.5 (cvnets-v0.2's Pillow version; v0.1's OpenCV version differs in the
   details: additive brightness, OpenCV's HSV);
3. horizontal flip with probability 0.5;
4. resize to the training size (320x320), the aspect ratio not kept, as at evaluation.

The crop, the photometric changes and the flip run in albumentations (`A.Compose` with `BboxParams`: boxes
follow every geometric step, are clipped to the image and dropped when nothing of them is left); the crop's
sampling is ml-cvnets' rule above, as an albumentations crop (`SSDRandomCrop`). One change: the 100-pixel
minimum becomes `out_size * 100 / 320`, so that no crop is enlarged more than ml-cvnets enlarges one at 320
(3.2x) whatever the training size (100 pixels of a 128-pixel image would forbid most crops). The last step
is the family's own evaluation resize (`MobileViTImageProcessor`: v1 OpenCV-style bilinear to BGR, v2
Pillow bicubic in RGB), so training and evaluation see pixels made the same way.

Determinism: every draw comes from one generator seeded per example (`seed`), which `MultiScaleBatchSampler`
derives from the run's seed, epoch and step: a run and its resumption see the same crops and colours,
whatever the number of workers or processes.

albumentations asks PyPI for a newer version when it is imported unless NO_ALBUMENTATIONS_UPDATE is set; this
module sets it first, so importing it never reaches the network.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field

import numpy as np
import torch

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # before albumentations is imported anywhere

SSD_CROP_MIN_IOUS = (None, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0)  # None: keep the whole image (ml-cvnets' 0.0)
SSD_CROP_TRIALS = 40
SSD_CROP_SIDE = (0.3, 1.0)  # of the image's width / height
SSD_CROP_ASPECT = (0.5, 2.0)  # crop height / width
SSD_CROP_MIN_PIXELS_AT_320 = 100  # ml-cvnets' minimum crop side, for 320x320 training
MAX_MODE_DRAWS = 100  # a guard only: "none" is drawn with probability 1/7 each time
PHOTOMETRIC = dict(brightness=(0.875, 1.125), contrast=(0.5, 1.5), saturation=(0.5, 1.5), hue=(-0.05, 0.05))


def _albumentations():
    import albumentations

    return albumentations


def ssd_crop_window(boxes: np.ndarray, height: int, width: int, rng: np.random.Generator, min_side: float = 0.0
                    ) -> tuple[tuple[int, int, int, int], np.ndarray] | None:
    """ml-cvnets' `SSDCroping` sampling: a crop (x1, y1, x2, y2) in pixels and the mask of the `boxes` (K, 4,
    pixel corners) whose centre lies inside it, or None to keep the whole image (also for an image without
    boxes). `min_side`: the crop's smallest allowed side in pixels. The 40 trials of a minimum IoU are drawn at
    once and the first that passes is taken (ml-cvnets tries them one by one: the same distribution)."""
    if len(boxes) == 0:
        return None
    boxes = np.asarray(boxes, dtype=np.float64)
    centers = (boxes[:, :2] + boxes[:, 2:]) * 0.5
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    for _ in range(MAX_MODE_DRAWS):
        min_iou = SSD_CROP_MIN_IOUS[int(rng.integers(len(SSD_CROP_MIN_IOUS)))]
        if min_iou is None:
            return None
        draws = rng.random((SSD_CROP_TRIALS, 4))
        crop_w = (width * (SSD_CROP_SIDE[0] + (SSD_CROP_SIDE[1] - SSD_CROP_SIDE[0]) * draws[:, 0])).astype(np.int64)
        crop_h = (height * (SSD_CROP_SIDE[0] + (SSD_CROP_SIDE[1] - SSD_CROP_SIDE[0]) * draws[:, 1])).astype(np.int64)
        left = (draws[:, 2] * (width - crop_w)).astype(np.int64)
        top = (draws[:, 3] * (height - crop_h)).astype(np.int64)
        rects = np.stack([left, top, left + crop_w, top + crop_h], axis=1).astype(np.float64)  # (T, 4)
        inter = (np.clip(np.minimum(rects[:, None, 2:], boxes[None, :, 2:])
                         - np.maximum(rects[:, None, :2], boxes[None, :, :2]), 0, None)).prod(axis=2)  # (T, K)
        iou = inter / (areas[None, :] + (crop_w * crop_h)[:, None] - inter)
        inside = ((rects[:, None, 0] < centers[None, :, 0]) & (rects[:, None, 1] < centers[None, :, 1])
                  & (rects[:, None, 2] > centers[None, :, 0]) & (rects[:, None, 3] > centers[None, :, 1]))  # (T, K)
        aspect = crop_h / np.maximum(crop_w, 1)
        valid = ((crop_w >= max(min_side, 1)) & (crop_h >= max(min_side, 1)) & (aspect >= SSD_CROP_ASPECT[0])
                 & (aspect <= SSD_CROP_ASPECT[1]) & (iou.max(axis=1) >= min_iou) & inside.any(axis=1))
        if valid.any():
            first = int(valid.argmax())
            return tuple(int(v) for v in rects[first]), inside[first]
    return None


def _ssd_crop_class():
    """`SSDRandomCrop`, an albumentations crop (built on first use: albumentations is imported lazily)."""
    from albumentations.augmentations.crops import functional as crop_functional
    from albumentations.augmentations.crops.transforms import BaseCrop

    class SSDRandomCrop(BaseCrop):
        """ml-cvnets' SSD crop (`ssd_crop_window`) as an albumentations transform: boxes whose centre leaves the
        crop are dropped, the others clipped to it."""

        def __init__(self, min_side: float = 0.0, p: float = 1.0):
            super().__init__(p=p)
            self.min_side = float(min_side)

        def get_params_dependent_on_data(self, params, data):
            height, width = params["shape"][:2]
            # albumentations hands boxes over normalised, with the label columns after the four corners
            boxes = np.asarray(data["bboxes"], dtype=np.float64)[:, :4] * [width, height, width, height]
            window = ssd_crop_window(boxes, height, width, self.random_generator, self.min_side)
            if window is None:
                return {"crop_coords": (0, 0, width, height), "keep": np.ones(len(boxes), dtype=bool)}
            return {"crop_coords": window[0], "keep": window[1]}

        def apply_to_bboxes(self, bboxes, crop_coords, keep=None, **params):
            if keep is not None and len(bboxes):
                bboxes = bboxes[keep]
            return crop_functional.crop_bboxes_by_coords(bboxes, crop_coords, params["shape"][:2])

    return SSDRandomCrop


def _photometric_distort(A, prob: float):
    """ml-cvnets' (v0.2) `PhotometricDistort`: each change with probability `prob`, contrast before saturation
    and hue or after them (one or the other, evenly), then a channel permutation."""
    def jitter(name):
        neutral = dict(brightness=(1.0, 1.0), contrast=(1.0, 1.0), saturation=(1.0, 1.0), hue=(0.0, 0.0))
        return A.ColorJitter(**{**neutral, name: PHOTOMETRIC[name]}, p=prob)

    brightness, saturation, hue = jitter("brightness"), jitter("saturation"), jitter("hue")
    return A.Sequential([
        brightness,
        A.OneOf([A.Sequential([jitter("contrast"), saturation, hue]),
                 A.Sequential([saturation, hue, jitter("contrast")])], p=1.0),
        A.ChannelShuffle(p=prob),
    ], p=1.0)


@dataclass
class DetectionAugmentation:
    """The SSD training augmentation (see the module docstring), then the family's evaluation resize.

    Args:
        size: training (height, width), or an int for a square (ml-cvnets: 320).
        processor: the model's `MobileViTImageProcessor` (its resize filter and channel order are used; its
            size is replaced by `size`, or by the size a batch asks for).
        crop / flip_prob / photometric_prob: switch the steps (defaults: ml-cvnets').
    """

    size: int | tuple[int, int]
    processor: object
    crop: bool = True
    flip_prob: float = 0.5
    photometric_prob: float = 0.5
    _pipeline: object = field(default=None, init=False, repr=False)

    def __post_init__(self):
        from .transforms import _as_size

        self.size = _as_size(self.size)
        for name in ("flip_prob", "photometric_prob"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ValueError(f"{name}: expected a probability in [0, 1], got {value!r}")

    def _build(self):
        A = _albumentations()
        min_side = SSD_CROP_MIN_PIXELS_AT_320 * min(self.size) / 320
        steps = ([_ssd_crop_class()(min_side=min_side)] if self.crop else []) + [
            _photometric_distort(A, self.photometric_prob), A.HorizontalFlip(p=self.flip_prob)]
        # boxes in pixel corners; clipped to each new image, dropped when less than a pixel is left
        boxes = A.BboxParams(format="pascal_voc", label_fields=["labels"], clip=True, min_width=1, min_height=1,
                             check_each_transform=False)
        return A.Compose(steps, bbox_params=boxes)

    def augment(self, pixels: np.ndarray, boxes: np.ndarray, labels: np.ndarray, seed: int | None = None):
        """Crop, colours and flip on uint8 (H, W, 3) RGB pixels and (K, 4) pixel corner boxes: (pixels,
        boxes, labels) of the augmented image, before the resize."""
        if self._pipeline is None:
            self._pipeline = self._build()
        seed = int(torch.randint(0, 2 ** 63 - 1, ()).item()) if seed is None else int(seed)
        # one stream for every step (albumentations' set_random_seed would give each step the same draws)
        self._pipeline.set_random_state(np.random.default_rng(seed), random.Random(seed))
        out = self._pipeline(image=np.ascontiguousarray(pixels), bboxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
                             labels=np.asarray(labels, dtype=np.int64).reshape(-1))
        return out["image"], np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4), \
            np.asarray(out["labels"], dtype=np.int64).reshape(-1)

    def __call__(self, pixels: np.ndarray, boxes: np.ndarray, labels: np.ndarray, size=None, seed: int | None = None):
        """-> (pixel_values (3, H, W) float32 in the family's channel order, boxes (K, 4) normalised (cx, cy,
        w, h), class labels (K,) int64)."""
        from .transforms import _as_size

        height, width = _as_size(size) if size is not None else self.size
        image, boxes, labels = self.augment(pixels, boxes, labels, seed)
        pixel_values = resize_for_model(self.processor, image, height, width)
        return pixel_values, normalised_center_boxes(boxes, image.shape[0], image.shape[1]), torch.from_numpy(labels)


def resize_for_model(processor, pixels: np.ndarray, height: int, width: int) -> torch.Tensor:
    """uint8 (H, W, 3) RGB -> float32 (3, height, width) as `processor` prepares images, stretched to the size."""
    size = {"height": int(height), "width": int(width)}
    out = processor(images=pixels, size=size, crop_size=size, do_center_crop=False, return_tensors="pt")
    return out["pixel_values"][0]


def normalised_center_boxes(boxes: np.ndarray, height: int, width: int) -> torch.Tensor:
    """(K, 4) pixel corners in an image of `height` x `width` -> (K, 4) normalised (cx, cy, w, h), the model's
    `labels` form."""
    corners = np.asarray(boxes, dtype=np.float32).reshape(-1, 4) / np.float32([width, height, width, height])
    return torch.from_numpy(np.concatenate(((corners[:, :2] + corners[:, 2:]) / 2, corners[:, 2:] - corners[:, :2]),
                                           axis=1))


__all__ = ["DetectionAugmentation", "ssd_crop_window", "resize_for_model", "normalised_center_boxes",
           "SSD_CROP_MIN_IOUS", "PHOTOMETRIC"]
