"""Unfold / fold: the one place where feature maps become patch sequences and back.

A MobileViT block cuts its feature map into patch x patch tiles and lets attention mix the pixels that sit
at the same place in different tiles (the paper's Fig. 1b). The model files and their fast paths all take
their patches from here, in the layout of their family:

- v1 (`unfold_patches` / `fold_patches`): sequences of tokens, (B * P, N, C), for `nn.Linear` attention;
- v2 (`unfold_patch_grid` / `fold_patch_grid`): ml-cvnets v2's [B, C, P, N] grid, for 1x1 convolutions and
  GroupNorm over (C, P, N).

P = patch * patch is the position inside a patch (row-major), N = the patch index (row-major).

A map laid out NHWC (channels_last: the fast path, and training on CPU) is cut through its (B, H, W, C)
view, so that autograd's backward of each copy also lands in NHWC: written through the NCHW view, the
gradient of an NHWC map came back NCHW, and every kernel after it ran on mixed layouts (SiLU's backward 8x
slower).
"""

from __future__ import annotations

import torch

CHANNELS_LAST = torch.channels_last


def round_up_to_patches(size: int, patch: int) -> int:
    """The next multiple of `patch` (written without negative floor division, which ONNX would truncate)."""
    return (size + patch - 1) // patch * patch


def unfold_patches(features: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, H, W) -> (B * patch * patch, H/patch * W/patch, C).

    Row `b * patch_area + p` holds, for image b, the pixel at position p inside every patch, so attention
    over that row mixes pixels that sit at the same place in different patches (the paper's Fig. 1b).
    """
    batch, channels, height, width = features.shape
    rows, cols = height // patch, width // patch
    if is_channels_last(features):
        patches = features.permute(0, 2, 3, 1).reshape(batch, rows, patch, cols, patch, channels)
        patches = patches.permute(0, 2, 4, 1, 3, 5)  # (B, patch_y, patch_x, rows, cols, C)
    else:
        patches = features.reshape(batch, channels, rows, patch, cols, patch)
        patches = patches.permute(0, 3, 5, 2, 4, 1)  # (B, patch_y, patch_x, rows, cols, C)
    return patches.reshape(batch * patch * patch, rows * cols, channels)


def fold_patches(
    patches: torch.Tensor, batch: int, height: int, width: int, patch: int, channels_last: bool = False
) -> torch.Tensor:
    """Exact inverse of `unfold_patches`: (B * patch * patch, H/patch * W/patch, C) -> (B, C, H, W).

    With `channels_last`, the result is laid out NHWC in memory (same shape and values)."""
    channels = patches.shape[-1]
    rows, cols = height // patch, width // patch
    features = patches.reshape(batch, patch, patch, rows, cols, channels)
    if channels_last:
        features = features.permute(0, 3, 1, 4, 2, 5).reshape(batch, height, width, channels)
        return features.permute(0, 3, 1, 2)
    features = features.permute(0, 5, 3, 1, 4, 2)  # (B, C, rows, patch_y, cols, patch_x)
    return features.reshape(batch, channels, height, width)


def unfold_patch_grid(features: torch.Tensor, patch: int, channels_last: bool = False) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, P, N), the MobileViTv2 layout (ml-cvnets' `F.unfold` followed by a reshape):
    `grid[b, :, p, n]` is the pixel at position p inside patch n.

    With `channels_last`, the result is laid out (B, P, N, C) in memory (same shape and values): the tokens'
    channels are contiguous, so 1x1 projections are plain GEMMs over them. Either way one copy, since patch
    positions interleave in memory."""
    batch, channels, height, width = features.shape
    rows, cols = height // patch, width // patch
    if channels_last:
        if is_channels_last(features):
            tiles = features.permute(0, 2, 3, 1).reshape(batch, rows, patch, cols, patch, channels)
            tiles = tiles.permute(0, 2, 4, 1, 3, 5)  # (B, patch_y, patch_x, rows, cols, C)
        else:
            tiles = features.reshape(batch, channels, rows, patch, cols, patch).permute(0, 3, 5, 2, 4, 1)
        return tiles.reshape(batch, patch * patch, rows * cols, channels).permute(0, 3, 1, 2)
    tiles = features.reshape(batch, channels, rows, patch, cols, patch)  # a view in both memory layouts
    return tiles.permute(0, 1, 3, 5, 2, 4).reshape(batch, channels, patch * patch, rows * cols)


def fold_patch_grid(grid: torch.Tensor, height: int, width: int, patch: int) -> torch.Tensor:
    """Exact inverse of `unfold_patch_grid`: (B, C, P, N) -> (B, C, H, W), in the memory layout of `grid`
    (a grid laid out (B, P, N, C) folds into a channels_last map)."""
    batch, channels = grid.shape[:2]
    rows, cols = height // patch, width // patch
    tokens = grid.permute(0, 2, 3, 1)  # (B, P, N, C)
    if tokens.is_contiguous():  # (B, P, N, C) memory -> NHWC
        features = tokens.reshape(batch, patch, patch, rows, cols, channels).permute(0, 3, 1, 4, 2, 5)
        return features.reshape(batch, height, width, channels).permute(0, 3, 1, 2)
    tiles = grid.reshape(batch, channels, patch, patch, rows, cols)
    return tiles.permute(0, 1, 4, 2, 5, 3).reshape(batch, channels, height, width)


def is_channels_last(features: torch.Tensor) -> bool:
    """Whether a 4-D map is laid out NHWC (and not also NCHW, as maps with one channel or pixel are)."""
    return features.dim() == 4 and not features.is_contiguous() and features.is_contiguous(memory_format=CHANNELS_LAST)


__all__ = ["is_channels_last", "round_up_to_patches", "unfold_patches", "fold_patches", "unfold_patch_grid", "fold_patch_grid"]
