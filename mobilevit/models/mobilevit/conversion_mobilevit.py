"""ml-cvnets MobileViT v1 checkpoints: how to recognise them, read their size off the tensors, and rename them.

The layout is the one of ml-cvnets `cvnets-v0.1`, the code the released v1 checkpoints were trained with
(`shared/fixtures/mlcvnets/README.md`, "Checkpoint layout"); SSDLite detectors have the same layout in
cvnets-v0.1 and v0.2 (`shared/fixtures/mlcvnets_ssd/README.md`). The generic steps around this (reading the
file safely, unwrapping, checking every key, writing the folder) are `mobilevit/conversion_utils.py` and
`mobilevit/conversion.py`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


from ...conversion_utils import ConversionError, RenameTable
from ...ssd import GLOBAL_LEVEL, AnchorGenerator
from ...tasks import CLASSIFICATION, OBJECT_DETECTION, SEGMENTATION
from .configuration_mobilevit import VARIANTS, MobileViTConfig

# ---------------------------------------------------------------------------------------------------------
# The rename table: ml-cvnets key -> transformers key.
# Segmentation and detection checkpoints carry the backbone under `encoder.`, classification ones at the top level.
# ---------------------------------------------------------------------------------------------------------
_ENC = r"(?:encoder\.)?"
# ml-cvnets' ConvLayer holds `block.conv` and `block.norm`; transformers' holds `convolution` and `normalization`.
_CONV_LAYER = r"\.block\.(?P<conv_or_norm>conv|norm)\.(?P<leaf>\w+)"
_VIT_BLOCK = _ENC + r"layer_(?P<stage>[345])\.1\."  # the MobileViT block of stages 3-5 (index 0 downsamples)
_TRANSFORMER_LAYER = _VIT_BLOCK + r"global_rep\.(?P<i>\d+)\."
_HF_VIT_BLOCK = "mobilevit.encoder.layer.{stage}."
_HF_TRANSFORMER_LAYER = _HF_VIT_BLOCK + "transformer.layer.{i}."


# The parts ml-cvnets builds alike in MobileViT v1 and v2 (MobileViTv2's converter uses them too), for a
# backbone under `prefix` ("mobilevit" / "mobilevitv2" in transformers' key names).
def convolutional_rules(prefix: str) -> list[tuple[str, str]]:
    """The stem, the two MobileNetV2 stages and the downsampling inverted residual of stages 3-5 (inverted
    residuals: expand 1x1 -> depthwise 3x3 -> reduce 1x1)."""
    return [
        (_ENC + r"conv_1" + _CONV_LAYER, prefix + ".conv_stem.{conv_or_norm}.{leaf}"),
        (_ENC + r"layer_(?P<stage>[12])\.(?P<block>\d+)\.block\.(?P<op>exp_1x1|conv_3x3|red_1x1)" + _CONV_LAYER,
         prefix + ".encoder.layer.{stage}.layer.{block}.{op}.{conv_or_norm}.{leaf}"),
        (_ENC + r"layer_(?P<stage>[345])\.0\.block\.(?P<op>exp_1x1|conv_3x3|red_1x1)" + _CONV_LAYER,
         prefix + ".encoder.layer.{stage}.downsampling_layer.{op}.{conv_or_norm}.{leaf}"),
    ]


# DeepLabV3 head: ASPP (a 1x1 branch, three atrous 3x3 branches, image pooling), projection, classifier
DEEPLAB_RULES = [
    (r"seg_head\.aspp\.aspp_layer\.convs\.(?P<branch>[0-3])" + _CONV_LAYER,
     "segmentation_head.aspp.convs.{branch}.{conv_or_norm}.{leaf}"),
    (r"seg_head\.aspp\.aspp_layer\.convs\.4\.aspp_pool\.conv_1x1" + _CONV_LAYER,
     "segmentation_head.aspp.convs.4.conv_1x1.{conv_or_norm}.{leaf}"),
    (r"seg_head\.aspp\.aspp_layer\.project" + _CONV_LAYER, "segmentation_head.aspp.project.{conv_or_norm}.{leaf}"),
    # cvnets-v0.1 names it seg_head.classifier.classifier; later versions seg_head.classifier (same tensors)
    (r"seg_head\.classifier(?:\.classifier)?" + _CONV_LAYER, "segmentation_head.classifier.{conv_or_norm}.{leaf}"),
]
# SSDLite (both families, cvnets-v0.1 and v0.2 alike): the extra layers `extra_layers.os_<stride>` (separable
# convolutions, then the global level `os_-1`, a Sequential whose index 1 is the convolution after the pooling)
# and one head per level, `ssd_heads.<level>` (an optional 1x1 projection, then a separable convolution, or a
# 1x1 convolution on the global level). Extra layer `os_64` is the first, `os_128` the second, ...
SSD_RULES = [
    (r"extra_layers\.os_(?P<extra>\d+)\.(?P<part>dw_conv|pw_conv)" + _CONV_LAYER,
     "ssd.extra_layers.{extra}.{part}.{conv_or_norm}.{leaf}"),
    (r"extra_layers\.os_-1\.1" + _CONV_LAYER, "ssd.global_pool.projection.{conv_or_norm}.{leaf}"),
    (r"ssd_heads\.(?P<head>\d+)\.proj_layer" + _CONV_LAYER, "ssd.heads.{head}.projection.{conv_or_norm}.{leaf}"),
    (r"ssd_heads\.(?P<head>\d+)\.loc_cls_layer\.(?P<part>dw_conv|pw_conv)" + _CONV_LAYER,
     "ssd.heads.{head}.predictor.{part}.{conv_or_norm}.{leaf}"),
    (r"ssd_heads\.(?P<head>\d+)\.loc_cls_layer" + _CONV_LAYER, "ssd.heads.{head}.predictor.{conv_or_norm}.{leaf}"),
]
# group values that change name on the way (stage numbers are 1-based in ml-cvnets, 0-based in transformers)
VOCABULARY = {
    "conv_or_norm": {"conv": "convolution", "norm": "normalization"},
    "op": {"exp_1x1": "expand_1x1", "conv_3x3": "conv_3x3", "red_1x1": "reduce_1x1"},
    "stage": {"1": "0", "2": "1", "3": "2", "4": "3", "5": "4"},
    "part": {"dw_conv": "depthwise", "pw_conv": "pointwise"},
    "extra": {str(2 ** (6 + i)): str(i) for i in range(8)},  # os_64 -> 0, os_128 -> 1, ...
}
# the auxiliary segmentation head that ml-cvnets trains on layer_4 when `model.segmentation.use_aux_head` is
# on: the Hub format has no place for it, and inference does not use it
AUX_HEAD_DROPPED = [(r"seg_head\.aux_head\..+", "auxiliary segmentation head (training only)")]

RENAME_TABLE = RenameTable(
    rules=[
        *convolutional_rules("mobilevit"),
        # stages 3-5 after the downsampling block: the MobileViT block
        (_VIT_BLOCK + r"local_rep\.conv_3x3" + _CONV_LAYER, _HF_VIT_BLOCK + "conv_kxk.{conv_or_norm}.{leaf}"),
        (_VIT_BLOCK + r"local_rep\.conv_1x1" + _CONV_LAYER, _HF_VIT_BLOCK + "conv_1x1.{conv_or_norm}.{leaf}"),
        (_TRANSFORMER_LAYER + r"pre_norm_mha\.0\.(?P<leaf>weight|bias)",
         _HF_TRANSFORMER_LAYER + "layernorm_before.{leaf}"),
        # one packed (3d, d) projection: rows [0:d] query, [d:2d] key, [2d:3d] value
        (_TRANSFORMER_LAYER + r"pre_norm_mha\.1\.qkv_proj\.(?P<leaf>weight|bias)",
         _HF_TRANSFORMER_LAYER + "attention.attention.{qkv}.{leaf}"),
        (_TRANSFORMER_LAYER + r"pre_norm_mha\.1\.out_proj\.(?P<leaf>weight|bias)",
         _HF_TRANSFORMER_LAYER + "attention.output.dense.{leaf}"),
        (_TRANSFORMER_LAYER + r"pre_norm_ffn\.0\.(?P<leaf>weight|bias)",
         _HF_TRANSFORMER_LAYER + "layernorm_after.{leaf}"),
        (_TRANSFORMER_LAYER + r"pre_norm_ffn\.1\.(?P<leaf>weight|bias)",
         _HF_TRANSFORMER_LAYER + "intermediate.dense.{leaf}"),
        (_TRANSFORMER_LAYER + r"pre_norm_ffn\.4\.(?P<leaf>weight|bias)",
         _HF_TRANSFORMER_LAYER + "output.dense.{leaf}"),
        # the LayerNorm closing the transformer stack is global_rep.<number of layers>, without a sub-name
        (_VIT_BLOCK + r"global_rep\.\d+\.(?P<leaf>weight|bias)", _HF_VIT_BLOCK + "layernorm.{leaf}"),
        (_VIT_BLOCK + r"conv_proj" + _CONV_LAYER, _HF_VIT_BLOCK + "conv_projection.{conv_or_norm}.{leaf}"),
        (_VIT_BLOCK + r"fusion" + _CONV_LAYER, _HF_VIT_BLOCK + "fusion.{conv_or_norm}.{leaf}"),
        # classification head: 1x1 expansion, global pooling, linear classifier
        (r"conv_1x1_exp" + _CONV_LAYER, "mobilevit.conv_1x1_exp.{conv_or_norm}.{leaf}"),
        (r"classifier\.fc\.(?P<leaf>weight|bias)", "classifier.{leaf}"),
        *DEEPLAB_RULES,
        *SSD_RULES,
    ],
    vocabulary=VOCABULARY,
    dropped=AUX_HEAD_DROPPED,
    splits={"qkv": ("query", "key", "value")},
)

_SEG_CLASSIFIER = re.compile(r"seg_head\.classifier(?:\.classifier)?\.block\.conv\.weight")
# v1's local representation names its convolutions (MobileViTv2's are numbered: local_rep.0, local_rep.1)
_V1_MARKER = re.compile(r"(?:encoder\.)?layer_3\.1\.local_rep\.conv_3x3\.block\.conv\.weight")


def task_from_heads(state_dict, classifier_key: str, source: str) -> str:
    """Segmentation (`seg_head.*` keys), detection (`ssd_heads.*`) or classification (`classifier_key`), as an
    ml-cvnets checkpoint's keys say (both families); `source` names the layout in the error."""
    found = {SEGMENTATION: any(k.startswith("seg_head.") for k in state_dict),
             OBJECT_DETECTION: any(k.startswith("ssd_heads.") for k in state_dict),
             CLASSIFICATION: classifier_key in state_dict}
    heads = {CLASSIFICATION: f"a classifier ({classifier_key})", SEGMENTATION: "a segmentation head (seg_head.*)",
             OBJECT_DETECTION: "SSD heads (ssd_heads.*)"}
    present = [task for task, there in found.items() if there]
    if len(present) > 1:
        raise ConversionError(f"checkpoint: holds {' and '.join(heads[t] for t in present)}; expected one of them")
    if present:
        return present[0]
    raise ConversionError(
        f"checkpoint: does not look like an {source} checkpoint: expected {classifier_key!r} (classification), "
        f"'seg_head.*' keys (DeepLabV3 segmentation) or 'ssd_heads.*' keys (SSDLite detection); its first keys are "
        f"{list(state_dict)[:6]}")


