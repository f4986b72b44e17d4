"""MobileViT v1's eval-mode fast path: its blocks walked with the shared pieces of `mobilevit/fast_inference.py`.

`modeling_mobilevit.py` calls `backbone` when `fast_inference.applies`; the plain forward there stays the
reference. What changes here, beyond the shared folding and fusing: q, k and v come from one fused
projection into `scaled_dot_product_attention`; unfold/fold work on the channels_last map (one copy each);
the transformer updates its tokens in place.

This module walks the model's modules by their names and does not import the model file (which imports it).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ...fast_inference import activate_, cached, conv_layer, inverted_residual, run_backbone, walk_backbone
from ...patches import fold_patches, round_up_to_patches, unfold_patches


def fused_qkv(attention: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One (3 * width, width) projection for a `MobileViTSelfAttention`'s query, key and value."""
    parts = (attention.query, attention.key, attention.value)
    sources = tuple(p.weight for p in parts) + tuple(p.bias for p in parts)

    def build():
        weight = torch.cat([p.weight for p in parts])
        bias = torch.cat([p.bias for p in parts]) if all(p.bias is not None for p in parts) else None
        return weight, bias

    return cached(attention, sources, build)


def transformer_layer(layer: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """Pre-norm transformer layer on `hidden` (B', N, width), which it updates in place."""
    batch, tokens, width = hidden.shape
    self_attention = layer.attention.attention
    heads, head_size = self_attention.num_heads, self_attention.head_size

    normed = layer.layernorm_before(hidden)
    qkv_weight, qkv_bias = fused_qkv(self_attention)
    qkv = F.linear(normed, qkv_weight, qkv_bias).view(batch, tokens, 3, heads, head_size).permute(2, 0, 3, 1, 4)
    context = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
    context = context.transpose(1, 2).reshape(batch, tokens, width)
    out_proj = layer.attention.output.dense
    hidden += F.linear(context, out_proj.weight, out_proj.bias)

    intermediate = layer.intermediate.dense
    ffn = F.linear(layer.layernorm_after(hidden), intermediate.weight, intermediate.bias)
    ffn = activate_(layer.intermediate.intermediate_act_fn, ffn)
    output = layer.output.dense
    hidden += F.linear(ffn, output.weight, output.bias)
    return hidden


def mobilevit_block(stage: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """`MobileViTLayer`: downsampling block, local convs, transformer over patches, fusion."""
    features = inverted_residual(stage.downsampling_layer, features)
    block_input = features
    features = conv_layer(stage.conv_1x1, conv_layer(stage.conv_kxk, features))

    batch, _, height, width = features.shape
    patch = stage.patch_size
    patched_height, patched_width = round_up_to_patches(height, patch), round_up_to_patches(width, patch)
    resized = (patched_height, patched_width) != (height, width)
    if resized:
        features = F.interpolate(features, size=(patched_height, patched_width), mode="bilinear", align_corners=False)

    patches = unfold_patches(features, patch)  # one copy out of NHWC
    for layer in stage.transformer.layer:
        patches = transformer_layer(layer, patches)
    patches = stage.layernorm(patches)
    features = fold_patches(patches, batch, patched_height, patched_width, patch, channels_last=True)

    if resized:
        features = F.interpolate(features, size=(height, width), mode="bilinear", align_corners=False)
    features = conv_layer(stage.conv_projection, features)
    return conv_layer(stage.fusion, torch.cat((block_input, features), dim=1))


def _walk(model: nn.Module, pixel_values: torch.Tensor, keep_stages: bool, keep_stem: bool = False):
    return walk_backbone(model, pixel_values, keep_stages, mobilevit_block, keep_stem)


def backbone(model: nn.Module, pixel_values: torch.Tensor, keep_stages: bool, keep_stem: bool = False):
    """`MobileViTModel` minus the pooling: (last feature map, stage outputs if `keep_stages`), channels_last."""
    return run_backbone(_walk, model, pixel_values, keep_stages, keep_stem)


__all__ = ["backbone", "transformer_layer", "mobilevit_block", "fused_qkv"]
