"""MobileViTv2 configuration: the fields of the Hub's `apple/mobilevitv2-*` configs and the table of widths.

The field names, defaults and JSON are those of stock transformers' `MobileViTV2Config`, so a `config.json`
written here loads there and the other way round. The seven released sizes differ only in their width
multiplier, which lives in `VARIANTS`; `MobileViTV2Config.from_variant("mobilevitv2-1.0")` reads it. Every
channel count follows from the multiplier (`layer_widths`, `attention_widths`), as in ml-cvnets.
"""

from __future__ import annotations

import re

from transformers import PreTrainedConfig
from transformers.backbone_utils import BackboneConfigMixin

from ...configuration_utils import (
    MAX_IMAGE_SIZE,
    MAX_RATIO,
    MAX_WIDTH,
    PATCH_SIZES,
    check_activation,
    check_choice,
    check_image_size,
    check_int,
    check_int_list,
    check_labels,
    check_number,
    check_probability,
    fail,
    is_int,
    make_divisible,
    set_backbone_outputs,
)
from ...ssd.configuration import SSDConfigMixin
from ...tasks import CLASSIFICATION, OBJECT_DETECTION, SEGMENTATION, canonical_task
from ..mobilevit.configuration_mobilevit import STAGE_NAMES

# The released widths (ml-cvnets `config/classification/imagenet/mobilevit_v2.yaml` with
# `model.classification.mitv2.width_multiplier`), named as the Hub names them (`apple/mobilevitv2-1.0-...`).
# The name carries the family, so it cannot be mistaken for another family's size.
VARIANTS: dict[str, dict] = {
    f"mobilevitv2-{width}": {"width_multiplier": float(width)}
    for width in ("0.5", "0.75", "1.0", "1.25", "1.5", "1.75", "2.0")
}

# What a task changes on top of a width: the release's resolution and, for DeepLabV3, ml-cvnets' PASCAL VOC
# recipe (output stride 16, ASPP rates 6/12/18). Its ADE20k recipe (output stride 8, rates 12/24/36) is
# `ADE20K_SEGMENTATION` below; neither can be read from the weights.
TASK_DEFAULTS: dict[str, dict] = {
    CLASSIFICATION: {"image_size": 256, "output_stride": 32},
    SEGMENTATION: {"image_size": 512, "output_stride": 16, "atrous_rates": [6, 12, 18]},
    # ml-cvnets v0.2's SSDLite at 320x320 on the stride-16 and stride-32 maps
    OBJECT_DETECTION: {"image_size": 320, "output_stride": 32, "out_features": ["stage4", "stage5"]},
}
ADE20K_SEGMENTATION = {"output_stride": 8, "atrous_rates": [12, 24, 36]}

# Blocks per stage, fixed by the architecture: layer_1 and layer_2 are MobileNetV2 stages of 1 and 2 inverted
# residuals; layer_3..layer_5 each hold one downsampling inverted residual and one MobileViTv2 block (whose
# attention depth is the config's `n_attn_blocks`).
MOBILENET_STAGE_DEPTHS = (1, 2)


def canonical_variant(name: str) -> str:
    """Map any accepted spelling of a width to its key in `VARIANTS`: "mobilevitv2-1.0" (the Hub's), timm's
    "mobilevitv2_100", ml-cvnets' "mobilevitv2-1.0.pt" file name, or the bare multiplier "1.0" / "1" / 1.0."""
    text = str(name).strip().lower()
    # three digits are timm's hundredths (050 ... 200); anything else is the multiplier itself
    match = re.fullmatch(r"(?:apple/)?(?:mobilevit_?v2[-_ ]?)?(?:(\d{3})|(\d+(?:\.\d+)?))(?:\.pt)?", text)
    if match:
        width = int(match[1]) / 100 if match[1] is not None else float(match[2])
        for key, fields in VARIANTS.items():
            if fields["width_multiplier"] == width:
                return key
    raise ValueError(f"variant: expected one of {sorted(VARIANTS)} (or timm's mobilevitv2_050 ... mobilevitv2_200, "
                     f"or the bare width 0.5 ... 2.0), got {name!r}")


