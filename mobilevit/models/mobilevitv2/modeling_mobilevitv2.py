"""MobileViTv2 (Mehta & Rastegari 2022, "Separable Self-attention for Mobile Vision Transformers",
arXiv 2206.02680) as transformers `PreTrainedModel`s.

Read top to bottom, this file follows the paper's figure of the MobileViTv2 block:

    stem (3x3 conv, stride 2)
    -> layer_1, layer_2: MobileNetV2 inverted residual blocks (v1's, unchanged)
    -> layer_3, layer_4, layer_5: a downsampling inverted residual, then a MobileViTv2 block:
         local representation (3x3 depthwise conv, 1x1 projection to the attention width d)
         -> unfold into 2x2 patches, a [B, d, P, N] grid
         -> attention blocks: x + separable_attention(GroupNorm(x)), then x + FFN(GroupNorm(x))
         -> GroupNorm -> fold back -> 1x1 projection
    -> heads: global pool + linear (classification), v1's DeepLabV3/ASPP (segmentation), or SSDLite on the
       stride-16 and stride-32 maps (object detection, `mobilevit/ssd/`); the heads' forward logic is v1's, on
       this family's backbone.

Separable self-attention: one 1x1 conv gives a query score per token, softmax over the patches, a context
vector as the score-weighted sum of the keys, then `out_proj(relu(value) * context)`; linear in the number
of tokens, no heads. Unlike v1 there is no fusion conv, the norms are GroupNorm(1) over the whole grid and
every projection is a 1x1 convolution.

Where ml-cvnets v0.2 (the code the released checkpoints come from) and stock transformers 5.24 differ, this
file follows ml-cvnets: the block's depthwise conv is dilated in dilated stages (output stride 16 / 8), and
a map that does not split into whole patches is resized with align_corners=True and not resized back.
Module names, and so state-dict keys, are those of stock transformers' MobileViTV2, so folders move both
ways. In eval mode without autograd the forward hands over to `fast_mobilevitv2.py` (same outputs).
"""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.nn import functional as F
from transformers.backbone_utils import BackboneMixin
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import PreTrainedModel

from ... import export_mode, fast_inference, fast_training, ssd
from ...patches import fold_patch_grid, is_channels_last, round_up_to_patches, unfold_patch_grid
from ..mobilevit.modeling_mobilevit import (
    MobileViTBackbone,
    MobileViTConvLayer,
    MobileViTDeepLabV3,
    MobileViTForImageClassification,
    MobileViTForObjectDetection,
    MobileViTForSemanticSegmentation,
    MobileViTEncoder,
    MobileViTInvertedResidual,
    MobileViTMobileNetLayer,
    MobileViTModel,
    MobileViTPreTrainedModel,
    detector_backbone_channels,
)
from . import fast_mobilevitv2
from .configuration_mobilevitv2 import MOBILENET_STAGE_DEPTHS, MobileViTV2Config


# --------------------------------------------------------------------------------------------------------
# The attention block that runs on the [B, d, P, N] patch grid
# --------------------------------------------------------------------------------------------------------
class MobileViTV2LinearSelfAttention(nn.Module):
    """Separable self-attention: a context score per token (softmax over the patches N), the context vector
    as the score-weighted sum of the keys, then out_proj(relu(value) * context)."""

    def __init__(self, config: MobileViTV2Config, width: int) -> None:
        super().__init__()
        self.width = width
        # output channel 0 is the query (one score per token), then d key and d value channels
        self.qkv_proj = MobileViTConvLayer(config, width, 1 + 2 * width, kernel_size=1, bias=True,
                                           use_normalization=False, use_activation=False)
        self.attn_dropout = nn.Dropout(config.attn_dropout)
        self.out_proj = MobileViTConvLayer(config, width, width, kernel_size=1, bias=True,
                                           use_normalization=False, use_activation=False)

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        query, key, value = self.qkv_proj(grid).split([1, self.width, self.width], dim=1)
        scores = self.attn_dropout(query.softmax(dim=-1))  # [B, 1, P, N]
        context = export_mode.sum_last(key * scores)  # [B, d, P, 1]; a mean while exporting (export_mode.py)
        return self.out_proj(F.relu(value) * context)


