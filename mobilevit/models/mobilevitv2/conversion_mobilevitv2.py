"""ml-cvnets MobileViTv2 checkpoints: how to recognise them, read their width off the tensors, and rename them.

The layout is the one of ml-cvnets `cvnets-v0.2`, the code the released v2 checkpoints come from
(`shared/fixtures/mlcvnets_v2/README.md`, "Checkpoint layout"). The generic steps around this (reading the file
safely, unwrapping, checking every key, writing the folder) are `mobilevit/conversion_utils.py` and
`mobilevit/conversion.py`.

What the tensors cannot say: the output stride and the ASPP rates of a DeepLabV3 checkpoint (dilations have
no weights). `config_overrides` uses ml-cvnets' recipe of the data set the class count points to: ADE20k
(150 classes, or 151 with a background class) output stride 8 and rates 12/24/36, anything else PASCAL VOC's
16 and 6/12/18 (`mobilevit convert --output-stride` overrides it).
"""

from __future__ import annotations

from ...conversion_utils import ConversionError, RenameTable
from ...tasks import CLASSIFICATION, OBJECT_DETECTION, SEGMENTATION
from ..mobilevit.conversion_mobilevit import (
    AUX_HEAD_DROPPED,
    DEEPLAB_RULES,
    SSD_RULES,
    VOCABULARY,
    channel_reader,
    convolutional_rules,
    read_ssd,
    task_from_heads,
)
from .configuration_mobilevitv2 import ADE20K_SEGMENTATION, VARIANTS, MobileViTV2Config

# ---------------------------------------------------------------------------------------------------------
# The rename table: ml-cvnets key -> transformers key.
# Segmentation checkpoints carry the backbone under `encoder.`, classification ones at the top level.
# ---------------------------------------------------------------------------------------------------------
_ENC = r"(?:encoder\.)?"
_CONV_LAYER = r"\.block\.(?P<conv_or_norm>conv|norm)\.(?P<leaf>\w+)"  # ml-cvnets' ConvLayer
_BLOCK = _ENC + r"layer_(?P<stage>[345])\.1\."  # the MobileViTv2 block of stages 3-5 (index 0 downsamples)
_ATTENTION = _BLOCK + r"global_rep\.(?P<i>\d+)\."
_HF_BLOCK = "mobilevitv2.encoder.layer.{stage}."
_HF_ATTENTION = _HF_BLOCK + "transformer.layer.{i}."

RENAME_TABLE = RenameTable(
    rules=[
        # the stem, the MobileNetV2 stages and the downsampling blocks are named as in v1
        *convolutional_rules("mobilevitv2"),
        # local representation: numbered, not named as in v1 (0: depthwise kxk + BN, 1: 1x1 to the attention width)
        (_BLOCK + r"local_rep\.0" + _CONV_LAYER, _HF_BLOCK + "conv_kxk.{conv_or_norm}.{leaf}"),
        (_BLOCK + r"local_rep\.1" + _CONV_LAYER, _HF_BLOCK + "conv_1x1.{conv_or_norm}.{leaf}"),
        # attention blocks: GroupNorm + separable attention, GroupNorm + FFN (indices 2 and 2/4 are dropouts)
        (_ATTENTION + r"pre_norm_attn\.0\.(?P<leaf>weight|bias)", _HF_ATTENTION + "layernorm_before.{leaf}"),
        # qkv_proj stays packed (1 + 2d output channels: query, keys, values), as in transformers
        (_ATTENTION + r"pre_norm_attn\.1\.(?P<proj>qkv_proj|out_proj)" + _CONV_LAYER,
         _HF_ATTENTION + "attention.{proj}.{conv_or_norm}.{leaf}"),
        (_ATTENTION + r"pre_norm_ffn\.0\.(?P<leaf>weight|bias)", _HF_ATTENTION + "layernorm_after.{leaf}"),
        (_ATTENTION + r"pre_norm_ffn\.(?P<ffn>[13])" + _CONV_LAYER, _HF_ATTENTION + "ffn.{ffn}.{conv_or_norm}.{leaf}"),
        # the GroupNorm closing the attention stack is global_rep.<number of blocks>, without a sub-name
        (_BLOCK + r"global_rep\.\d+\.(?P<leaf>weight|bias)", _HF_BLOCK + "layernorm.{leaf}"),
        (_BLOCK + r"conv_proj" + _CONV_LAYER, _HF_BLOCK + "conv_projection.{conv_or_norm}.{leaf}"),
        # classification head: index 0 is the global pooling, 1 the linear classifier (no 1x1 expansion in v2)
        (r"classifier\.1\.(?P<leaf>weight|bias)", "classifier.{leaf}"),
        # the DeepLabV3 head, as in v1 (v0.2's classifier is `seg_head.classifier.block.conv`), and SSDLite's
        *DEEPLAB_RULES,
        *SSD_RULES,
    ],
    vocabulary={**VOCABULARY, "ffn": {"1": "conv1", "3": "conv2"}},
    # both v2 DeepLabV3 recipes train the auxiliary head on layer_4 (`use_aux_head: true`)
    dropped=AUX_HEAD_DROPPED,
)

