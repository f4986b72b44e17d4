"""SSDLite object detection, the part both MobileViT families share (ml-cvnets' `SingleShotMaskDetector` minus
the backbone), written once below the families:

- `boxes.py`: anchors, the box coder, corner/centre conversions and IoU;
- `modeling.py`: the extra layers and heads on a backbone's feature pyramid, and the output class;
- `loss.py`: the matcher, hard-negative mining and the multibox loss (training targets from `labels`; the
  `LabelMatcher` to match in the data pipeline instead);
- `postprocessing.py`: thresholds, class-wise NMS in plain torch and each release's rule.

Each family's `modeling_*.py` puts `SSDLite` on its backbone (`...ForObjectDetection`); the image processor's
`post_process_object_detection` runs `postprocessing.select_detections`; the eval fast path walks the layers
(`fast_inference.ssd_head`). Every rule reproduces ml-cvnets exactly (`shared/fixtures/mlcvnets_ssd/README.md`).
"""

from .boxes import AnchorGenerator, BoxCoder, box_iou, center_to_corners, corners_to_center
from .loss import LabelMatcher, MultiboxLoss, check_labels, detection_targets, match_anchors, multibox_loss
from .modeling import BACKBONE_STRIDES, GLOBAL_LEVEL, ObjectDetectionOutput, SSDHead, SSDLite
from .postprocessing import MLCVNETS_V01, MLCVNETS_V02, PostProcessing, class_wise_nms, select_detections

__all__ = ["AnchorGenerator", "BoxCoder", "box_iou", "center_to_corners", "corners_to_center", "LabelMatcher",
           "MultiboxLoss",
           "check_labels", "detection_targets", "match_anchors", "multibox_loss", "ObjectDetectionOutput", "SSDHead",
           "SSDLite", "BACKBONE_STRIDES", "GLOBAL_LEVEL", "PostProcessing", "MLCVNETS_V01", "MLCVNETS_V02",
           "class_wise_nms", "select_detections"]
