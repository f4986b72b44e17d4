"""MobileViT v1 (Mehta & Rastegari, ICLR 2022): the family's classes and its registry entry, `FAMILY`."""

from transformers.image_utils import PILImageResampling

from ...model_family import SHORTEST_EDGE_THEN_CROP, STRETCH, ModelFamily, Preprocessing
from ...tasks import CLASSIFICATION, FEATURE_EXTRACTION, OBJECT_DETECTION, SEGMENTATION
from .configuration_mobilevit import VARIANTS, MobileViTConfig, canonical_variant
from .conversion_mobilevit import CONVERTER
from .modeling_mobilevit import (
    MobileViTBackbone,
    MobileViTForImageClassification,
    MobileViTForObjectDetection,
    MobileViTForSemanticSegmentation,
    MobileViTModel,
    MobileViTPreTrainedModel,
)

FAMILY = ModelFamily(
    model_type=MobileViTConfig.model_type,
    title="MobileViT v1",
    config_class=MobileViTConfig,
    model_classes={
        CLASSIFICATION: MobileViTForImageClassification,
        SEGMENTATION: MobileViTForSemanticSegmentation,
        FEATURE_EXTRACTION: MobileViTModel,
        OBJECT_DETECTION: MobileViTForObjectDetection,
    },
    backbone_class=MobileViTBackbone,
    pretrained_class=MobileViTPreTrainedModel,
    variants=tuple(VARIANTS),
    canonical_variant=canonical_variant,
    converter=CONVERTER,
    # ml-cvnets v0.1 read images with OpenCV: cv2.imread (BGR) and cv2.resize(INTER_LINEAR); classification
    # and segmentation resize the shortest edge to the input size + 32 and crop the centre (stock
    # transformers' settings for these checkpoints); SSDLite stretches to 320x320
    preprocessing=Preprocessing(
        release="ml-cvnets v0.1", channel_order="BGR", resample=PILImageResampling.BILINEAR, antialias=False,
        resize={CLASSIFICATION: SHORTEST_EDGE_THEN_CROP, FEATURE_EXTRACTION: SHORTEST_EDGE_THEN_CROP,
                SEGMENTATION: SHORTEST_EDGE_THEN_CROP, OBJECT_DETECTION: STRETCH},
    ),
    description=(
        "MobileViT v1 (Mehta & Rastegari, ICLR 2022): MobileNetV2 stages followed by MobileViT blocks that "
        "unfold the feature map into 2x2 patches, mix them with a small transformer and fold them back."
    ),
    citation="""@inproceedings{mehta2022mobilevit,
  title     = {MobileViT: Light-weight, General-purpose, and Mobile-friendly Vision Transformer},
  author    = {Sachin Mehta and Mohammad Rastegari},
  booktitle = {International Conference on Learning Representations},
  year      = {2022},
  url       = {https://openreview.net/forum?id=vh-0sUt8HlG}
}""",
)

__all__ = [
    "FAMILY",
    "MobileViTConfig",
    "VARIANTS",
    "MobileViTPreTrainedModel",
    "MobileViTModel",
    "MobileViTForImageClassification",
    "MobileViTForSemanticSegmentation",
    "MobileViTForObjectDetection",
    "MobileViTBackbone",
]
