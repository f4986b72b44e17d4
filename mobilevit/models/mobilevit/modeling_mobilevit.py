"""MobileViT (Mehta & Rastegari, ICLR 2022, arXiv 2110.02178) as transformers `PreTrainedModel`s.

Read top to bottom, this file follows the paper's figure 1(b):

    stem (3x3 conv, stride 2)
    -> layer_1, layer_2: MobileNetV2 inverted residual blocks
    -> layer_3, layer_4, layer_5: a downsampling inverted residual, then a MobileViT block:
         local representation (3x3 conv, 1x1 projection to the transformer width)
         -> unfold into 2x2 patches -> transformers across patches -> fold back
         -> 1x1 projection -> concatenate with the block input -> 3x3 fusion conv
    -> heads: 1x1 expansion + global pool + linear (classification), DeepLabV3/ASPP (segmentation), or
       SSDLite on the stride-16 and stride-32 maps (object detection, `mobilevit/ssd/`).

`MobileViTBackbone` is the same stem and stages behind transformers' Backbone API (`out_features`,
`feature_maps`, `channels`): the feature pyramid of the detector, and of transformers' own heads that take a
backbone config (UperNet, DPT-style).

Module names and therefore state-dict keys are those of stock transformers' MobileViT, so checkpoints move
both ways unchanged. Pixels are BGR in [0, 1] with no mean/std normalisation, as ml-cvnets trained them.
Patches are made by `mobilevit/patches.py`; in eval mode without autograd the forward hands over to the
fast path (`fast_mobilevit.py`, same outputs), and this plain path stays the reference.
"""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.nn import functional as F
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.backbone_utils import BackboneMixin
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BackboneOutput,
    BaseModelOutputWithNoAttention,
    BaseModelOutputWithPoolingAndNoAttention,
    ImageClassifierOutputWithNoAttention,
    SemanticSegmenterOutput,
)
from transformers.modeling_utils import PreTrainedModel

from ... import export_mode, fast_inference, fast_training, ssd
from ...configuration_utils import make_divisible
from ...patches import fold_patches, is_channels_last, round_up_to_patches, unfold_patches
from . import fast_mobilevit
from .configuration_mobilevit import (
    MOBILENET_STAGE_DEPTHS,
    STAGE_NAMES,
    STAGE_STRIDES,
    TRANSFORMER_DEPTHS,
    MobileViTConfig,
)

# The network halves the resolution five times; smaller inputs leave nothing for the last stage to see.
MIN_INPUT_SIZE = 32


# --------------------------------------------------------------------------------------------------------
# Convolutional building blocks
# --------------------------------------------------------------------------------------------------------
class MobileViTConvLayer(nn.Module):
    """Conv -> BatchNorm -> activation, each optional but the conv ('same' padding)."""

    def __init__(
        self,
        config: MobileViTConfig,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
        dilation: int = 1,
        bias: bool = False,
        use_normalization: bool = True,
        use_activation: bool | str = True,
    ) -> None:
        super().__init__()
        self.convolution = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=(kernel_size - 1) // 2 * dilation,
            dilation=dilation,
            groups=groups,
            bias=bias,
        )
        self.normalization = nn.BatchNorm2d(out_channels, eps=1e-5, momentum=0.1) if use_normalization else None
        if use_activation is True:
            use_activation = config.hidden_act
        self.activation = ACT2FN[use_activation] if use_activation else None

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        features = fast_training.convolve(self.convolution, features)  # self.convolution(features), see there
        if self.normalization is not None:
            features = self.normalization(features)
        if self.activation is not None:
            features = self.activation(features)
        return features


class MobileViTInvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand -> 3x3 depthwise -> 1x1 reduce (linear), residual when shapes allow."""

    def __init__(
        self, config: MobileViTConfig, in_channels: int, out_channels: int, stride: int, dilation: int = 1
    ) -> None:
        super().__init__()
        expanded = make_divisible(round(in_channels * config.expand_ratio))
        self.use_residual = stride == 1 and in_channels == out_channels
        self.expand_1x1 = MobileViTConvLayer(config, in_channels, expanded, kernel_size=1)
        self.conv_3x3 = MobileViTConvLayer(
            config, expanded, expanded, kernel_size=3, stride=stride, groups=expanded, dilation=dilation
        )
        self.reduce_1x1 = MobileViTConvLayer(config, expanded, out_channels, kernel_size=1, use_activation=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        out = self.reduce_1x1(self.conv_3x3(self.expand_1x1(features)))
        return features + out if self.use_residual else out


class MobileViTMobileNetLayer(nn.Module):
    """A stage of inverted residual blocks; only the first one may stride."""

    def __init__(self, config: MobileViTConfig, in_channels: int, out_channels: int, stride: int, depth: int):
        super().__init__()
        self.layer = nn.ModuleList(
            MobileViTInvertedResidual(config, in_channels if i == 0 else out_channels, out_channels, stride if i == 0 else 1)
            for i in range(depth)
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        for block in self.layer:
            features = block(features)
        return features


# --------------------------------------------------------------------------------------------------------
# The transformer that runs across patches
# --------------------------------------------------------------------------------------------------------
class MobileViTSelfAttention(nn.Module):
    """Multi-head self-attention over the patch axis (scaled dot product, one softmax per head)."""

    def __init__(self, config: MobileViTConfig, hidden_size: int) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_size = hidden_size // config.num_attention_heads
        self.query = nn.Linear(hidden_size, hidden_size, bias=config.qkv_bias)
        self.key = nn.Linear(hidden_size, hidden_size, bias=config.qkv_bias)
        self.value = nn.Linear(hidden_size, hidden_size, bias=config.qkv_bias)
        self.dropout_prob = config.attention_probs_dropout_prob

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        batch, tokens, width = hidden_states.shape

        def heads(projection):  # (batch, tokens, width) -> (batch, heads, tokens, head_size)
            return projection(hidden_states).view(batch, tokens, self.num_heads, self.head_size).transpose(1, 2)

        context = export_mode.attention(  # SDPA; its explicit form while exporting (export_mode.py)
            heads(self.query), heads(self.key), heads(self.value),
            dropout_p=self.dropout_prob if self.training else 0.0,
        )
        return context.transpose(1, 2).reshape(batch, tokens, width)


class MobileViTLinearDropout(nn.Module):
    """Linear -> dropout: the attention output projection and the second feed-forward layer."""

    def __init__(self, config: MobileViTConfig, in_features: int, out_features: int) -> None:
        super().__init__()
        self.dense = nn.Linear(in_features, out_features)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.dense(hidden_states))


class MobileViTLinearActivation(nn.Module):
    """Linear -> activation: the first feed-forward layer."""

    def __init__(self, config: MobileViTConfig, in_features: int, out_features: int) -> None:
        super().__init__()
        self.dense = nn.Linear(in_features, out_features)
        self.intermediate_act_fn = ACT2FN[config.hidden_act]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.intermediate_act_fn(self.dense(hidden_states))


class MobileViTAttention(nn.Module):
    def __init__(self, config: MobileViTConfig, hidden_size: int) -> None:
        super().__init__()
        self.attention = MobileViTSelfAttention(config, hidden_size)
        self.output = MobileViTLinearDropout(config, hidden_size, hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.output(self.attention(hidden_states))


class MobileViTTransformerLayer(nn.Module):
    """Pre-norm transformer layer: x + MHA(LN(x)), then x + FFN(LN(x))."""

    def __init__(self, config: MobileViTConfig, hidden_size: int) -> None:
        super().__init__()
        ffn_size = int(hidden_size * config.mlp_ratio)
        self.layernorm_before = nn.LayerNorm(hidden_size, eps=config.layer_norm_eps)
        self.attention = MobileViTAttention(config, hidden_size)
        self.layernorm_after = nn.LayerNorm(hidden_size, eps=config.layer_norm_eps)
        self.intermediate = MobileViTLinearActivation(config, hidden_size, ffn_size)
        self.output = MobileViTLinearDropout(config, ffn_size, hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = hidden_states + self.attention(self.layernorm_before(hidden_states))
        return hidden_states + self.output(self.intermediate(self.layernorm_after(hidden_states)))


class MobileViTTransformer(nn.Module):
    def __init__(self, config: MobileViTConfig, hidden_size: int, depth: int) -> None:
        super().__init__()
        self.layer = nn.ModuleList(MobileViTTransformerLayer(config, hidden_size) for _ in range(depth))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        for layer in self.layer:
            hidden_states = layer(hidden_states)
        return hidden_states


class MobileViTLayer(GradientCheckpointingLayer):
    """A stage of the MobileViT part: optional downsampling inverted residual, then the MobileViT block."""

    def __init__(
        self,
        config: MobileViTConfig,
        in_channels: int,
        out_channels: int,
        stride: int,
        hidden_size: int,
        depth: int,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        self.patch_size = config.patch_size
        self.downsampling_layer = MobileViTInvertedResidual(config, in_channels, out_channels, stride, dilation)
        channels = out_channels
        # local representation
        self.conv_kxk = MobileViTConvLayer(config, channels, channels, kernel_size=config.conv_kernel_size)
        self.conv_1x1 = MobileViTConvLayer(
            config, channels, hidden_size, kernel_size=1, use_normalization=False, use_activation=False
        )
        # global representation
        self.transformer = MobileViTTransformer(config, hidden_size, depth)
        self.layernorm = nn.LayerNorm(hidden_size, eps=config.layer_norm_eps)
        # back to the block's width, then fuse with the block input
        self.conv_projection = MobileViTConvLayer(config, hidden_size, channels, kernel_size=1)
        self.fusion = MobileViTConvLayer(config, 2 * channels, channels, kernel_size=config.conv_kernel_size)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        features = self.downsampling_layer(features)
        block_input = features

        features = self.conv_1x1(self.conv_kxk(features))

        # Like ml-cvnets, a map that does not split into whole patches is resized (bilinear) to the next
        # multiple of the patch size and restored after folding. A graph exported for every input size
        # always resizes (a same-size bilinear resize is the identity; see export_mode.py).
        batch, _, height, width = features.shape
        patch = self.patch_size
        patched_height, patched_width = round_up_to_patches(height, patch), round_up_to_patches(width, patch)
        resized = export_mode.must_resize((height, width), (patched_height, patched_width))
        if resized:
            features = F.interpolate(features, size=(patched_height, patched_width), mode="bilinear", align_corners=False)

        channels_last = is_channels_last(features)  # training on CPU (fast_training.py)
        patches = self.layernorm(self.transformer(unfold_patches(features, patch)))
        features = fold_patches(patches, batch, patched_height, patched_width, patch, channels_last)

        if resized:
            features = F.interpolate(features, size=(height, width), mode="bilinear", align_corners=False)

        features = self.conv_projection(features)
        return self.fusion(torch.cat((block_input, features), dim=1))


# --------------------------------------------------------------------------------------------------------
# The backbone
# --------------------------------------------------------------------------------------------------------
class MobileViTEncoder(nn.Module):
    """layer_1 .. layer_5. For output stride 16 / 8, the last stages keep their resolution instead of
    striding, and the depthwise convolution of their downsampling block dilates by the stride skipped so far."""

    def __init__(self, config: MobileViTConfig) -> None:
        super().__init__()
        widths = config.neck_hidden_sizes
        self.gradient_checkpointing = False
        self.layer = nn.ModuleList()

        for i, depth in enumerate(MOBILENET_STAGE_DEPTHS):
            self.layer.append(MobileViTMobileNetLayer(config, widths[i], widths[i + 1], stride=1 if i == 0 else 2, depth=depth))

        stride, dilation = 4, 1  # stem and layer_2 each halve the resolution
        for i, depth in enumerate(TRANSFORMER_DEPTHS):
            stage = len(MOBILENET_STAGE_DEPTHS) + i
            if stride * 2 <= config.output_stride:
                stride, stage_stride, stage_dilation = stride * 2, 2, 1
            else:
                stage_stride, stage_dilation, dilation = 1, dilation, dilation * 2
            self.layer.append(
                MobileViTLayer(
                    config,
                    widths[stage],
                    widths[stage + 1],
                    stride=stage_stride,
                    hidden_size=config.hidden_sizes[i],
                    depth=depth,
                    dilation=stage_dilation,
                )
            )

    def forward(self, hidden_states: torch.Tensor, output_hidden_states: bool = False) -> BaseModelOutputWithNoAttention:
        all_hidden_states = () if output_hidden_states else None
        for layer in self.layer:
            hidden_states = layer(hidden_states)
            if output_hidden_states:
                all_hidden_states = all_hidden_states + (hidden_states,)
        return BaseModelOutputWithNoAttention(last_hidden_state=hidden_states, hidden_states=all_hidden_states)


class MobileViTPreTrainedModel(fast_inference.FastInferenceMixin, PreTrainedModel):
    """Eval-mode fast path (`fast_mobilevit.py`): on by default, same outputs as the plain path;
    `set_fast_inference(False)` turns it off."""

    config_class = MobileViTConfig
    config: MobileViTConfig
    base_model_prefix = "mobilevit"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["MobileViTLayer"]
    min_input_size = MIN_INPUT_SIZE

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """ml-cvnets' initialisation, which trains from scratch: He-normal (fan-out) convolutions, truncated
        normal linear layers, norms at identity. (transformers' generic N(0, 0.02) for convolutions and
        BatchNorm weights shrinks the signal to denormals within a few blocks.)"""
        if isinstance(module, nn.Conv2d) and not getattr(module, "predicts_classes", False):
            init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, (nn.Linear, nn.Conv2d)):  # a per-pixel classifier is a linear layer too
            init.trunc_normal_(module.weight, std=self.config.initializer_range)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)):  # GroupNorm: MobileViTv2
            init.ones_(module.weight)
            init.zeros_(module.bias)
            if isinstance(module, nn.BatchNorm2d):
                init.zeros_(module.running_mean)
                init.ones_(module.running_var)
                init.zeros_(module.num_batches_tracked)

    def _check_pixel_values(self, pixel_values) -> torch.Tensor:
        """Turn the usual input mistakes into errors that say what is wrong, before torch does it obscurely.
        Floating-point pixels of another precision (float64 from NumPy, float16, ...) are cast to the weights'
        dtype, as transformers' pipelines do; returns the pixels to use."""
        if pixel_values is None:
            raise ValueError("pixel_values: expected a (batch, channels, height, width) float tensor, got None")
        if not isinstance(pixel_values, torch.Tensor):
            raise TypeError(f"pixel_values: expected a torch.Tensor, got {type(pixel_values).__name__}")
        if pixel_values.dim() != 4:
            raise ValueError(
                "pixel_values: expected a 4-D tensor (batch, channels, height, width), "
                f"got {pixel_values.dim()}-D with shape {tuple(pixel_values.shape)}"
            )
        if not pixel_values.is_floating_point():
            raise TypeError(
                f"pixel_values: expected a floating point tensor (BGR in [0, 1]), got {pixel_values.dtype}; "
                "run MobileViTImageProcessor or divide integer pixels by 255"
            )
        channels = self.config.num_channels
        if pixel_values.shape[1] != channels:
            raise ValueError(
                f"pixel_values: expected {channels} channels in dimension 1, got shape {tuple(pixel_values.shape)}"
            )
        height, width = pixel_values.shape[-2:]
        if min(height, width) < MIN_INPUT_SIZE:
            raise ValueError(
                f"pixel_values: expected height and width >= {MIN_INPUT_SIZE} (the network downsamples 32x), "
                f"got {height}x{width}"
            )
        return pixel_values.to(self.dtype)


