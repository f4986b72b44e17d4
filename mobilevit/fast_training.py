"""Cheaper forms of what the plain forward does while it trains: same math, same weights, same state dict.

The plain forward (each family's `modeling_*.py`) is the one path that trains, and stays the readable
reference; it calls the pieces below where the straightforward PyTorch spelling is slow on CPU. Each is
tested against that spelling (outputs and gradients within 1e-5, tests/test_fast_training.py):

- `training_layout`: a model training on CPU takes its pixels channels_last (NHWC), and every map after the
  stem follows (convolutions, BatchNorm, activations and the patch unfolding keep the layout). oneDNN's
  convolutions and their backward run about 1.5x faster on NHWC than on NCHW (measured: the whole training
  step of MobileViT-S, v2-1.0 and DeepLabV3-XXS, batch 16 at 256x256, `benchmarks/profile_training.py`).
  The weights keep their layout (oneDNN reorders them per call, a small cost), so parameters, gradients,
  optimizer state and checkpoints are what they always were. On CUDA the layout is left alone (not
  measured here).
- `keep_freed_memory` (process-wide, once): glibc malloc keeps freed memory for reuse instead of handing
  it back to the kernel. A training step allocates and frees maps of tens of megabytes (MobileViT-S, batch
  16 at 256x256: 67 MB for one expanded map); glibc serves blocks above 32 MiB with fresh pages every time,
  and a 64 MB copy then took 34 ms instead of 3.7 ms, page faults included. Kept, the whole step of
  DeepLabV3-XXS took 1.09 s instead of 1.55 s (stock transformers: 1.36 s against 2.25 s). The price: the
  process keeps its peak heap until it ends. `mobilevit train` and `mobilevit demo` call it; the benchmark's
  default `tuned` allocator is the same setting.
- `dropout`: dropout draws its mask in the memory order of the map it drops from, so on an NHWC map the same
  seed would drop other pixels than on the NCHW one: same distribution, another draw, and a first-step loss
  no longer equal to stock transformers'. On NHWC maps the mask is drawn in NCHW order.
- `convolve`: while training, a dilated convolution whose dilation reaches past the map on every side (as
  DeepLabV3's ASPP at rates 12 and 18 on the 12x12 maps of the demo's 96x96 scenes, or rate 18 on the 16x16
  maps of 256x256 inputs) sees only zero padding off its centre tap: it runs as the 1x1 convolution of that
  tap, a ninth of the work, with the same outputs and gradients (the other taps' gradients are zero either
  way).
- `upsampled_cross_entropy`: DeepLabV3's loss, cross-entropy of the logits bilinearly upsampled to the label
  size. Bilinear resizing is separable, one small matrix per axis, so the upsampling is two matrix products
  (and so is its backward) instead of PyTorch's per-pixel kernel, and the product lays the upsampled logits
  out with classes innermost, where log-softmax is fastest: half the time of `F.interpolate` +
  `F.cross_entropy`, which took a fifth of a DeepLabV3-XXS training step.
"""

from __future__ import annotations

import ctypes
import ctypes.util

import torch
from torch import nn
from torch.nn import functional as F

from .patches import is_channels_last

CHANNELS_LAST = torch.channels_last


def keep_freed_memory() -> bool:
    """Tell glibc malloc to keep freed memory (no trimming, no mmap per large block); False where the C
    library is not glibc or refused. Process-wide and for good: there is no way back."""
    libc_name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(libc_name) if libc_name else None
    except OSError:
        return False
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    return bool(libc.mallopt(m_mmap_threshold, 1 << 30) and libc.mallopt(m_trim_threshold, 1 << 30))


