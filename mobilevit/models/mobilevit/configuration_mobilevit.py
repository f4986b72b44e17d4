"""MobileViT configuration: the fields of the Hub's `apple/mobilevit-*` configs and the table of variants.

The field names, defaults and JSON are those of stock transformers' `MobileViTConfig`, so a `config.json`
written here loads there and the other way round. The three released sizes differ only in data, which
lives in `VARIANTS`; `MobileViTConfig.from_variant("x-small")` reads it.
"""

from __future__ import annotations

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
    set_backbone_outputs,
)
from ...ssd.configuration import SSDConfigMixin
from ...tasks import CLASSIFICATION, OBJECT_DETECTION, SEGMENTATION, canonical_task

# Widths of the released models (ml-cvnets `mobilevit_{xx_small,x_small,small}.yaml`).
# neck_hidden_sizes: stem, layer_1 .. layer_5 outputs, the final 1x1 expansion.
# hidden_sizes: transformer width inside the MobileViT blocks of layer_3, layer_4, layer_5.
VARIANTS: dict[str, dict] = {
    "xx-small": {
        "hidden_sizes": [64, 80, 96],
        "neck_hidden_sizes": [16, 16, 24, 48, 64, 80, 320],
        "expand_ratio": 2.0,
        "hidden_dropout_prob": 0.05,
    },
    "x-small": {
        "hidden_sizes": [96, 120, 144],
        "neck_hidden_sizes": [16, 32, 48, 64, 80, 96, 384],
    },
    "small": {
        "hidden_sizes": [144, 192, 240],
        "neck_hidden_sizes": [16, 32, 64, 96, 128, 160, 640],
    },
}

# Other spellings people use for the same variants (ml-cvnets file names, the paper's abbreviations).
VARIANT_ALIASES = {
    "xxs": "xx-small", "xx_small": "xx-small", "mobilevit_xxs": "xx-small",
    "xs": "x-small", "x_small": "x-small", "mobilevit_xs": "x-small",
    "s": "small", "mobilevit_s": "small",
}

# What a task changes on top of a variant (the Hub's `apple/mobilevit-*` and `apple/deeplabv3-mobilevit-*`).
TASK_DEFAULTS: dict[str, dict] = {
    CLASSIFICATION: {"image_size": 256, "output_stride": 32},
    SEGMENTATION: {"image_size": 512, "output_stride": 16},
    # ml-cvnets' SSDLite at 320x320: the backbone's stride-16 and stride-32 maps feed the detector
    OBJECT_DETECTION: {"image_size": 320, "output_stride": 32, "out_features": ["stage4", "stage5"]},
}

# Blocks per stage of the architecture (fixed by the paper, not a config field): layer_1, layer_2 are
# MobileNetV2 stages; layer_3..layer_5 are MobileViT blocks holding this many transformer layers.
MOBILENET_STAGE_DEPTHS = (1, 3)
TRANSFORMER_DEPTHS = (2, 4, 3)
# The backbone's feature maps as transformers' Backbone API names them (`out_features`): the stem, then
# layer_1 .. layer_5 (output strides 2, 2, 4, 8, 16, 32 without dilation).
STAGE_NAMES = ["stem", "stage1", "stage2", "stage3", "stage4", "stage5"]
STAGE_STRIDES = (2, 2, 4, 8, 16, 32)


def canonical_variant(name: str) -> str:
    """Map any accepted spelling of a variant to its key in `VARIANTS`."""
    key = str(name).strip().lower().replace(" ", "-")
    key = VARIANT_ALIASES.get(key, key)
    if key not in VARIANTS:
        known = sorted(VARIANTS) + sorted(VARIANT_ALIASES)
        raise ValueError(f"variant: expected one of {known}, got {name!r}")
    return key