class MobileViTModel(MobileViTPreTrainedModel):
    """The backbone: stem, five stages and (for classification) the final 1x1 expansion with global pooling."""

    # the module of the family's eval fast path (MobileViTv2 reuses `forward` with its own)
    fast_path = fast_mobilevit

    def __init__(self, config: MobileViTConfig, expand_output: bool = True):
        super().__init__(config)
        self.expand_output = expand_output
        widths = config.neck_hidden_sizes
        self.conv_stem = MobileViTConvLayer(config, config.num_channels, widths[0], kernel_size=3, stride=2)
        self.encoder = MobileViTEncoder(config)
        if expand_output:
            self.conv_1x1_exp = MobileViTConvLayer(config, widths[-2], widths[-1], kernel_size=1)
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> tuple | BaseModelOutputWithPoolingAndNoAttention:
        output_hidden_states = self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        return_dict = self.config.return_dict if return_dict is None else return_dict
        pixel_values = self._check_pixel_values(pixel_values)

        if fast_inference.applies(self, pixel_values):
            last_hidden_state, stages = self.fast_path.backbone(self, pixel_values, output_hidden_states)
            hidden_states = tuple(stage.contiguous() for stage in stages) if output_hidden_states else None
        else:
            # NHWC while training on CPU (fast_training.py); maps returned to the caller are NCHW either way
            features = self.conv_stem(fast_training.training_layout(self, pixel_values))
            encoder_outputs = self.encoder(features, output_hidden_states=output_hidden_states)
            last_hidden_state, hidden_states = encoder_outputs.last_hidden_state, encoder_outputs.hidden_states
            if hidden_states is not None:
                hidden_states = tuple(stage.contiguous() for stage in hidden_states)
            if getattr(self, "conv_1x1_exp", None) is not None:  # v1 with expand_output (v2 has no expansion)
                last_hidden_state = self.conv_1x1_exp(last_hidden_state)
        # pooled before the copy to NCHW, so a training backward meets no NCHW gradient on an NHWC map
        pooled_output = last_hidden_state.mean(dim=(-2, -1)) if self.expand_output else None
        last_hidden_state = last_hidden_state.contiguous()  # the NHWC layout of either path stays internal

        if not return_dict:
            outputs = (last_hidden_state, pooled_output, hidden_states)
            return tuple(v for v in outputs if v is not None)
        return BaseModelOutputWithPoolingAndNoAttention(
            last_hidden_state=last_hidden_state, pooler_output=pooled_output, hidden_states=hidden_states
        )