def channel_reader(state_dict, task: str, source: str):
    """`out_channels(key)`: the output channels of an ml-cvnets backbone weight (found under `encoder.` in
    segmentation and detection checkpoints); a missing key is a ConversionError naming it."""
    prefix = "encoder." if task in (SEGMENTATION, OBJECT_DETECTION) else ""

    def out_channels(key: str) -> int:
        tensor = state_dict.get(prefix + key)
        if tensor is None:
            raise ConversionError(f"checkpoint: does not look like an {source} {task} checkpoint: key "
                                  f"{prefix + key!r} is missing (its first keys are {list(state_dict)[:6]})")
        return int(tensor.shape[0])

    return out_channels


@dataclass
class Architecture:
    """The widths read off the tensors, in `MobileViTConfig`'s terms."""

    hidden_sizes: list[int]
    neck_hidden_sizes: list[int]  # without the final expansion, which segmentation checkpoints lack
    expand_ratio: float


class MobileViTCheckpointConverter:
    """ml-cvnets MobileViT v1 checkpoints (classification and DeepLabV3): see `CheckpointConverter`."""

    source = "ml-cvnets MobileViT v1"
    rename_table = RENAME_TABLE

    def claims(self, state_dict) -> bool:
        return any(_V1_MARKER.fullmatch(key) for key in state_dict)

    def detect_task(self, state_dict) -> str:
        return task_from_heads(state_dict, "classifier.fc.weight", self.source)

    def read_architecture(self, state_dict, task: str) -> Architecture:
        out_channels = channel_reader(state_dict, task, self.source)
        conv = "block.conv.weight"
        neck = [out_channels(f"conv_1.{conv}"), out_channels(f"layer_1.0.block.red_1x1.{conv}"),
                out_channels(f"layer_2.0.block.red_1x1.{conv}")]
        neck += [out_channels(f"layer_{stage}.1.fusion.{conv}") for stage in (3, 4, 5)]
        hidden = [out_channels(f"layer_{stage}.1.local_rep.conv_1x1.{conv}") for stage in (3, 4, 5)]
        expand_ratio = out_channels(f"layer_1.0.block.exp_1x1.{conv}") / neck[0]
        return Architecture(hidden, neck, float(expand_ratio))

    def detect_variant(self, state_dict, task: str) -> str:
        arch = self.read_architecture(state_dict, task)
        for name, fields in VARIANTS.items():
            if (arch.hidden_sizes == fields["hidden_sizes"] and arch.neck_hidden_sizes == fields["neck_hidden_sizes"][:6]
                    and arch.expand_ratio == float(fields.get("expand_ratio", 4.0))):
                return name
        raise ConversionError(
            f"checkpoint: its widths match no released MobileViT v1 variant: transformer widths {arch.hidden_sizes}, "
            f"stage widths {arch.neck_hidden_sizes}, expansion {arch.expand_ratio:g}; known: "
            + "; ".join(f"{n}: {f['hidden_sizes']}, {f['neck_hidden_sizes'][:6]}" for n, f in VARIANTS.items()))

    def num_labels(self, state_dict, task: str) -> int:
        if task == OBJECT_DETECTION:
            return read_ssd(state_dict, MobileViTConfig)["num_labels"]
        if task == CLASSIFICATION:
            return int(state_dict["classifier.fc.weight"].shape[0])
        classifier = [v for k, v in state_dict.items() if _SEG_CLASSIFIER.fullmatch(k)]
        if not classifier:
            raise ConversionError("checkpoint: the segmentation head has no classifier "
                                  "('seg_head.classifier.classifier.block.conv.weight' is missing)")
        return int(classifier[0].shape[0])

    def config_overrides(self, state_dict, task: str) -> dict:
        if task == OBJECT_DETECTION:
            return {k: v for k, v in read_ssd(state_dict, MobileViTConfig).items() if k != "num_labels"}
        return {}  # the released v1 segmenters are all output stride 16, the task's default


