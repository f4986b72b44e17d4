"""SSDLite's layers on top of a backbone's feature pyramid, as ml-cvnets builds them for both MobileViT families.

Read top to bottom, this is the detector's figure after the backbone:

    backbone maps at output strides 16 and 32 (the `out_features` of a MobileViT backbone)
    -> extra layers: separable convolutions of stride 2 (strides 64, 128, 256), then global pooling (-1)
    -> one head per level: an optional 1x1 projection, then a separable convolution (a 1x1 convolution on the
       global level) predicting, per anchor, 4 box regressions followed by the class logits
    -> per level (B, H*W*A, 4 + classes), concatenated over the levels and split into regressions and logits.

Layers are built with the family's own convolution block (`conv_layer`, a `MobileViTConvLayer` factory: conv,
BatchNorm, activation), so their state-dict keys follow the family's naming, and the eval fast path
(`fast_inference.ssd_head`) walks them like the backbone. Which strides, widths and anchors a detector has is
config data (`ssd_output_strides`, `ssd_projection_channels`, `ssd_aspect_ratios`, ...), the same fields in
every family. ml-cvnets' quirks kept on purpose: the depthwise convolution of every head has BatchNorm (its
`use_norm=False` reaches only the pointwise part); a head's projection exists only where the head's width
differs from its input; the SSD parts use ReLU while the backbone keeps its own activation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.utils import ModelOutput

from .boxes import AnchorGenerator, BoxCoder

GLOBAL_LEVEL = -1  # ml-cvnets' output stride of the globally pooled level
BACKBONE_STRIDES = (8, 16, 32)  # the levels a MobileViT backbone gives (output stride 32, no dilation)
MAX_CACHED_ANCHOR_SETS = 8  # input sizes whose anchors are kept
BOX_VALUES = 4  # (dcx, dcy, dw, dh): first in each anchor's block of channels, the class logits after them


@dataclass
class ObjectDetectionOutput(ModelOutput):
    r"""Outputs of a MobileViT SSDLite detector.

    loss (`torch.Tensor`, *optional*, when `labels` are given): ml-cvnets' SSD multibox loss,
        `(smooth-L1 of the positives' regressions + cross-entropy of positives and mined negatives) / num_pos`.
    loss_dict (`dict`, *optional*): its parts, `loss_classification` and `loss_regression` (sums) and
        `num_positives`.
    logits (`torch.Tensor` of shape `(batch_size, num_anchors, num_labels)`): raw class logits per anchor;
        column 0 is the background class. Scores are the softmax over all columns (background included).
    pred_boxes (`torch.Tensor` of shape `(batch_size, num_anchors, 4)`): the decoded boxes, normalised to the
        image, as (center_x, center_y, width, height), not clipped (transformers' DETR convention; the image
        processor's `post_process_object_detection` turns them into pixel corners).
    box_regression (`torch.Tensor` of shape `(batch_size, num_anchors, 4)`): the raw regressions
        (dcx, dcy, dw, dh) in variance units, what the loss compares with the encoded targets.
    feature_maps (`tuple(torch.Tensor)`, *optional*, with `output_hidden_states`): the map entering each
        head, one per level.
    hidden_states (`tuple(torch.Tensor)`, *optional*, with `output_hidden_states`): the backbone's stages.
    """

    loss: torch.Tensor | None = None
    loss_dict: dict | None = None
    logits: torch.Tensor | None = None
    pred_boxes: torch.Tensor | None = None
    box_regression: torch.Tensor | None = None
    feature_maps: tuple[torch.Tensor, ...] | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None


class SSDSeparableConv(nn.Module):
    """A depthwise kxk convolution with BatchNorm (no activation), then a pointwise 1x1 convolution."""

    def __init__(self, conv_layer, in_channels: int, out_channels: int, stride: int = 1, *, pointwise_bias: bool,
                 pointwise_norm: bool, pointwise_activation) -> None:
        super().__init__()
        self.depthwise = conv_layer(in_channels, in_channels, kernel_size=3, stride=stride, groups=in_channels,
                                    use_activation=False)
        self.pointwise = conv_layer(in_channels, out_channels, kernel_size=1, bias=pointwise_bias,
                                    use_normalization=pointwise_norm, use_activation=pointwise_activation)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(features))


class SSDGlobalPool(nn.Module):
    """The last level: global average pooling, then a 1x1 convolution (no norm, no bias) and the activation."""

    def __init__(self, conv_layer, in_channels: int, out_channels: int, activation) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(output_size=1)
        self.projection = conv_layer(in_channels, out_channels, kernel_size=1, use_normalization=False,
                                     use_activation=activation)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.projection(self.pool(features))


class SSDHead(nn.Module):
    """One level's predictions: an optional 1x1 projection (BatchNorm and activation) to `width`, then a
    separable 3x3 convolution (a 1x1 convolution on the global level) with `anchors * (4 + classes)` outputs."""

    def __init__(self, conv_layer, in_channels: int, width: int, anchors: int, num_labels: int, global_level: bool,
                 activation) -> None:
        super().__init__()
        self.num_outputs = BOX_VALUES + num_labels
        # ml-cvnets projects only where the width differs from the input, and never on the 1x1 level
        self.projection = None
        if width != in_channels and not global_level:
            self.projection = conv_layer(in_channels, width, kernel_size=1, use_activation=activation)
            in_channels = width
        if global_level:
            self.predictor = conv_layer(in_channels, anchors * self.num_outputs, kernel_size=1, bias=True,
                                        use_normalization=False, use_activation=False)
            final = self.predictor
        else:
            self.predictor = SSDSeparableConv(conv_layer, in_channels, anchors * self.num_outputs,
                                              pointwise_bias=True, pointwise_norm=False, pointwise_activation=False)
            final = self.predictor.pointwise
        final.convolution.predicts_classes = True  # initialised like a classifier (the family's _init_weights)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, H*W*anchors, 4 + classes): per location, per anchor, 4 regressions then logits."""
        if self.projection is not None:
            features = self.projection(features)
        return flatten_predictions(self.predictor(features), self.num_outputs)


def flatten_predictions(predictions: torch.Tensor, num_outputs: int) -> torch.Tensor:
    """(B, A * num_outputs, H, W) -> (B, H*W*A, num_outputs): anchor index `(y * W + x) * A + a`. A channels_last
    map needs no copy."""
    return predictions.permute(0, 2, 3, 1).reshape(predictions.shape[0], -1, num_outputs)


class SSDLite(nn.Module):
    """Extra layers, heads, anchors and box coder of an SSDLite detector on a backbone's feature maps.

    `backbone_channels` maps each backbone output stride used (8, 16, 32) to its channels; `conv_layer(in,
    out, kernel_size, ...)` builds the family's convolution block. Config fields read: `ssd_output_strides`,
    `ssd_projection_channels`, `ssd_aspect_ratios`, `ssd_min_scale`, `ssd_max_scale`, `ssd_center_variance`,
    `ssd_size_variance`, `ssd_activation`, `num_labels`."""

    def __init__(self, config, backbone_channels: dict[int, int], conv_layer) -> None:
        super().__init__()
        strides, widths = list(config.ssd_output_strides), list(config.ssd_projection_channels)
        activation = config.ssd_activation
        self.anchor_generator = AnchorGenerator.from_config(config)
        self.box_coder = BoxCoder.from_config(config)
        # the extra layers continue from the backbone's last map (stride 32), each from the level before it
        self.extra_layers = nn.ModuleList()
        self.global_pool = None
        level_channels, channels = [], backbone_channels[max(BACKBONE_STRIDES)]
        for stride, width in zip(strides, widths):
            if stride in BACKBONE_STRIDES:
                level_channels.append(backbone_channels[stride])
                continue
            if stride == GLOBAL_LEVEL:
                self.global_pool = SSDGlobalPool(conv_layer, channels, width, activation)
            else:
                self.extra_layers.append(SSDSeparableConv(conv_layer, channels, width, stride=2, pointwise_bias=False,
                                                          pointwise_norm=True, pointwise_activation=activation))
            channels = width
            level_channels.append(width)
        self.heads = nn.ModuleList(
            SSDHead(conv_layer, in_channels, width, anchors, config.num_labels, stride == GLOBAL_LEVEL, activation)
            for stride, width, in_channels, anchors in zip(strides, widths, level_channels,
                                                            self.anchor_generator.anchors_per_location)
        )
        self._anchors_cache: dict = {}

    def levels(self, backbone_maps: list[torch.Tensor]) -> list[torch.Tensor]:
        """Every level's feature map: the backbone's maps, then each extra layer on the level before it, then the
        global level."""
        features = list(backbone_maps)
        for layer in self.extra_layers:
            features.append(layer(features[-1]))
        if self.global_pool is not None:
            features.append(self.global_pool(features[-1]))
        return features

    def forward(self, backbone_maps: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """(box regressions (B, N, 4), class logits (B, N, classes), the level maps) from the backbone's maps at
        the strides in `ssd_output_strides` below the extra layers."""
        features = self.levels(backbone_maps)
        predictions = torch.cat([head(level) for head, level in zip(self.heads, features)], dim=1)
        regression, logits = predictions.split([BOX_VALUES, predictions.shape[-1] - BOX_VALUES], dim=-1)
        return regression, logits, features

    def anchors(self, level_sizes, device=None) -> torch.Tensor:
        """(N, 4) anchors (cx, cy, w, h) for levels of `level_sizes`; kept for the last few sizes seen. An export
        for one input size holds them as one constant; a graph for every size (and torch.compile) computes them
        from its sizes."""
        if torch.compiler.is_exporting() and all(isinstance(side, int) for size in level_sizes for side in size):
            return self.anchor_generator.constant(level_sizes, device)  # non-strict export runs Python as is
        if torch.compiler.is_compiling() or torch.compiler.is_exporting() or torch.jit.is_tracing():
            return self.anchor_generator(level_sizes, device)  # tensor arithmetic the graph can hold
        key = (tuple((int(h), int(w)) for h, w in level_sizes), str(device))
        cached = self._anchors_cache.get(key)
        if cached is None:
            # a plain tensor even under inference_mode, so that a later training forward can use it
            with torch.inference_mode(False), torch.no_grad():
                cached = self.anchor_generator(level_sizes, device)
            if len(self._anchors_cache) >= MAX_CACHED_ANCHOR_SETS:
                self._anchors_cache.pop(next(iter(self._anchors_cache)))
            self._anchors_cache[key] = cached
        return cached


__all__ = ["ObjectDetectionOutput", "SSDLite", "SSDHead", "SSDSeparableConv", "SSDGlobalPool", "flatten_predictions",
           "GLOBAL_LEVEL", "BACKBONE_STRIDES", "BOX_VALUES"]
