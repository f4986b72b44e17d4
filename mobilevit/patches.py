"""Unfold / fold: the one place where feature maps become patch sequences and back.

A MobileViT block cuts its feature map into patch x patch tiles and lets attention mix the pixels that sit
at the same place in different tiles (the paper's Fig. 1b). The model files and their fast paths all take
their patches from here.
"""

from __future__ import annotations

import torch


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


__all__ = ["round_up_to_patches", "unfold_patches", "fold_patches"]
