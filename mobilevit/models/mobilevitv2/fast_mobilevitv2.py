"""MobileViTv2's eval-mode fast path: its blocks walked with the shared pieces of `mobilevit/fast_inference.py`.

`modeling_mobilevitv2.py` calls `backbone` when `fast_inference.applies`; the plain forward there stays the
reference. What changes here, beyond the shared BatchNorm folding and oneDNN convolutions on channels_last
maps:

- the patch grid is held as (B, P, N, d) in memory, the channels of each token contiguous: every 1x1
  projection is one GEMM over the tokens, with no transposes. The unfold out of the NHWC map is one copy;
  the fold back costs nothing extra, since the block's last GroupNorm writes its output straight into the
  folded NHWC layout;
- GroupNorm(1) is LayerNorm's vectorised kernel over each flattened sample, then the per-channel affine
  part as one in-place multiply-add;
- the context vector is a batched matrix product of the scores with the keys, read in place from the qkv
  projection's output; the attention and FFN outputs are added to the tokens in place.

This module walks the model's modules by their names and does not import the model file (which imports it).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ...fast_inference import CHANNELS_LAST, activate_, conv_layer, inverted_residual, run_backbone, walk_backbone
from ...patches import round_up_to_patches, unfold_patch_grid


def normalise(tokens: torch.Tensor, eps: float) -> torch.Tensor:
    """GroupNorm(1) without its affine part: each sample of `tokens` (B, P, N, d) normalised over all its
    values. LayerNorm's kernel over the flattened sample does it in one vectorised pass (`torch.var_mean`
    over a sample was 6-30x slower, and GroupNorm's channels-last kernel 10x less exact)."""
    batch = tokens.shape[0]
    flat = tokens.reshape(batch, -1)
    return F.layer_norm(flat, flat.shape[1:], eps=eps).view(tokens.shape)


def group_norm(norm: nn.GroupNorm, tokens: torch.Tensor) -> torch.Tensor:
    normalised = normalise(tokens, norm.eps)
    return torch.addcmul(norm.bias, normalised, norm.weight, out=normalised)  # the per-channel affine, in place


def pointwise(layer: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """A 1x1 `MobileViTConvLayer` without a norm (qkv, out, FFN projections) as a GEMM over the tokens."""
    conv = layer.convolution
    out = F.linear(tokens, conv.weight.view(conv.out_channels, conv.in_channels), conv.bias)
    return activate_(layer.activation, out)


def attention_layer(layer: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """`MobileViTV2TransformerLayer` on `tokens` (B, P, N, d), which it updates in place."""
    width = tokens.shape[-1]
    qkv = pointwise(layer.attention.qkv_proj, group_norm(layer.layernorm_before, tokens))  # (B, P, N, 1 + 2d)
    scores = qkv[..., :1].softmax(dim=-2)  # over the patches N, one score per token
    context = scores.transpose(-1, -2) @ qkv[..., 1:1 + width]  # (B, P, 1, d): sum over N of score * key
    mixed = F.relu(qkv[..., 1 + width:]).mul_(context)
    tokens += pointwise(layer.attention.out_proj, mixed)

    hidden = pointwise(layer.ffn.conv1, group_norm(layer.layernorm_after, tokens))
    tokens += pointwise(layer.ffn.conv2, hidden)
    return tokens


def mobilevitv2_block(stage: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """`MobileViTV2Layer`: downsampling block, local convs, attention on the patch grid, projection."""
    features = inverted_residual(stage.downsampling_layer, features)
    patch = stage.patch_size
    height, width = (round_up_to_patches(size, patch) for size in features.shape[-2:])
    if (height, width) != tuple(features.shape[-2:]):  # ml-cvnets v2: up to whole patches, not resized back
        features = F.interpolate(features, size=(height, width), mode="bilinear", align_corners=True)
        features = features.contiguous(memory_format=CHANNELS_LAST)
    features = conv_layer(stage.conv_1x1, conv_layer(stage.conv_kxk, features))

    tokens = unfold_patch_grid(features, patch, channels_last=True).permute(0, 2, 3, 1)  # (B, P, N, d), one copy
    for layer in stage.transformer.layer:
        tokens = attention_layer(layer, tokens)
    return conv_layer(stage.conv_projection, fold_normalised(stage.layernorm, tokens, height, width, patch))


def fold_normalised(norm: nn.GroupNorm, tokens: torch.Tensor, height: int, width: int, patch: int) -> torch.Tensor:
    """The block's final GroupNorm, its affine part written straight into the folded NHWC map:
    (B, P, N, d) -> (B, d, H, W) channels_last. The fold is the output's layout, not an extra copy."""
    batch, _, _, channels = tokens.shape
    rows, cols = height // patch, width // patch
    tiles = normalise(tokens, norm.eps).view(batch, patch, patch, rows, cols, channels)
    folded = tokens.new_empty(batch, rows, patch, cols, patch, channels)  # NHWC, H and W split into tiles
    torch.addcmul(norm.bias, tiles, norm.weight, out=folded.permute(0, 2, 4, 1, 3, 5))
    return folded.view(batch, height, width, channels).permute(0, 3, 1, 2)


def _walk(model: nn.Module, pixel_values: torch.Tensor, keep_stages: bool, keep_stem: bool = False):
    return walk_backbone(model, pixel_values, keep_stages, mobilevitv2_block, keep_stem)


def backbone(model: nn.Module, pixel_values: torch.Tensor, keep_stages: bool, keep_stem: bool = False):
    """`MobileViTV2Model` minus the pooling: (last feature map, stage outputs if `keep_stages`), channels_last."""
    return run_backbone(_walk, model, pixel_values, keep_stages, keep_stem)


__all__ = ["backbone", "mobilevitv2_block", "attention_layer", "normalise", "group_norm", "fold_normalised"]