class MobileViTConfig(BackboneConfigMixin, SSDConfigMixin, PreTrainedConfig):
    r"""Configuration of a MobileViT (v1) model; defaults give `apple/mobilevit-small`.

    Args:
        num_channels: channels of the input image.
        image_size: the resolution the checkpoint was trained at (informational; any size runs).
        patch_size: side of the square patches the MobileViT blocks unfold into: 1, 2, 4 or 8 (2 in every
            release).
        hidden_sizes: transformer width in the MobileViT blocks of stages 3, 4 and 5.
        neck_hidden_sizes: channels of the stem, stages 1-5 and the final 1x1 expansion (7 values).
        num_attention_heads: heads in every transformer layer; must divide each of `hidden_sizes`.
        mlp_ratio: width of the transformer feed-forward layer relative to its hidden size.
        expand_ratio: expansion of the MobileNetV2 inverted residual blocks.
        hidden_act: activation of the backbone and the transformer feed-forward layers.
        conv_kernel_size: kernel of the local-representation and fusion convolutions.
        output_stride: 32 for classification; 16 or 8 dilates the last stages for segmentation.
        hidden_dropout_prob, attention_probs_dropout_prob, classifier_dropout_prob: dropout rates.
        initializer_range: std of the truncated normal used for linear layers.
        layer_norm_eps: epsilon of the transformer LayerNorms.
        qkv_bias: whether the query/key/value projections have a bias.
        aspp_out_channels, atrous_rates, aspp_dropout_prob: the DeepLabV3 head.
        semantic_loss_ignore_index: label value the segmentation loss ignores.
        out_features, out_indices: the feature maps `MobileViTBackbone` returns (transformers' Backbone API; names
            in `stage_names`: stem, stage1 .. stage5); default the last stage. The detector uses stage4 and stage5.
        ssd_*: the SSDLite detector (`mobilevit.ssd.configuration.SSDConfigMixin`; defaults: ml-cvnets' COCO SSDLite).
    """

    model_type = "mobilevit"

    num_channels: int = 3
    image_size: int | list[int] | tuple[int, int] = 256
    patch_size: int | list[int] | tuple[int, int] = 2
    hidden_sizes: list[int] | tuple[int, ...] = (144, 192, 240)
    neck_hidden_sizes: list[int] | tuple[int, ...] = (16, 32, 64, 96, 128, 160, 640)
    num_attention_heads: int = 4
    mlp_ratio: float = 2.0
    expand_ratio: float = 4.0
    hidden_act: str = "silu"
    conv_kernel_size: int = 3
    output_stride: int = 32
    hidden_dropout_prob: float | int = 0.1
    attention_probs_dropout_prob: float | int = 0.0
    classifier_dropout_prob: float | int = 0.1
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-5
    qkv_bias: bool = True
    aspp_out_channels: int = 256
    atrous_rates: list[int] | tuple[int, ...] = (6, 12, 18)
    aspp_dropout_prob: float | int = 0.1
    semantic_loss_ignore_index: int = 255

    def __post_init__(self, **kwargs):
        set_backbone_outputs(self, STAGE_NAMES, kwargs)
        super().__post_init__(**kwargs)
        self.validate()

    @classmethod
    def from_variant(cls, variant: str, task: str = "image-classification", **kwargs) -> "MobileViTConfig":
        """The config of a released variant ("xx-small", "x-small", "small") for a task ("image-classification",
        "semantic-segmentation" or "object-detection"); `kwargs` override any field."""
        fields = {**VARIANTS[canonical_variant(variant)], **TASK_DEFAULTS[canonical_task(task, TASK_DEFAULTS)], **kwargs}
        return cls(**fields)

    @property
    def variant(self) -> str | None:
        """The released variant whose widths this config has, or None for a custom architecture."""
        for name, fields in VARIANTS.items():
            if list(self.hidden_sizes) == fields["hidden_sizes"] and list(self.neck_hidden_sizes) == fields[
                "neck_hidden_sizes"
            ] and float(self.expand_ratio) == float(fields.get("expand_ratio", 4.0)):
                return name
        return None

    # -- validation: every check names the field, what it expects and what came (configuration_utils) ------
    def validate(self) -> None:
        check_labels(self)
        check_image_size(self)
        check_int(self, "num_channels", maximum=MAX_WIDTH)
        check_int_list(self, "hidden_sizes", len(TRANSFORMER_DEPTHS), maximum=MAX_WIDTH)
        check_int_list(self, "neck_hidden_sizes", 2 + len(MOBILENET_STAGE_DEPTHS) + len(TRANSFORMER_DEPTHS),
                       maximum=MAX_WIDTH)
        check_int(self, "aspp_out_channels", maximum=MAX_WIDTH)
        check_int(self, "num_attention_heads", maximum=min(self.hidden_sizes))
        check_int_list(self, "atrous_rates", 3, maximum=MAX_IMAGE_SIZE)
        for width in self.hidden_sizes:
            if width % self.num_attention_heads:
                fail(self, "hidden_sizes", f"widths divisible by num_attention_heads={self.num_attention_heads}")
        check_choice(self, "patch_size", PATCH_SIZES)
        check_int(self, "conv_kernel_size", maximum=31)
        if self.conv_kernel_size % 2 == 0:
            fail(self, "conv_kernel_size", "an odd integer (the convolutions keep the feature map size)")
        check_choice(self, "output_stride", (8, 16, 32))
        for field in ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout_prob",
                      "aspp_dropout_prob"):
            check_probability(self, field)
        for field in ("mlp_ratio", "expand_ratio"):  # widths times these are widths too
            check_number(self, field, maximum=MAX_RATIO)
        for field in ("layer_norm_eps", "initializer_range"):
            check_number(self, field)
        check_activation(self, "hidden_act", "'silu', 'relu', 'gelu'")
        if not is_int(self.semantic_loss_ignore_index):
            fail(self, "semantic_loss_ignore_index", "an integer")
        self.validate_ssd()

    @property
    def stage_channels(self) -> list[int]:
        """Channels of each map in `stage_names`: the stem and layer_1 .. layer_5."""
        return list(self.neck_hidden_sizes[:6])


__all__ = ["MobileViTConfig", "VARIANTS", "TASK_DEFAULTS", "STAGE_NAMES", "STAGE_STRIDES", "canonical_variant"]
