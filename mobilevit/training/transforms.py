"""Training-time augmentation and evaluation-time resizing, on torch tensors (no torchvision).

Whatever comes in (PIL image, NumPy array, tensor), `pixel_values` come out as the model expects them and as
`MobileViTImageProcessor` produces them: float32, (3, H, W), values in [0, 1], no mean/std, in the channel order
the model's family was trained on (MobileViT v1 BGR, MobileViTv2 RGB: `ModelFamily.preprocessing`).
Segmentation masks come out as int64 (H, W) label maps; they are always resized with nearest neighbour, and
pixels a crop pads or leaves undefined get `ignore_index` (255).

The geometry follows ml-cvnets' ImageNet recipe (random resized crop, scale (0.08, 1), ratio (3/4, 4/3), then
horizontal flip with p=0.5) and its evaluation (shortest edge resize, then centre crop). For segmentation the
same crop and flip are applied to the image and its mask.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..image_processing_mobilevit import IGNORE_INDEX
from ..image_reading import image_pixels, label_map


def image_to_tensor(image, channel_order: str = "BGR") -> torch.Tensor:
    """A PIL image, a (H, W[, C]) NumPy array or a ([C,] H, W) tensor -> float32 (3, H, W) in [0, 1] in
    `channel_order` ("BGR" or "RGB"), read by the rules every tool shares (`mobilevit.image_reading`): grey
    repeated to three channels, alpha dropped, 16-bit scaled to 8 bits, float pixels in [0, 1] quantised to 8
    bits as the processor does."""
    if channel_order not in ("BGR", "RGB"):
        raise ValueError(f"channel_order: expected 'BGR' or 'RGB', got {channel_order!r}")
    layout = "channels_last" if isinstance(image, np.ndarray) else "channels_first"
    pixels = image_pixels(image, "image", input_data_format=layout).permute(2, 0, 1)  # (3, H, W) uint8, RGB
    if channel_order == "BGR":
        pixels = pixels.flip(0)
    return pixels.float().div_(255.0).contiguous()


def mask_to_tensor(mask) -> torch.Tensor:
    """A segmentation map (PIL mode L/P/I, a (H, W) array or tensor of class ids, ...) -> int64 (H, W), read by
    `mobilevit.image_reading.label_map`."""
    return label_map(mask, "mask")


def resize_image(pixels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of a (3, H, W) float tensor; antialiased when shrinking, like PIL."""
    if tuple(pixels.shape[-2:]) == tuple(size):
        return pixels
    return F.interpolate(pixels[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0].clamp_(0, 1)


def resize_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of an int64 (H, W) label map (class ids are never blended)."""
    if tuple(mask.shape[-2:]) == tuple(size):
        return mask
    return F.interpolate(mask[None, None].float(), size=size, mode="nearest-exact")[0, 0].long()


def _uniform(generator, low, high) -> float:
    return low + (high - low) * torch.rand((), generator=generator).item()


def random_resized_crop_box(height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float],
                            generator: torch.Generator | None = None) -> tuple[int, int, int, int]:
    """(top, left, crop_height, crop_width) covering a random `scale` fraction of the area with a random aspect
    ratio (log-uniform in `ratio`); after 10 failed draws, the largest centred crop within `ratio`."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * _uniform(generator, *scale)
        aspect = math.exp(_uniform(generator, *log_ratio))
        crop_w = int(round(math.sqrt(target * aspect)))
        crop_h = int(round(math.sqrt(target / aspect)))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            top = int(torch.randint(0, height - crop_h + 1, (), generator=generator))
            left = int(torch.randint(0, width - crop_w + 1, (), generator=generator))
            return top, left, crop_h, crop_w
    aspect = width / height
    if aspect < ratio[0]:
        crop_w, crop_h = width, int(round(width / ratio[0]))
    elif aspect > ratio[1]:
        crop_h, crop_w = height, int(round(height * ratio[1]))
    else:
        crop_h, crop_w = height, width
    return (height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w


def _as_size(size) -> tuple[int, int]:
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size, size)
    if not (isinstance(size, (tuple, list)) and len(size) == 2 and all(isinstance(s, int) and s > 0 for s in size)):
        raise ValueError(f"size: expected a positive int or a (height, width) pair of positive ints, got {size!r}")
    return int(size[0]), int(size[1])


@dataclass
class TrainAugmentation:
    """Random resized crop to `size` (or to the size a multi-scale batch asks for), then a horizontal flip.

    Args:
        size: output (height, width), or an int for a square.
        scale: range of the crop's area as a fraction of the image's (ml-cvnets / timm: (0.08, 1.0)).
        ratio: range of the crop's aspect ratio (width / height).
        flip_prob: probability of a horizontal flip (0 for data where mirroring changes the class).
    """

    size: int | tuple[int, int] = 256
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_prob: float = 0.5

    def __post_init__(self):
        self.size = _as_size(self.size)
        if not (0 < self.scale[0] <= self.scale[1] <= 1):
            raise ValueError(f"scale: expected 0 < min <= max <= 1, got {self.scale!r}")
        if not (0 < self.ratio[0] <= self.ratio[1]):
            raise ValueError(f"ratio: expected 0 < min <= max, got {self.ratio!r}")
        if not 0 <= self.flip_prob <= 1:
            raise ValueError(f"flip_prob: expected a probability in [0, 1], got {self.flip_prob!r}")

    def __call__(self, pixels: torch.Tensor, mask: torch.Tensor | None = None, size=None,
                 generator: torch.Generator | None = None):
        out_size = _as_size(size) if size is not None else self.size
        top, left, h, w = random_resized_crop_box(pixels.shape[-2], pixels.shape[-1], self.scale, self.ratio,
                                                  generator)
        pixels = resize_image(pixels[:, top:top + h, left:left + w], out_size)
        if mask is not None:
            mask = resize_mask(mask[top:top + h, left:left + w], out_size)
        if torch.rand((), generator=generator).item() < self.flip_prob:
            pixels = pixels.flip(-1)
            mask = mask.flip(-1) if mask is not None else None
        return pixels, mask


@dataclass
class EvalTransform:
    """Resize the shortest edge to `resize` (keeping the aspect ratio), then centre-crop to `crop_size`: the
    geometry of `MobileViTImageProcessor(size={"shortest_edge": resize}, crop_size=...)`, so evaluation here
    sees what the saved processor will feed the model later."""

    resize: int = 288
    crop_size: int | tuple[int, int] = 256

    def __post_init__(self):
        self.crop_size = _as_size(self.crop_size)
        if not (isinstance(self.resize, int) and self.resize > 0):
            raise ValueError(f"resize: expected a positive int (shortest edge), got {self.resize!r}")

    @property
    def size(self) -> tuple[int, int]:
        return self.crop_size

    def __call__(self, pixels: torch.Tensor, mask: torch.Tensor | None = None, size=None, generator=None):
        height, width = pixels.shape[-2:]
        short = min(height, width)
        new = (max(1, int(self.resize * height / short)), max(1, int(self.resize * width / short)))
        pixels = resize_image(pixels, new)
        mask = resize_mask(mask, new) if mask is not None else None
        crop_h, crop_w = self.crop_size
        if crop_h > new[0] or crop_w > new[1]:  # pad so the crop fits; padded label pixels are ignored
            pad_h, pad_w = max(0, crop_h - new[0]), max(0, crop_w - new[1])
            padding = (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)
            pixels = F.pad(pixels, padding)
            mask = F.pad(mask, padding, value=IGNORE_INDEX) if mask is not None else None
            new = tuple(pixels.shape[-2:])
        top, left = (new[0] - crop_h) // 2, (new[1] - crop_w) // 2
        pixels = pixels[:, top:top + crop_h, left:left + crop_w]
        mask = mask[top:top + crop_h, left:left + crop_w] if mask is not None else None
        return pixels.contiguous(), mask