def training_layout(model: torch.nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """`pixel_values` in the memory layout the plain forward trains fastest in: NHWC for a CPU model in
    training mode, as given otherwise (evaluation has its own fast path; exporters trace eval models)."""
    if model.training and pixel_values.device.type == "cpu":
        return pixel_values.contiguous(memory_format=CHANNELS_LAST)
    return pixel_values


def dropout(module: nn.Dropout, features: torch.Tensor) -> torch.Tensor:
    """`module(features)`, with the mask of an NHWC map drawn in NCHW order: the pixels the NCHW forward (and
    stock transformers) would drop with the same seed, the same values (PyTorch's own CPU dropout: a
    Bernoulli mask over `empty_like(input)`, divided by the keep probability, times the input)."""
    if not (module.training and 0 < module.p < 1 and is_channels_last(features)):
        return module(features)
    keep = 1 - module.p
    noise = torch.empty(features.shape, dtype=features.dtype, device=features.device).bernoulli_(keep).div_(keep)
    return features * noise.contiguous(memory_format=CHANNELS_LAST)


def convolve(conv: nn.Conv2d, features: torch.Tensor) -> torch.Tensor:
    """`conv(features)`; in training, a convolution that sees only zeros off its centre tap runs as the 1x1
    convolution of that tap."""
    if not (conv.training and _sees_only_its_centre(conv, features)):
        return conv(features)
    rows, cols = conv.kernel_size[0] // 2, conv.kernel_size[1] // 2
    centre = conv.weight[:, :, rows:rows + 1, cols:cols + 1]
    return F.conv2d(features, centre, conv.bias, 1, 0, 1, conv.groups)


def _sees_only_its_centre(conv: nn.Conv2d, features: torch.Tensor) -> bool:
    """Stride 1, 'same' zero padding, and a dilation at least the map's size along both axes: every tap off
    the centre of every output lands in the padding (output i reads i - d and i + d, outside [0, size))."""
    if conv.kernel_size == (1, 1) or conv.stride != (1, 1) or conv.padding_mode != "zeros":
        return False
    for kernel, dilation, padding, size in zip(conv.kernel_size, conv.dilation, conv.padding, features.shape[-2:]):
        if kernel % 2 == 0 or padding != dilation * (kernel // 2) or dilation < size:
            return False
    return True


def interpolation_matrix(size_in: int, size_out: int, align_corners: bool, like: torch.Tensor) -> torch.Tensor:
    """(size_out, size_in): row i holds the weights 1-D linear interpolation gives output i, exactly those
    of `F.interpolate(..., mode="bilinear")` along one axis (got by interpolating the identity)."""
    identity = torch.eye(size_in, dtype=like.dtype, device=like.device).unsqueeze(0)
    return F.interpolate(identity, size=size_out, mode="linear", align_corners=align_corners)[0].t()


def upsampled_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, align_corners: bool,
                            ignore_index: int) -> torch.Tensor:
    """`F.cross_entropy(F.interpolate(logits, size=labels.shape[-2:], mode="bilinear",
    align_corners=align_corners), labels, ignore_index=ignore_index)`, computed as two matrix products.

    out[b, y, x, c] = sum_ij rows[y, i] * cols[x, j] * logits[b, c, i, j]: first along the width, then along
    the height, giving (B, H, W, C) with the classes innermost for the loss. In float32 also under autocast
    (bfloat16 logits are widened), like PyTorch's own cross-entropy there."""
    if logits.dtype in (torch.bfloat16, torch.float16):
        logits = logits.float()
    with torch.autocast(logits.device.type, enabled=False):
        return _upsampled_cross_entropy(logits, labels, align_corners, ignore_index)


def _upsampled_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, align_corners: bool,
                             ignore_index: int) -> torch.Tensor:
    batch, classes, height, width = logits.shape
    size_y, size_x = labels.shape[-2:]
    rows = interpolation_matrix(height, size_y, align_corners, logits)
    cols = interpolation_matrix(width, size_x, align_corners, logits)
    along_width = torch.matmul(cols, logits.permute(0, 2, 3, 1))  # (B, h, X, C)
    upsampled = torch.matmul(rows, along_width.reshape(batch, height, size_x * classes))  # (B, Y, X * C)
    return F.cross_entropy(upsampled.reshape(-1, classes), labels.reshape(-1), ignore_index=ignore_index)


__all__ = ["keep_freed_memory", "training_layout", "dropout", "convolve", "interpolation_matrix", "upsampled_cross_entropy"]
