"""The config fields of an SSDLite detector, the same in every family (mixed into each family's config).

Defaults are ml-cvnets' COCO detectors (`config/detection/ssd_mobilevit_*.yaml`, cvnets-v0.2's
`ssd_coco/mobilevit_v2.yaml`): six levels at output strides 16, 32, 64, 128, 256 and the global one (-1),
head widths 512, 256, 256, 128, 128, 64, aspect ratios {2, 3} (only 2 on the global level), anchor scales from
0.1 to 1.05, box variances 0.1 / 0.2, IoU 0.5 to match anchors and three mined negatives per positive. A
released detector's config.json therefore holds none of them (transformers writes only what differs from the
defaults); a detector of other strides, widths or anchors is a config, not code.

The post-processing rule (thresholds, NMS, caps) belongs to the image processor (`detection_postprocessing`
in `preprocessor_config.json`), as transformers keeps post-processing there.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..configuration_utils import MAX_WIDTH, check_activation, fail, is_int, is_number
from .modeling import BACKBONE_STRIDES, GLOBAL_LEVEL

MAX_LEVELS = 12
MAX_ASPECT_RATIO = 64


@dataclass(kw_only=True)
class SSDConfigMixin:
    r"""
    ssd_output_strides: output stride of each level, in order: backbone levels (8, 16, 32; 32 must be one, the
        extra layers continue from it), then extra levels each twice the one before, then optionally -1, the
        globally pooled level.
    ssd_projection_channels: width of each level's head (and of the extra layers' outputs).
    ssd_aspect_ratios: per level, the aspect ratios of its anchors besides the two square ones.
    ssd_min_scale, ssd_max_scale: the anchor scales, spread linearly over the levels (plus one).
    ssd_center_variance, ssd_size_variance: the box coder's variances.
    ssd_matcher_iou_threshold: IoU with a ground-truth box from which an anchor is a positive in training.
    ssd_negative_ratio: hard negatives mined per positive in the loss.
    ssd_activation: activation of the extra layers and head projections (the backbone keeps `hidden_act`).
    """

    ssd_output_strides: list[int] | tuple[int, ...] = (16, 32, 64, 128, 256, -1)
    ssd_projection_channels: list[int] | tuple[int, ...] = (512, 256, 256, 128, 128, 64)
    ssd_aspect_ratios: list | tuple = ((2, 3), (2, 3), (2, 3), (2, 3), (2, 3), (2,))
    ssd_min_scale: float = 0.1
    ssd_max_scale: float = 1.05
    ssd_center_variance: float = 0.1
    ssd_size_variance: float = 0.2
    ssd_matcher_iou_threshold: float = 0.5
    ssd_negative_ratio: int = 3
    ssd_activation: str = "relu"

    def validate_ssd(self) -> None:
        strides = self.ssd_output_strides
        expected = ("a list of output strides: some of 8, 16, 32 (32 among them) in increasing order, then extra "
                    "levels each twice the one before, then optionally -1 (the global level)")
        if not isinstance(strides, (list, tuple)) or not 1 <= len(strides) <= MAX_LEVELS or not all(map(is_int, strides)):
            fail(self, "ssd_output_strides", expected)
        backbone = [s for s in strides if s in BACKBONE_STRIDES]
        extra = list(strides[len(backbone):])
        if extra and extra[-1] == GLOBAL_LEVEL:
            extra = extra[:-1]
        doubling = [2 ** (5 + i) for i in range(1, len(extra) + 1)]
        if 32 not in backbone or backbone != sorted(set(backbone)) or extra != doubling:
            fail(self, "ssd_output_strides", expected)
        levels = len(strides)
        widths = self.ssd_projection_channels
        if not isinstance(widths, (list, tuple)) or len(widths) != levels or \
                not all(is_int(w) and 0 < w <= MAX_WIDTH for w in widths):
            fail(self, "ssd_projection_channels", f"a list of {levels} positive integers (one per level) of at most "
                                                  f"{MAX_WIDTH}")
        ratios = self.ssd_aspect_ratios
        if not isinstance(ratios, (list, tuple)) or len(ratios) != levels or not all(
                isinstance(r, (list, tuple)) and all(is_number(x) and 1 <= x <= MAX_ASPECT_RATIO for x in r)
                for r in ratios):
            fail(self, "ssd_aspect_ratios", f"a list of {levels} lists (one per level) of aspect ratios in "
                                            f"[1, {MAX_ASPECT_RATIO}]")
        for name in ("ssd_min_scale", "ssd_max_scale", "ssd_center_variance", "ssd_size_variance"):
            if not (is_number(getattr(self, name)) and getattr(self, name) > 0):
                fail(self, name, "a positive number")
        if self.ssd_min_scale >= self.ssd_max_scale:
            fail(self, "ssd_max_scale", f"a number above ssd_min_scale={self.ssd_min_scale}")
        if not (is_number(self.ssd_matcher_iou_threshold) and 0 < self.ssd_matcher_iou_threshold <= 1):
            fail(self, "ssd_matcher_iou_threshold", "a number in (0, 1]")
        if not (is_int(self.ssd_negative_ratio) and 0 <= self.ssd_negative_ratio <= 1000):
            fail(self, "ssd_negative_ratio", "an integer in [0, 1000]")
        check_activation(self, "ssd_activation", "'relu', 'silu'")


__all__ = ["SSDConfigMixin"]