_CLASSIFIER = "classifier.1.weight"
_SEG_CLASSIFIER = "seg_head.classifier.block.conv.weight"
_ASPP_PROJECTION = "seg_head.aspp.aspp_layer.project.block.conv.weight"
# v2's attention blocks name their norm `pre_norm_attn` and wrap the qkv projection in a ConvLayer (v1:
# `pre_norm_mha`, a Linear)
_V2_MARKER = "layer_3.1.global_rep.0.pre_norm_attn.1.qkv_proj.block.conv.weight"
# ml-cvnets' data sets whose class count a DeepLabV3 checkpoint may have, and their recipes
ADE20K_CLASS_COUNTS = (150, 151)  # ml-cvnets v0.2 drops ADE20k's background; other exports keep it


class MobileViTV2CheckpointConverter:
    """ml-cvnets MobileViTv2 checkpoints (classification and DeepLabV3): see `CheckpointConverter`."""

    source = "ml-cvnets MobileViTv2"
    rename_table = RENAME_TABLE

    def claims(self, state_dict) -> bool:
        return _V2_MARKER in state_dict or "encoder." + _V2_MARKER in state_dict

    def detect_task(self, state_dict) -> str:
        return task_from_heads(state_dict, _CLASSIFIER, self.source)

    def read_widths(self, state_dict, task: str) -> dict[str, list[int]]:
        """Channel counts and attention depths, in `MobileViTV2Config`'s terms, read off the tensors."""
        out_channels = channel_reader(state_dict, task, self.source)
        prefix = "encoder." if task in (SEGMENTATION, OBJECT_DETECTION) else ""
        conv = "block.conv.weight"
        layers = [out_channels(f"conv_1.{conv}")]
        layers += [out_channels(f"layer_{stage}.0.block.red_1x1.{conv}") for stage in range(1, 6)]
        attention = [out_channels(f"layer_{stage}.1.local_rep.1.{conv}") for stage in (3, 4, 5)]
        depths = [sum(1 for key in state_dict if key.startswith(f"{prefix}layer_{stage}.1.global_rep.")
                      and key.endswith(".pre_norm_attn.0.weight")) for stage in (3, 4, 5)]
        return {"layer_widths": layers, "attention_widths": attention, "n_attn_blocks": depths}

    def detect_variant(self, state_dict, task: str) -> str:
        found = self.read_widths(state_dict, task)
        for name in VARIANTS:
            config = MobileViTV2Config.from_variant(name)
            if found == {"layer_widths": config.layer_widths, "attention_widths": config.attention_widths,
                         "n_attn_blocks": list(config.n_attn_blocks)}:
                return name
        known = "; ".join(f"{name}: {MobileViTV2Config.from_variant(name).layer_widths}" for name in VARIANTS)
        raise ConversionError(
            f"checkpoint: its widths match no released MobileViTv2 width: stem and stage widths "
            f"{found['layer_widths']}, attention widths {found['attention_widths']}, attention depths "
            f"{found['n_attn_blocks']}; known stem and stage widths: {known}")

    def num_labels(self, state_dict, task: str) -> int:
        if task == OBJECT_DETECTION:
            return read_ssd(state_dict, MobileViTV2Config)["num_labels"]
        key = _CLASSIFIER if task == CLASSIFICATION else _SEG_CLASSIFIER
        if key not in state_dict:
            raise ConversionError(f"checkpoint: the {task} head has no classifier ({key!r} is missing)")
        return int(state_dict[key].shape[0])

    def config_overrides(self, state_dict, task: str) -> dict:
        if task == OBJECT_DETECTION:
            return {k: v for k, v in read_ssd(state_dict, MobileViTV2Config).items() if k != "num_labels"}
        if task != SEGMENTATION:
            return {}
        overrides = {"aspp_out_channels": int(state_dict[_ASPP_PROJECTION].shape[0])} if _ASPP_PROJECTION in state_dict else {}
        if self.num_labels(state_dict, task) in ADE20K_CLASS_COUNTS:
            overrides.update(ADE20K_SEGMENTATION)
        return overrides


def rename_key(key: str) -> str | None:
    """The transformers key for one ml-cvnets key."""
    return RENAME_TABLE.rename(key)


CONVERTER = MobileViTV2CheckpointConverter()

__all__ = ["RENAME_TABLE", "CONVERTER", "MobileViTV2CheckpointConverter", "ADE20K_CLASS_COUNTS", "rename_key"]