class MobileViTV2FFN(nn.Module):
    """1x1 conv to `ffn_width` with the activation, dropout, 1x1 conv back, dropout."""

    def __init__(self, config: MobileViTV2Config, width: int, ffn_width: int) -> None:
        super().__init__()
        self.conv1 = MobileViTConvLayer(config, width, ffn_width, kernel_size=1, bias=True, use_normalization=False)
        self.dropout1 = nn.Dropout(config.ffn_dropout)
        self.conv2 = MobileViTConvLayer(config, ffn_width, width, kernel_size=1, bias=True,
                                        use_normalization=False, use_activation=False)
        self.dropout2 = nn.Dropout(config.ffn_dropout)

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        # self.dropout2(self.conv2(self.dropout1(self.conv1(grid)))), with NHWC-aware dropout (fast_training.py)
        hidden = fast_training.dropout(self.dropout1, self.conv1(grid))
        return fast_training.dropout(self.dropout2, self.conv2(hidden))


class MobileViTV2TransformerLayer(nn.Module):
    """Pre-norm attention block: x + attention(GroupNorm(x)), then x + FFN(GroupNorm(x)). GroupNorm(1)
    normalises each sample jointly over its channels, patch positions and patches."""

    def __init__(self, config: MobileViTV2Config, width: int) -> None:
        super().__init__()
        self.layernorm_before = nn.GroupNorm(num_groups=1, num_channels=width, eps=config.layer_norm_eps)
        self.attention = MobileViTV2LinearSelfAttention(config, width)
        self.layernorm_after = nn.GroupNorm(num_groups=1, num_channels=width, eps=config.layer_norm_eps)
        self.ffn = MobileViTV2FFN(config, width, config.ffn_width(width))

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        grid = grid + self.attention(self.layernorm_before(grid))
        return grid + self.ffn(self.layernorm_after(grid))


class MobileViTV2Transformer(nn.Module):
    def __init__(self, config: MobileViTV2Config, width: int, depth: int) -> None:
        super().__init__()
        self.layer = nn.ModuleList(MobileViTV2TransformerLayer(config, width) for _ in range(depth))

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        for layer in self.layer:
            grid = layer(grid)
        return grid


