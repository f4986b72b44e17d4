"""MobileViTv2 (Mehta & Rastegari 2022): the family's classes and its registry entry, `FAMILY`."""

from transformers.image_utils import PILImageResampling

from ...model_family import SHORTEST_EDGE_THEN_CROP, STRETCH, ModelFamily, Preprocessing
from ...tasks import CLASSIFICATION, FEATURE_EXTRACTION, OBJECT_DETECTION, SEGMENTATION
from .configuration_mobilevitv2 import VARIANTS, MobileViTV2Config, canonical_variant
from .conversion_mobilevitv2 import CONVERTER
from .modeling_mobilevitv2 import (
    MobileViTV2Backbone,
    MobileViTV2ForImageClassification,
    MobileViTV2ForObjectDetection,
    MobileViTV2ForSemanticSegmentation,
    MobileViTV2Model,
    MobileViTV2PreTrainedModel,
)

FAMILY = ModelFamily(
    model_type=MobileViTV2Config.model_type,
    title="MobileViT v2",
    config_class=MobileViTV2Config,
    model_classes={
        CLASSIFICATION: MobileViTV2ForImageClassification,
        SEGMENTATION: MobileViTV2ForSemanticSegmentation,
        FEATURE_EXTRACTION: MobileViTV2Model,
        OBJECT_DETECTION: MobileViTV2ForObjectDetection,
    },
    backbone_class=MobileViTV2Backbone,
    pretrained_class=MobileViTV2PreTrainedModel,
    variants=tuple(VARIANTS),
    canonical_variant=canonical_variant,
    converter=CONVERTER,
    # ml-cvnets v0.2 read every data set with Pillow (RGB) and resized with its bicubic filter (the yaml files'
    # `interpolation: "bicubic"`): ImageNet shortest edge 288 then centre crop 256 (the 384 fine-tunes: 384 and
    # 384); PASCAL VOC and ADE20k [512, 512]; SSDLite [320, 320]
    preprocessing=Preprocessing(
        release="ml-cvnets v0.2", channel_order="RGB", resample=PILImageResampling.BICUBIC, antialias=True,
        resize={CLASSIFICATION: SHORTEST_EDGE_THEN_CROP, FEATURE_EXTRACTION: SHORTEST_EDGE_THEN_CROP,
                SEGMENTATION: STRETCH, OBJECT_DETECTION: STRETCH},
        shortest_edge={384: 384},
    ),
    description=(
        "MobileViT v2 (Mehta & Rastegari, 2022): MobileNetV2 stages followed by MobileViTv2 blocks whose "
        "separable self-attention mixes 2x2 patches in time linear in their number (one context score per "
        "token, softmax over the patches, a context vector weighing the values), with GroupNorm and 1x1 "
        "convolutions throughout; one width multiplier (0.5 to 2.0) scales every layer. The weights follow "
        "ml-cvnets v0.2 exactly, including its dilated blocks for segmentation and its align_corners=True "
        "upsampling of segmentation logits."
    ),
    citation="""@article{mehta2022separable,
  title   = {Separable Self-attention for Mobile Vision Transformers},
  author  = {Sachin Mehta and Mohammad Rastegari},
  journal = {arXiv preprint arXiv:2206.02680},
  year    = {2022},
  url     = {https://arxiv.org/abs/2206.02680}
}""",
)

__all__ = [
    "FAMILY",
    "MobileViTV2Config",
    "VARIANTS",
    "MobileViTV2PreTrainedModel",
    "MobileViTV2Model",
    "MobileViTV2ForImageClassification",
    "MobileViTV2ForSemanticSegmentation",
    "MobileViTV2ForObjectDetection",
    "MobileViTV2Backbone",
]