class MobileViTBackbone(BackboneMixin, MobileViTPreTrainedModel):
    """The stem and five stages behind transformers' Backbone API: `feature_maps` are the maps of the stages named
    in `config.out_features` (`stage_names`: stem, stage1 .. stage5), `channels` their widths. State-dict keys are
    `MobileViTModel`'s without the final expansion, so backbone weights move between the two."""

    has_attentions = False
    fast_path = fast_mobilevit

    def __init__(self, config: MobileViTConfig) -> None:
        super().__init__(config)
        self.conv_stem = MobileViTConvLayer(config, config.num_channels, config.stage_channels[0], kernel_size=3, stride=2)
        self.encoder = MobileViTEncoder(config)
        self.num_features = config.stage_channels
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> tuple | BackboneOutput:
        output_hidden_states = self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        return_dict = self.config.return_dict if return_dict is None else return_dict
        pixel_values = self._check_pixel_values(pixel_values)

        if fast_inference.applies(self, pixel_values):
            _, maps = self.fast_path.backbone(self, pixel_values, keep_stages=True, keep_stem=True)
        else:
            stem = self.conv_stem(pixel_values)
            maps = (stem,) + self.encoder(stem, output_hidden_states=True).hidden_states
        # the fast path's NHWC layout stays internal (a no-op on the plain path's maps)
        feature_maps = tuple(maps[index].contiguous() for index in self.out_indices)
        hidden_states = tuple(stage.contiguous() for stage in maps) if output_hidden_states else None
        if not return_dict:
            return (feature_maps,) + ((hidden_states,) if hidden_states is not None else ())
        return BackboneOutput(feature_maps=feature_maps, hidden_states=hidden_states)