class MobileViTV2Config(BackboneConfigMixin, SSDConfigMixin, PreTrainedConfig):
    r"""Configuration of a MobileViTv2 model; defaults give `apple/mobilevitv2-1.0-imagenet1k-256`.

    Args:
        num_channels: channels of the input image.
        image_size: the resolution the checkpoint was trained at (informational; any size runs).
        patch_size: side of the square patches the MobileViTv2 blocks unfold into (2 in every release).
        expand_ratio: expansion of the MobileNetV2 inverted residual blocks.
        hidden_act: activation of the backbone and the attention blocks' feed-forward layers.
        conv_kernel_size: kernel of the blocks' depthwise local-representation convolution.
        output_stride: 32 for classification; 16 or 8 dilates the last stages for segmentation.
        classifier_dropout_prob: dropout before the DeepLabV3 classifier (the classification head has none).
        initializer_range: std of the truncated normal used for linear layers.
        layer_norm_eps: epsilon of the GroupNorm(1) layers of the attention blocks.
        aspp_out_channels, atrous_rates, aspp_dropout_prob: the DeepLabV3 head.
        semantic_loss_ignore_index: label value the segmentation loss ignores.
        n_attn_blocks: attention blocks in the MobileViTv2 blocks of stages 3, 4 and 5.
        base_attn_unit_dims: attention width of those stages at width multiplier 1.
        width_multiplier: scales every channel count (0.5 ... 2.0 released).
        ffn_multiplier: width of the feed-forward layers relative to the attention width.
        attn_dropout, ffn_dropout: dropout of the attention scores and inside the feed-forward layers.
        out_features, out_indices: the feature maps `MobileViTV2Backbone` returns (transformers' Backbone API; names
            in `stage_names`: stem, stage1 .. stage5); default the last stage. The detector uses stage4 and stage5.
        ssd_*: the SSDLite detector (`mobilevit.ssd.configuration.SSDConfigMixin`; defaults: ml-cvnets' COCO SSDLite).
    """

    model_type = "mobilevitv2"

    num_channels: int = 3
    image_size: int | list[int] | tuple[int, int] = 256
    patch_size: int | list[int] | tuple[int, int] = 2
    expand_ratio: float = 2.0
    hidden_act: str = "swish"
    conv_kernel_size: int = 3
    output_stride: int = 32
    classifier_dropout_prob: float | int = 0.1
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-5
    aspp_out_channels: int = 512
    atrous_rates: list[int] | tuple[int, ...] = (6, 12, 18)
    aspp_dropout_prob: float | int = 0.1
    semantic_loss_ignore_index: int = 255
    n_attn_blocks: list[int] | tuple[int, ...] = (2, 4, 3)
    base_attn_unit_dims: list[int] | tuple[int, ...] = (128, 192, 256)
    width_multiplier: float | int = 1.0
    ffn_multiplier: int = 2
    attn_dropout: float | int = 0.0
    ffn_dropout: float | int = 0.0

    def __post_init__(self, **kwargs):
        set_backbone_outputs(self, STAGE_NAMES, kwargs)
        super().__post_init__(**kwargs)
        self.validate()

    @classmethod
    def from_variant(cls, variant: str, task: str = "image-classification", **kwargs) -> "MobileViTV2Config":
        """The config of a released width ("mobilevitv2-0.5" ... "mobilevitv2-2.0", see `canonical_variant`)
        for a task ("image-classification", "semantic-segmentation" or "object-detection"); `kwargs` override any
        field."""
        fields = {**VARIANTS[canonical_variant(variant)], **TASK_DEFAULTS[canonical_task(task, TASK_DEFAULTS)], **kwargs}
        return cls(**fields)

    @property
    def variant(self) -> str | None:
        """The released width this config has, or None for a custom architecture."""
        stock = (list(self.n_attn_blocks) == [2, 4, 3] and list(self.base_attn_unit_dims) == [128, 192, 256]
                 and float(self.expand_ratio) == 2.0 and self.ffn_multiplier == 2)
        for name, fields in VARIANTS.items():
            if stock and float(self.width_multiplier) == fields["width_multiplier"]:
                return name
        return None

    # -- the channel counts, derived from the width multiplier as ml-cvnets' `get_configuration` does -------
    @property
    def layer_widths(self) -> list[int]:
        """Output channels of the stem and of layer_1 .. layer_5."""
        width = self.width_multiplier
        stem = make_divisible(min(max(32 * width, 16), 64))
        return [stem, make_divisible(64 * width, divisor=16)] + [make_divisible(c * width) for c in (128, 256, 384, 512)]

    @property
    def attention_widths(self) -> list[int]:
        """Width of the attention blocks of layer_3, layer_4, layer_5 (ml-cvnets' `attn_unit_dim`)."""
        return [make_divisible(d * self.width_multiplier) for d in self.base_attn_unit_dims]

    @property
    def stage_channels(self) -> list[int]:
        """Channels of each map in `stage_names`: the stem and layer_1 .. layer_5."""
        return self.layer_widths

    def ffn_width(self, attention_width: int) -> int:
        """Width of a feed-forward layer: `ffn_multiplier` times the attention width, rounded down to 16."""
        return int(self.ffn_multiplier * attention_width // 16 * 16)

    # -- validation: every check names the field, what it expects and what came --------------------------
    def validate(self) -> None:
        check_labels(self)
        check_image_size(self)
        check_int(self, "num_channels", maximum=MAX_WIDTH)
        # every channel count is a released base width (at most 512) times the multiplier
        check_number(self, "width_multiplier", maximum=MAX_WIDTH / 512)
        check_int_list(self, "base_attn_unit_dims", 3, maximum=MAX_WIDTH)
        check_int_list(self, "n_attn_blocks", 3, maximum=64)
        check_int(self, "aspp_out_channels", maximum=MAX_WIDTH)
        check_int_list(self, "atrous_rates", 3, maximum=MAX_IMAGE_SIZE)
        check_choice(self, "patch_size", PATCH_SIZES)
        check_int(self, "conv_kernel_size", maximum=31)
        if self.conv_kernel_size % 2 == 0:
            fail(self, "conv_kernel_size", "an odd integer (the convolutions keep the feature map size)")
        check_choice(self, "output_stride", (8, 16, 32))
        for field in ("classifier_dropout_prob", "aspp_dropout_prob", "attn_dropout", "ffn_dropout"):
            check_probability(self, field)
        for field in ("expand_ratio", "ffn_multiplier"):  # widths times these are widths too
            check_number(self, field, maximum=MAX_RATIO)
        for field in ("layer_norm_eps", "initializer_range"):
            check_number(self, field)
        check_activation(self, "hidden_act", "'swish', 'silu', 'relu'")
        if not is_int(self.semantic_loss_ignore_index):
            fail(self, "semantic_loss_ignore_index", "an integer")
        self.validate_ssd()


__all__ = ["MobileViTV2Config", "VARIANTS", "TASK_DEFAULTS", "ADE20K_SEGMENTATION", "canonical_variant"]