_SSD_HEAD = re.compile(r"ssd_heads\.(\d+)\.")
_SSD_EXTRA = re.compile(r"extra_layers\.os_(-?\d+)\.")


def read_ssd(state_dict, config_class) -> dict:
    """What an ml-cvnets SSD checkpoint's tensors say about its detector, in config terms: the levels
    (`ssd_output_strides`: the backbone levels 16 and 32 below the extra layers `os_64`, ... and the global
    `os_-1`), the heads' widths (`ssd_projection_channels`) and the class count. The anchors per location
    cannot be read off the tensors, only checked: a head's outputs are anchors x (4 + classes), with the anchors
    of the default aspect ratios (6, or 4 on the global level)."""
    heads = sorted({int(m.group(1)) for key in state_dict if (m := _SSD_HEAD.match(key))})
    extras = sorted({int(m.group(1)) for key in state_dict if (m := _SSD_EXTRA.match(key))} - {GLOBAL_LEVEL})
    has_global = any(key.startswith("extra_layers.os_-1.") for key in state_dict)
    if heads != list(range(len(heads))) or not heads:
        raise ConversionError(f"checkpoint: expected SSD heads ssd_heads.0 .. ssd_heads.N, got heads {heads}")
    backbone = [8, 16, 32][3 - (len(heads) - len(extras) - has_global):]
    strides = backbone + extras + [GLOBAL_LEVEL] * has_global
    widths, outputs = [], []
    for level, stride in enumerate(strides):
        prefix = f"ssd_heads.{level}.loc_cls_layer."
        if stride == GLOBAL_LEVEL:
            widths.append(int(state_dict["extra_layers.os_-1.1.block.conv.weight"].shape[0]))
            outputs.append(int(state_dict[prefix + "block.conv.weight"].shape[0]))
        else:
            widths.append(int(state_dict[prefix + "dw_conv.block.conv.weight"].shape[0]))
            outputs.append(int(state_dict[prefix + "pw_conv.block.conv.weight"].shape[0]))
    try:
        defaults = config_class(ssd_output_strides=strides, ssd_projection_channels=widths,
                                ssd_aspect_ratios=[[2, 3]] * (len(strides) - has_global) + [[2]] * has_global)
    except ValueError as err:
        raise ConversionError(f"checkpoint: its SSD levels ({strides}) are not a detector this package builds ({err})"
                              ) from None
    anchors = AnchorGenerator(defaults.ssd_aspect_ratios).anchors_per_location
    classes = {out // count - 4 if out % count == 0 else None for out, count in zip(outputs, anchors)}
    if len(classes) != 1 or None in classes or min(classes) < 2:
        raise ConversionError(f"checkpoint: the SSD heads' outputs {outputs} are not anchors x (4 + classes) for "
                              f"the default anchors per location {anchors} with one class count")
    return {"ssd_output_strides": strides, "ssd_projection_channels": widths,
            "ssd_aspect_ratios": defaults.ssd_aspect_ratios, "num_labels": classes.pop()}


def rename_key(key: str) -> str | None:
    """The transformers key for one ml-cvnets key (packed qkv keys keep their `{qkv}` placeholder)."""
    return RENAME_TABLE.rename(key)


CONVERTER = MobileViTCheckpointConverter()

__all__ = ["RENAME_TABLE", "CONVERTER", "convolutional_rules", "DEEPLAB_RULES", "SSD_RULES", "VOCABULARY",
           "AUX_HEAD_DROPPED", "task_from_heads", "channel_reader", "read_ssd", "MobileViTCheckpointConverter",
           "Architecture", "rename_key"]