# --------------------------------------------------------------------------------------------------------
# Heads
# --------------------------------------------------------------------------------------------------------
def out_of_range_classes(labels: torch.Tensor, num_labels: int, ignore_index: int) -> list[int]:
    """The distinct values of `labels` outside [0, num_labels) other than `ignore_index`, sorted.

    Eager only: under `torch.compile` the answer depends on the data, which a graph cannot branch on, so it is
    [] there (shapes and dtypes are still checked; the compiled loss kernel's own index check stays)."""
    if torch.compiler.is_compiling():
        return []
    bad = labels[((labels < 0) | (labels >= num_labels)) & (labels != ignore_index)]
    return bad.unique().tolist() if bad.numel() else []


class MobileViTForImageClassification(MobileViTPreTrainedModel):
    """The backbone, then dropout and a linear layer on the pooled features (e.g. ImageNet-1k)."""

    def __init__(self, config: MobileViTConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.mobilevit = MobileViTModel(config)
        self.dropout = nn.Dropout(config.classifier_dropout_prob, inplace=True)
        self.classifier = (
            nn.Linear(config.neck_hidden_sizes[-1], config.num_labels) if config.num_labels > 0 else nn.Identity()
        )
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        labels: torch.Tensor | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> tuple | ImageClassifierOutputWithNoAttention:
        return_dict = self.config.return_dict if return_dict is None else return_dict
        # the backbone under its family's prefix (`self.mobilevit` here; MobileViTv2 reuses this forward)
        outputs = self.base_model(pixel_values, output_hidden_states=output_hidden_states, return_dict=return_dict)
        pooled_output = outputs.pooler_output if return_dict else outputs[1]
        logits = self.classifier(self.dropout(pooled_output))

        loss = None
        if labels is not None:
            self._check_classification_labels(labels, logits)
            loss = self.loss_function(labels, logits, self.config)

        if not return_dict:
            output = (logits,) + tuple(outputs[2:])
            return ((loss,) + output) if loss is not None else output
        return ImageClassifierOutputWithNoAttention(loss=loss, logits=logits, hidden_states=outputs.hidden_states)

    def _check_classification_labels(self, labels, logits: torch.Tensor) -> None:
        """Labels as transformers interprets them: one class index per image (single-label), one 0/1 float
        per class (multi-label), or one float per output (regression, num_labels == 1)."""
        if not isinstance(labels, torch.Tensor):
            raise TypeError(f"labels: expected a torch.Tensor, got {type(labels).__name__}")
        batch, num_labels = logits.shape
        problem = self.config.problem_type
        if problem is None:
            if num_labels == 1:
                problem = "regression"
            elif labels.dtype in (torch.long, torch.int):
                problem = "single_label_classification"
            else:
                problem = "multi_label_classification"
        if problem == "single_label_classification":
            if labels.is_floating_point() or labels.shape != (batch,):
                raise ValueError(
                    f"labels: expected integer class indices of shape ({batch},), "
                    f"got {labels.dtype} of shape {tuple(labels.shape)}"
                )
            bad = out_of_range_classes(labels, num_labels, ignore_index=-100)  # transformers' ignore index
            if bad:
                raise ValueError(f"labels: expected class indices in [0, {num_labels}), got {bad}")
        elif problem == "multi_label_classification":
            if labels.shape != (batch, num_labels):
                raise ValueError(
                    f"labels: expected multi-label targets of shape ({batch}, {num_labels}), got {tuple(labels.shape)}"
                )
        elif labels.numel() != logits.numel():
            raise ValueError(
                f"labels: expected {logits.numel()} regression targets (shape {tuple(logits.shape)}), "
                f"got shape {tuple(labels.shape)}"
            )


class MobileViTASPPPooling(nn.Module):
    """Image-level features of ASPP: global average, 1x1 conv, broadcast back to the map's size."""

    def __init__(self, config: MobileViTConfig, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.global_pool = nn.AdaptiveAvgPool2d(output_size=1)
        self.conv_1x1 = MobileViTConvLayer(config, in_channels, out_channels, kernel_size=1, use_activation="relu")

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        size = features.shape[-2:]
        pooled = self.conv_1x1(self.global_pool(features))
        if is_channels_last(features):
            # training on CPU (fast_training.py): resizing a 1x1 map is a broadcast, whose backward (a sum) costs
            # a fraction of the resize's; laid out NHWC like the other branches, or their concatenation (and
            # everything after it) would fall back to NCHW
            return pooled.expand(-1, -1, *size).contiguous(memory_format=torch.channels_last)
        return F.interpolate(pooled, size=size, mode="bilinear", align_corners=False)


class MobileViTASPP(nn.Module):
    """Atrous spatial pyramid pooling (DeepLabV3): a 1x1 conv, three dilated 3x3 convs and image pooling,
    concatenated and projected."""

    def __init__(self, config: MobileViTConfig, in_channels: int | None = None) -> None:
        super().__init__()
        # the backbone's last stage (v1: neck_hidden_sizes[-2]; MobileViTv2 passes its own)
        in_channels = config.neck_hidden_sizes[-2] if in_channels is None else in_channels
        out_channels = config.aspp_out_channels
        branches = [MobileViTConvLayer(config, in_channels, out_channels, kernel_size=1, use_activation="relu")]
        branches += [
            MobileViTConvLayer(config, in_channels, out_channels, kernel_size=3, dilation=rate, use_activation="relu")
            for rate in config.atrous_rates
        ]
        branches.append(MobileViTASPPPooling(config, in_channels, out_channels))
        self.convs = nn.ModuleList(branches)
        self.project = MobileViTConvLayer(
            config, len(branches) * out_channels, out_channels, kernel_size=1, use_activation="relu"
        )
        self.dropout = nn.Dropout(p=config.aspp_dropout_prob)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        pyramid = torch.cat([branch(features) for branch in self.convs], dim=1)
        return fast_training.dropout(self.dropout, self.project(pyramid))  # self.dropout(...), NHWC-aware


class MobileViTDeepLabV3(nn.Module):
    def __init__(self, config: MobileViTConfig, in_channels: int | None = None) -> None:
        super().__init__()
        self.aspp = MobileViTASPP(config, in_channels)
        self.dropout = nn.Dropout2d(config.classifier_dropout_prob)
        self.classifier = MobileViTConvLayer(
            config, config.aspp_out_channels, config.num_labels, kernel_size=1,
            use_normalization=False, use_activation=False, bias=True,
        )
        # initialised like the classification head's linear layer, not like a feature conv (_init_weights)
        self.classifier.convolution.predicts_classes = True

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Logits from the backbone's last feature map."""
        return self.classifier(self.dropout(self.aspp(features)))


class MobileViTForSemanticSegmentation(MobileViTPreTrainedModel):
    """The backbone (no final expansion) with a DeepLabV3 head; logits come at 1/output_stride of the input."""

    # ml-cvnets v0.1 upsampled the logits to the label size with align_corners=False, in its loss and its
    # evaluation; post-processing follows (`ModelFamily.segmentation_align_corners` reads it from here)
    logits_align_corners = False

    def __init__(self, config: MobileViTConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.mobilevit = MobileViTModel(config, expand_output=False)
        self.segmentation_head = MobileViTDeepLabV3(config)
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> tuple | SemanticSegmenterOutput:
        output_hidden_states = self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        return_dict = self.config.return_dict if return_dict is None else return_dict
        if labels is not None:
            self._check_segmentation_labels(labels, pixel_values)

        # without the final expansion, the backbone's last hidden state is the last stage the head reads (the
        # backbone under its family's prefix: `self.mobilevit` here; MobileViTv2 reuses this forward)
        outputs = self.base_model(pixel_values, output_hidden_states=output_hidden_states, return_dict=True)
        if fast_inference.applies(self, pixel_values):
            logits = fast_inference.deeplab_head(self.segmentation_head, outputs.last_hidden_state)
        else:  # the head trains NHWC on CPU as the backbone does (fast_training.py)
            logits = self.segmentation_head(fast_training.training_layout(self, outputs.last_hidden_state))

        logits = logits.contiguous()  # NCHW, also after a channels_last training forward

        loss = None
        if labels is not None:
            # F.cross_entropy(F.interpolate(logits, labels' size, bilinear), labels), as two matrix products
            loss = fast_training.upsampled_cross_entropy(
                logits, labels, self.logits_align_corners, self.config.semantic_loss_ignore_index
            )

        if not return_dict:
            output = (logits, outputs.hidden_states) if output_hidden_states else (logits,)
            return ((loss,) + output) if loss is not None else output
        return SemanticSegmenterOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states if output_hidden_states else None
        )

    def _check_segmentation_labels(self, labels, pixel_values) -> None:
        if self.config.num_labels < 2:
            raise ValueError(f"config.num_labels: expected at least 2 classes to train segmentation, got {self.config.num_labels}")
        if not isinstance(labels, torch.Tensor):
            raise TypeError(f"labels: expected a torch.Tensor, got {type(labels).__name__}")
        batch = pixel_values.shape[0] if isinstance(pixel_values, torch.Tensor) else None
        if labels.dim() != 3 or labels.is_floating_point() or (batch is not None and labels.shape[0] != batch):
            raise ValueError(
                f"labels: expected an integer tensor of shape (batch={batch}, height, width), "
                f"got {labels.dtype} of shape {tuple(labels.shape)}"
            )
        ignore = self.config.semantic_loss_ignore_index
        bad = out_of_range_classes(labels, self.config.num_labels, ignore)
        if bad:
            raise ValueError(
                f"labels: expected class indices in [0, {self.config.num_labels}) or the ignore index {ignore}, "
                f"got {bad}"
            )


class MobileViTForObjectDetection(MobileViTPreTrainedModel):
    """SSDLite (ml-cvnets' detector; `mobilevit/ssd/`) on the backbone's stride-16 and stride-32 maps: extra
    layers down to a global level, one separable-convolution head per level, anchors and box coder. Outputs per
    anchor: `logits` (background first) and `pred_boxes` (normalised centre-size, see `ObjectDetectionOutput`);
    with `labels` also ml-cvnets' multibox loss. The image processor's `post_process_object_detection` turns
    them into detections by `postprocessing`, the rule this family's checkpoints were evaluated with."""

    # cvnets-v0.1's evaluation (threshold 0.05, NMS per class, 200 per class); the family's processors carry it
    postprocessing = ssd.MLCVNETS_V01

    def __init__(self, config: MobileViTConfig) -> None:
        super().__init__(config)
        channels = detector_backbone_channels(config)  # before the backbone is built: it sets out_features
        self.mobilevit = MobileViTBackbone(config)
        self.ssd = ssd.SSDLite(config, channels, functools.partial(MobileViTConvLayer, config))
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: list[dict] | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> tuple | ssd.ObjectDetectionOutput:
        """`labels`: one dict per image, `class_labels` (K,) in 1 .. num_labels - 1 and `boxes` (K, 4) normalised
        (cx, cy, w, h), as transformers' detectors take them; or matched to the anchors in the data pipeline by
        `ssd.LabelMatcher` (`anchor_labels`, `anchor_targets`: one compiled graph per input size)."""
        return_dict = self.config.return_dict if return_dict is None else return_dict
        pixel_values = self._check_pixel_values(pixel_values)
        if labels is not None:
            ssd.check_labels(labels, len(pixel_values), self.config.num_labels)
        # the backbone under its family's prefix (`self.mobilevit` here; MobileViTv2 reuses this forward)
        backbone = self.base_model(pixel_values, output_hidden_states=output_hidden_states, return_dict=True)
        head = self.ssd
        if fast_inference.applies(self, pixel_values):
            regression, logits, levels = fast_inference.ssd_head(head, list(backbone.feature_maps))
        else:
            regression, logits, levels = head(list(backbone.feature_maps))
        anchors = head.anchors([level.shape[-2:] for level in levels], regression.device)
        pred_boxes = head.box_coder.decode(regression, anchors)

        loss = loss_dict = None
        if labels is not None:
            target_labels, target_regression = ssd.detection_targets(
                labels, anchors, head.box_coder, self.config.ssd_matcher_iou_threshold)
            parts = ssd.multibox_loss(logits, regression, target_labels, target_regression,
                                      self.config.ssd_negative_ratio)
            loss = parts.total
            loss_dict = {"loss_classification": parts.classification, "loss_regression": parts.regression,
                         "num_positives": parts.num_positives}
        output = ssd.ObjectDetectionOutput(
            loss=loss, loss_dict=loss_dict, logits=logits, pred_boxes=pred_boxes, box_regression=regression,
            feature_maps=tuple(level.contiguous() for level in levels) if backbone.hidden_states is not None else None,
            hidden_states=backbone.hidden_states,
        )
        return output if return_dict else output.to_tuple()


def detector_backbone_channels(config) -> dict[int, int]:
    """{output stride: channels} of the backbone levels in `ssd_output_strides` (for `ssd.SSDLite`). The detector's
    backbone gives exactly those maps: `config.out_features` is set to their stages (a classification folder's
    config, say, names only the last one), at output stride 32 (a dilated backbone has no stride-32 map)."""
    wanted = [stride for stride in config.ssd_output_strides if stride in ssd.BACKBONE_STRIDES]
    stages = [STAGE_NAMES[STAGE_STRIDES.index(stride)] for stride in wanted]
    if config.output_stride != 32:
        raise ValueError(f"{type(config).__name__}.output_stride: expected 32 for a detector (its levels are the "
                         f"backbone's undilated maps), got {config.output_stride}")
    if list(config.out_features) != stages:
        config.out_features = stages
    return {stride: config.stage_channels[STAGE_NAMES.index(stage)] for stride, stage in zip(wanted, stages)}


__all__ = [
    "MobileViTPreTrainedModel",
    "MobileViTModel",
    "MobileViTBackbone",
    "MobileViTForImageClassification",
    "MobileViTForSemanticSegmentation",
    "MobileViTForObjectDetection",
]