class MobileViTV2Layer(GradientCheckpointingLayer):
    """A stage of the MobileViTv2 part: a downsampling inverted residual, then the MobileViTv2 block."""

    def __init__(
        self,
        config: MobileViTV2Config,
        in_channels: int,
        out_channels: int,
        attention_width: int,
        depth: int,
        stride: int = 2,
        dilation: int = 1,
        block_dilation: int = 1,
    ) -> None:
        super().__init__()
        self.patch_size = config.patch_size
        self.downsampling_layer = MobileViTInvertedResidual(config, in_channels, out_channels, stride, dilation)
        # local representation: depthwise kxk (dilated like the stage in a dilated backbone), 1x1 to width d
        self.conv_kxk = MobileViTConvLayer(config, out_channels, out_channels, kernel_size=config.conv_kernel_size,
                                           groups=out_channels, dilation=block_dilation)
        self.conv_1x1 = MobileViTConvLayer(config, out_channels, attention_width, kernel_size=1,
                                           use_normalization=False, use_activation=False)
        # global representation on the patch grid
        self.transformer = MobileViTV2Transformer(config, attention_width, depth)
        self.layernorm = nn.GroupNorm(num_groups=1, num_channels=attention_width, eps=config.layer_norm_eps)
        # back to the stage's width (no fusion with the block input, unlike v1)
        self.conv_projection = MobileViTConvLayer(config, attention_width, out_channels, kernel_size=1,
                                                  use_activation=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        features = resize_to_whole_patches(self.downsampling_layer(features), self.patch_size)
        features = self.conv_1x1(self.conv_kxk(features))
        height, width = features.shape[-2:]
        channels_last = is_channels_last(features)  # training on CPU (fast_training.py)
        grid = self.layernorm(self.transformer(unfold_patch_grid(features, self.patch_size, channels_last)))
        return self.conv_projection(fold_patch_grid(grid, height, width, self.patch_size))


def resize_to_whole_patches(features: torch.Tensor, patch: int) -> torch.Tensor:
    """ml-cvnets v2: a block input that does not split into whole patches is resized (bilinear,
    align_corners=True) up to the next multiple of the patch size, and the block's output keeps that size.
    A graph exported for every input size always resizes (a same-size resize is the identity; export_mode.py)."""
    height, width = features.shape[-2:]
    size = (round_up_to_patches(height, patch), round_up_to_patches(width, patch))
    if export_mode.must_resize((height, width), size):
        features = F.interpolate(features, size=size, mode="bilinear", align_corners=True)
    return features


# --------------------------------------------------------------------------------------------------------
# The backbone
# --------------------------------------------------------------------------------------------------------
class MobileViTV2Encoder(nn.Module):
    """layer_1 .. layer_5. For output stride 16 / 8 the last stages keep their resolution instead of striding:
    as in ml-cvnets, the downsampling block's depthwise conv dilates by the stride skipped before the stage,
    and the MobileViTv2 block's depthwise conv by the stride skipped including it."""

    def __init__(self, config: MobileViTV2Config) -> None:
        super().__init__()
        widths, attention_widths = config.layer_widths, config.attention_widths
        self.gradient_checkpointing = False
        self.layer = nn.ModuleList(
            MobileViTMobileNetLayer(config, widths[i], widths[i + 1], stride=1 if i == 0 else 2, depth=depth)
            for i, depth in enumerate(MOBILENET_STAGE_DEPTHS)
        )
        stride, dilation = 4, 1  # the stem and layer_2 each halve the resolution
        for i, depth in enumerate(config.n_attn_blocks):
            stage = len(MOBILENET_STAGE_DEPTHS) + i
            stage_dilation = dilation
            if stride * 2 <= config.output_stride:
                stride, stage_stride = stride * 2, 2
            else:
                stage_stride, dilation = 1, dilation * 2
            self.layer.append(MobileViTV2Layer(
                config, widths[stage], widths[stage + 1], attention_widths[i], depth,
                stride=stage_stride, dilation=stage_dilation, block_dilation=dilation,
            ))

    forward = MobileViTEncoder.forward  # v1's: the stages in turn, keeping their outputs when asked


class MobileViTV2PreTrainedModel(fast_inference.FastInferenceMixin, PreTrainedModel):
    """Eval-mode fast path (`fast_mobilevitv2.py`): on by default, same outputs as the plain path;
    `set_fast_inference(False)` turns it off."""

    config_class = MobileViTV2Config
    config: MobileViTV2Config
    base_model_prefix = "mobilevitv2"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["MobileViTV2Layer"]
    min_input_size = MobileViTPreTrainedModel.min_input_size

    # the same initialisation (ml-cvnets') and the same input checks as v1
    _init_weights = MobileViTPreTrainedModel._init_weights
    _check_pixel_values = MobileViTPreTrainedModel._check_pixel_values


class MobileViTV2Model(MobileViTV2PreTrainedModel):
    """The backbone: stem and five stages; with `expand_output` (classification) also the global pooling.
    (v2 has no final 1x1 expansion; the flag keeps stock transformers' signature.)"""

    fast_path = fast_mobilevitv2

    def __init__(self, config: MobileViTV2Config, expand_output: bool = True):
        super().__init__(config)
        self.expand_output = expand_output
        self.conv_stem = MobileViTConvLayer(config, config.num_channels, config.layer_widths[0], kernel_size=3, stride=2)
        self.encoder = MobileViTV2Encoder(config)
        self.post_init()

    # v1's: input checks, stem -> encoder (or `fast_path.backbone` in eval without autograd) -> pooling
    forward = MobileViTModel.forward


class MobileViTV2Backbone(BackboneMixin, MobileViTV2PreTrainedModel):
    """The stem and five stages behind transformers' Backbone API (`out_features` of `stage_names`: stem,
    stage1 .. stage5); state-dict keys are `MobileViTV2Model`'s."""

    has_attentions = False
    fast_path = fast_mobilevitv2

    def __init__(self, config: MobileViTV2Config) -> None:
        super().__init__(config)
        self.conv_stem = MobileViTConvLayer(config, config.num_channels, config.stage_channels[0], kernel_size=3, stride=2)
        self.encoder = MobileViTV2Encoder(config)
        self.num_features = config.stage_channels
        self.post_init()

    # v1's: input checks, stem -> encoder (or `fast_path.backbone`), the maps of `out_features`
    forward = MobileViTBackbone.forward


# --------------------------------------------------------------------------------------------------------
# Heads
# --------------------------------------------------------------------------------------------------------
class MobileViTV2ForImageClassification(MobileViTV2PreTrainedModel):
    """The backbone, then a linear layer on the pooled features (ml-cvnets v2 has no dropout there)."""

    def __init__(self, config: MobileViTV2Config) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.mobilevitv2 = MobileViTV2Model(config)
        self.dropout = nn.Identity()  # v1's head has a dropout here; v2's none (no parameters either way)
        self.classifier = (
            nn.Linear(config.layer_widths[-1], config.num_labels) if config.num_labels > 0 else nn.Identity()
        )
        self.post_init()

    # v1's head logic on `self.base_model` (here `self.mobilevitv2`): pooled features -> classifier, the loss
    # transformers picks for the problem type, and the label checks
    forward = MobileViTForImageClassification.forward
    _check_classification_labels = MobileViTForImageClassification._check_classification_labels


class MobileViTV2ForSemanticSegmentation(MobileViTV2PreTrainedModel):
    """The backbone with v1's DeepLabV3 head on layer_5; logits come at 1/output_stride of the input."""

    # ml-cvnets v0.2 upsamples v2's segmentation logits to the label size with align_corners=True, in its
    # loss, its evaluation and the model's own output; post-processing follows (`ModelFamily.segmentation_
    # align_corners` reads it from here). Stock transformers uses False.
    logits_align_corners = True

    def __init__(self, config: MobileViTV2Config) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.mobilevitv2 = MobileViTV2Model(config, expand_output=False)
        self.segmentation_head = MobileViTDeepLabV3(config, in_channels=config.layer_widths[-1])
        self.post_init()

    # v1's head logic on `self.base_model` (here `self.mobilevitv2`): the DeepLabV3 head (fast path included),
    # the loss on logits upsampled with `logits_align_corners`, and the label checks
    forward = MobileViTForSemanticSegmentation.forward
    _check_segmentation_labels = MobileViTForSemanticSegmentation._check_segmentation_labels


class MobileViTV2ForObjectDetection(MobileViTV2PreTrainedModel):
    """v1's SSDLite (`mobilevit/ssd/`) on this family's stride-16 and stride-32 maps; see
    `MobileViTForObjectDetection`."""

    # cvnets-v0.2's evaluation (threshold 0.01, top 400 per class, batched NMS, 200 per image)
    postprocessing = ssd.MLCVNETS_V02

    def __init__(self, config: MobileViTV2Config) -> None:
        super().__init__(config)
        channels = detector_backbone_channels(config)  # before the backbone is built: it sets out_features
        self.mobilevitv2 = MobileViTV2Backbone(config)
        self.ssd = ssd.SSDLite(config, channels, functools.partial(MobileViTConvLayer, config))
        self.post_init()

    # v1's head logic on `self.base_model` (here `self.mobilevitv2`): feature maps -> extra layers and heads (fast
    # path included) -> anchors and decoded boxes, and the multibox loss when labels are given
    forward = MobileViTForObjectDetection.forward


__all__ = [
    "MobileViTV2PreTrainedModel",
    "MobileViTV2Model",
    "MobileViTV2Backbone",
    "MobileViTV2ForImageClassification",
    "MobileViTV2ForSemanticSegmentation",
    "MobileViTV2ForObjectDetection",
]
