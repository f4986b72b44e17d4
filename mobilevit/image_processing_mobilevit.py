"""`MobileViTImageProcessor`: ml-cvnets' evaluation preprocessing, on torch tensors.

The two ml-cvnets releases that trained the checkpoints read images differently (each family's choice is
`ModelFamily.preprocessing`; docs/image-processor.md has the evidence):

- cvnets-v0.1 (MobileViT v1): OpenCV. Pixels in BGR order, the shortest side resized with `cv2.INTER_LINEAR`
  (bilinear, no antialiasing, 8-bit fixed-point arithmetic). The class defaults are these settings: torch's
  native uint8 bilinear resize (within 1/255 of OpenCV), or with `resize_bit_exact=True` OpenCV's fixed-point
  arithmetic emulated with integer tensor operations (bit for bit).
- cvnets-v0.2 (MobileViTv2): Pillow. Pixels in RGB order, resized with Pillow's bicubic filter (a = -0.5,
  antialiased when shrinking): `resample=3, resize_antialias=True, do_flip_channel_order=False`. By default
  torch's antialiased uint8 bicubic resize (the same filter, within 1/255 of Pillow when shrinking), or with
  `resize_bit_exact=True` Pillow's fixed-point arithmetic emulated (bit for bit, shrinking or enlarging).

Both: the long side truncated with `int()`, a centre crop with floor offsets, a division by 255, no mean/std.

Speed (the hot path, 8-bit RGB photos): Pillow's pixels are read in place (its Arrow export, no copy); each
image goes from resize to output on its own, in 8 bits until the final conversion, which is written
straight into the output batch; the resize skips the input rows that the crop never reads; intermediates
live in per-thread scratch memory, and a freed output batch's memory serves the next batch. Page faults on
fresh memory had cost as much as the arithmetic.
"""

from __future__ import annotations

import functools
import math
import mmap
import numbers
import threading
import weakref
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from huggingface_hub.errors import StrictDataclassError
from transformers.image_processing_base import BatchFeature
from transformers.image_processing_outputs import SemanticSegmentationPostProcessorOutput
from transformers.image_processing_utils import BaseImageProcessor
from transformers.image_utils import (
    IMAGENET_STANDARD_MEAN,
    IMAGENET_STANDARD_STD,
    ChannelDimension,
    PILImageResampling,
    SizeDict,
)
from transformers.processing_utils import ImagesKwargs, Unpack

from .image_reading import image_pixels, label_map
from .limits import MAX_RESULTS_PER_IMAGE
from .ssd import MLCVNETS_V02, PostProcessing, center_to_corners, select_detections

# ml-cvnets' `Resize` is cv2.resize(INTER_LINEAR) on uint8: weights are quantised to 11 bits (2048 = 1.0).
_COEF_BITS = 11
_COEF_ONE = 1 << _COEF_BITS
# ml-cvnets v0.2's `Resize` is Pillow's Image.resize: weights in 22-bit fixed point (Resample.c's PRECISION_BITS).
_PILLOW_PRECISION_BITS = 22
# Intermediates up to this size are kept per thread for the next image (a resized 4000-pixel panorama is 5 MB).
_SCRATCH_MAX_BYTES = 16 << 20
_SCRATCH_MAX_VIEWS = 64  # shapes remembered per thread
_HUGE_PAGE_MIN_BYTES = 8 << 20  # smaller outputs come from malloc's reused memory
# Label value that losses ignore (PASCAL VOC's border value, transformers' `semantic_loss_ignore_index`).
IGNORE_INDEX = 255
_RESAMPLE_TO_TORCH_MODE = {
    PILImageResampling.NEAREST: "nearest-exact",
    PILImageResampling.BILINEAR: "bilinear",
    PILImageResampling.BICUBIC: "bicubic",
}


class MobileViTImageProcessorKwargs(ImagesKwargs, total=False):
    """
    do_flip_channel_order (`bool`, *optional*, defaults to `self.do_flip_channel_order`):
        Whether to flip the colour channels from RGB to BGR (MobileViT v1's checkpoints take BGR, MobileViTv2's RGB).
    do_reduce_labels (`bool`, *optional*, defaults to `self.do_reduce_labels`):
        Whether to shift segmentation labels down by one, mapping 0 (background) to 255 (ignored).
    resize_antialias (`bool`, *optional*, defaults to `self.resize_antialias`):
        Antialias when downscaling, as Pillow does (ml-cvnets v0.2, MobileViTv2's release, and stock
        transformers' PIL processor), instead of OpenCV's plain bilinear resize (ml-cvnets v0.1, MobileViT v1).
    resize_bit_exact (`bool`, *optional*, defaults to `self.resize_bit_exact`):
        Reproduce the reference resize bit for bit instead of torch's native uint8 kernels (within 1/255 of
        it): OpenCV's fixed-point `INTER_LINEAR` for bilinear without antialiasing, Pillow's fixed-point
        filters for bilinear or bicubic with antialiasing; several times slower. No other combination has
        an exact emulation (an error says so).
    logits_align_corners (`bool`, *optional*, defaults to `self.logits_align_corners`):
        How `post_process_semantic_segmentation` upsamples segmentation logits: as the model family was
        trained (MobileViT v1: False, MobileViTv2: True; see `ModelFamily.segmentation_align_corners`).
        None (a processor made without a model) means False, stock transformers' choice.
    detection_postprocessing (`dict`, *optional*, defaults to `self.detection_postprocessing`):
        How `post_process_object_detection` picks detections (`mobilevit.ssd.PostProcessing` as a dict: score
        threshold, NMS IoU, candidates and detections per class, detections per image, order): the rule the
        model family's detectors were evaluated with (MobileViT v1: ml-cvnets v0.1's; MobileViTv2: v0.2's).
        None (a processor made without a model) means v0.2's, which caps each image at 200 detections.
    """

    do_flip_channel_order: bool
    do_reduce_labels: bool
    resize_antialias: bool
    resize_bit_exact: bool
    logits_align_corners: bool | None
    detection_postprocessing: dict | None


class MobileViTImageProcessor(BaseImageProcessor):
    r"""
    Prepares images (and segmentation maps) for MobileViT as ml-cvnets did for the released checkpoints.

    Steps, each switchable: resize so the shortest edge is `size["shortest_edge"]` (or to `size["height"] x
    size["width"]`), centre crop to `crop_size`, divide by 255 (`rescale_factor`), flip RGB to BGR. There is no
    mean/std normalisation: MobileViT takes pixels in [0, 1]. The class defaults are MobileViT v1's (ml-cvnets
    v0.1: BGR, OpenCV bilinear); a model's own processor comes from its family (`mobilevit.auto.image_processor_for`,
    MobileViTv2: RGB, Pillow bicubic) or its folder's `preprocessor_config.json`.

    Exactness: ml-cvnets v0.1 resized with OpenCV's `INTER_LINEAR` on 8-bit pixels (bilinear, no antialiasing),
    v0.2 with Pillow's antialiased bicubic filter; both truncated the long side with `int()`, floored the crop
    offsets and divided by 255. The default resize is torch's native uint8 kernel: bilinear without
    antialiasing is within 1/255 of OpenCV on every pixel (about one value in 5.5 is off by 1/255 on the
    fixture photo); bicubic with antialiasing (`resample=3, resize_antialias=True`, Pillow's filter, a = -0.5)
    is within 1/255 of Pillow when shrinking, and up to 2/255 on a few values in a thousand when enlarging;
    everything else matches exactly. `resize_bit_exact=True` emulates the reference's fixed-point arithmetic
    (OpenCV's 11-bit weights, or Pillow's 22-bit ones and its 8-bit intermediate) and gives ml-cvnets' pixel
    values bit for bit, at several times the cost.

    Unset settings: `None` (`null` in a config) for a switch (`do_resize`, `do_center_crop`, `do_rescale`,
    `do_flip_channel_order`, ...) means the class default, and a `None` passed to a call means the processor's
    own setting (transformers' contract); an explicit `None` is kept by `to_dict` and `save_pretrained`.
    `setting(name)` gives the value a call uses.

    Inputs (`images`): a PIL image of any mode, a NumPy array or torch tensor of shape H x W, H x W x C or
    C x H x W with C in {1, 3, 4} (`input_data_format` settles a shape that could be either), or a list of
    these with mixed sizes, or a 4-d batch; how each mode, dtype and layout is read is `mobilevit.image_reading`'s
    table (docs/reading-images.md). With `do_convert_rgb` (default) every image becomes RGB (grey repeated,
    alpha dropped); `do_convert_rgb=False` keeps 1- and 4-channel images as they are, for models with
    `num_channels` 1 or 4 (a batch must then share its channel count). The channel flip reverses the channel
    axis as stock transformers' does (RGB -> BGR, RGBA -> ABGR; one channel stays).

    Normalisation: off by default (MobileViT's checkpoints take pixels in [0, 1]). `do_normalize=True`
    subtracts `image_mean` and divides by `image_std` after rescaling; both are given per input channel (RGB
    order, one value for all channels also works) and follow their channels through the flip. Stock
    transformers' MobileViT processor accepts the same settings but ignores them; here they mean what they say.

    Float inputs: with `do_rescale=True` a float image must lie in [0, 1]; it is quantised to 8 bits
    (round(x * 255)) because the checkpoints' pipeline works on 8-bit pixels, so it gives the same result as
    the uint8 image it came from. A float image outside [0, 1] with `do_rescale=True` raises a `ValueError`
    (transformers only warns, and then the model silently sees out-of-range pixels). With
    `do_rescale=False` images are resized as floats in their own units and returned without any scaling.

    Segmentation maps (`segmentation_maps`): one per image, of the same height and width, with integer class
    ids (`mobilevit.image_reading.label_map`: PIL mode L/P/I, or a H x W array/tensor). They are resized with
    nearest neighbour (pixel-centre
    aligned, as Pillow's) and cropped with exactly the geometry of their image, and returned as int64
    `labels`. Where a crop is larger than the resized image, images are padded with 0 and labels with 255
    (ignored by the loss).

    Legacy configs (2022 `MobileViTFeatureExtractor` form: `"size": 288`, `"crop_size": 256`,
    `"do_flip_channels": true`, `"reduce_labels"`) load with the same meaning; they are saved back in the
    transformers 5.x form. A saved config holds the keys stock transformers writes, with its types
    (`resample` an int, `image_mean`/`image_std` its defaults), plus this processor's own: read back through
    stock `AutoImageProcessor` it gives an equal `to_dict()`.

    Settings are checked when the processor is made (a bad `preprocessor_config.json` fails on loading) and
    again for each call's overrides: a `ValueError` names the setting, what was expected and what came.
    """

    valid_kwargs = MobileViTImageProcessorKwargs
    model_input_names = ["pixel_values"]

    default_to_square = False
    do_resize = True
    size = {"shortest_edge": 288}
    resample = PILImageResampling.BILINEAR
    resize_antialias = None  # None (here and below): see _NONE_MEANS
    resize_bit_exact = None
    do_center_crop = True
    crop_size = {"height": 256, "width": 256}
    do_rescale = True
    rescale_factor = 1 / 255
    do_normalize = None
    image_mean = IMAGENET_STANDARD_MEAN  # used with do_normalize=True; stock transformers' defaults (0.5)
    image_std = IMAGENET_STANDARD_STD
    do_convert_rgb = None
    do_flip_channel_order = True
    do_reduce_labels = False
    logits_align_corners = None  # set by the model family's processor (`mobilevit.auto`), saved in the folder
    detection_postprocessing = None  # the same for detection (`ModelFamily.image_processor`)

    # 2022 feature-extractor key -> current key (stock transformers 5.x drops `do_flip_channels` silently).
    _LEGACY_KEYS = {"do_flip_channels": "do_flip_channel_order", "reduce_labels": "do_reduce_labels"}

    def __init__(self, **kwargs: Unpack[MobileViTImageProcessorKwargs]):
        for old, new in self._LEGACY_KEYS.items():
            if old in kwargs:
                value = kwargs.pop(old)
                kwargs.setdefault(new, value)
        super().__init__(**kwargs)
        self._set_attributes(**kwargs)
        self._validate_preprocess_kwargs(**{name: self.setting(name) for name in self._valid_kwargs_names})

    def setting(self, name: str):
        """The value a call uses for the setting `name`: the processor's own, or the default for a switch stored as
        None (an explicit null in a config means the default)."""
        value = getattr(self, name, None)
        if value is None and name in _FLAGS:
            value = getattr(type(self), name)
            value = _NONE_MEANS[name] if value is None else value
        return value

    def _merge_and_standardize_kwargs(self, **kwargs) -> dict:
        # a setting a call passes as None means "not given": the processor's own (transformers only fills
        # in settings that are absent, and then a None switch silently turned its step off)
        for name in self._valid_kwargs_names:
            if kwargs.get(name) is None:
                kwargs[name] = self.setting(name)
        return self._standardize_kwargs(**kwargs)

    def _standardize_kwargs(self, size=None, crop_size=None, resample=None, **kwargs) -> dict:
        # transformers turns an int size into a dict and lets a bad value through or fails obscurely: say so here
        for name, value in (("size", size), ("crop_size", crop_size)):
            _check_size_value(name, value)
        if isinstance(resample, int) and not isinstance(resample, bool):
            resample = int(resample)  # a plain int, as stock transformers reads it back from a config (not an enum)
        return super()._standardize_kwargs(size=size, crop_size=crop_size, resample=resample, **kwargs)

    def _validate_preprocess_kwargs(self, **settings) -> None:
        """The one check of the settings, at construction and for every call (`settings`: the effective ones)."""
        _check_settings(**settings)

    def preprocess(
        self,
        images,
        segmentation_maps=None,
        **kwargs: Unpack[MobileViTImageProcessorKwargs],
    ) -> BatchFeature:
        """Prepare `images` (and optional `segmentation_maps`, one per image) for the model.

        Every option of the constructor can be overridden here for one call. `return_tensors="pt"` gives one
        float32 `pixel_values` batch (B, 3, H, W) and int64 `labels` (B, H, W); without it, lists of tensors.
        """
        # checked before transformers' type check of the call's settings, whose multi-line error is no ValueError
        for name in ("size", "crop_size"):
            _check_size_value(name, kwargs.get(name))
        for name in ("image_mean", "image_std"):
            if kwargs.get(name) is not None:
                kwargs[name] = _per_channel(name, kwargs[name])
        for name in ("input_data_format", "data_format"):
            if kwargs.get(name) is not None:
                _channel_dimension(name, kwargs[name])
        if isinstance(kwargs.get("rescale_factor"), int) and not isinstance(kwargs["rescale_factor"], bool):
            kwargs["rescale_factor"] = float(kwargs["rescale_factor"])  # a whole number is a number too
        try:
            return super().preprocess(images, segmentation_maps, **kwargs)
        except StrictDataclassError as err:  # any other setting of the wrong type
            raise TypeError(str(err.__cause__ or err).splitlines()[0]) from None

    def _preprocess_image_like_inputs(
        self,
        images,
        segmentation_maps=None,
        *,
        do_resize: bool,
        size: SizeDict,
        resample,
        resize_antialias: bool,
        resize_bit_exact: bool,
        do_center_crop: bool,
        crop_size: SizeDict,
        do_rescale: bool,
        rescale_factor: float,
        do_normalize: bool,
        image_mean,
        image_std,
        do_convert_rgb: bool | None,
        do_flip_channel_order: bool,
        do_reduce_labels: bool,
        input_data_format=None,
        data_format=None,
        return_tensors=None,
        device=None,
        **unused,
    ) -> BatchFeature:
        mode = _torch_mode(resample)
        convert_rgb = do_convert_rgb is not False
        # RGB output reads only channels 0-2, so 4-byte pixels may keep their fourth byte (no copy, fastest resize)
        pixels = [
            image_pixels(image, f"images[{i}]", convert_rgb=convert_rgb, input_data_format=input_data_format,
                         quantise=do_rescale, spare_channel=convert_rgb)
            for i, image in enumerate(_as_list(images, "images"))
        ]
        if device is not None:
            pixels = [p.to(device) for p in pixels]
        channels = [3 if convert_rgb else p.shape[-1] for p in pixels]
        geometries = _Geometry.of_each(pixels, size if do_resize else None, crop_size if do_center_crop else None)
        channels_first = data_format is None or ChannelDimension(data_format) == ChannelDimension.FIRST
        outputs, targets = _new_outputs(pixels, channels, geometries, channels_first, batched=return_tensors is not None)
        # One image at a time from resize to output: its intermediates stay in this thread's scratch memory
        # (cache-sized and reused), and the only fresh memory is the output itself.
        orders = {count: torch.arange(count - 1, -1, -1) if do_flip_channel_order else torch.arange(count)
                  for count in set(channels)}
        normalisations = {count: _normalisation(image_mean, image_std, order) if do_normalize else None
                          for count, order in orders.items()}
        for image, count, geometry, target in zip(pixels, channels, geometries, targets):
            crop = _resize_and_crop_image(image, geometry, mode, resize_antialias, resize_bit_exact)
            _write_pixels(crop, orders[count].to(crop.device), target, do_rescale, rescale_factor, normalisations[count])
        data = {"pixel_values": outputs}

        if segmentation_maps is not None:
            maps = _as_list(segmentation_maps, "segmentation_maps")
            if len(maps) != len(pixels):
                raise ValueError(
                    f"segmentation_maps: expected one map per image ({len(pixels)}), got {len(maps)}"
                )
            labels = []
            for i, (seg, geometry) in enumerate(zip(maps, geometries)):
                seg = label_map(seg, f"segmentation_maps[{i}]")
                if tuple(seg.shape) != (geometry.height, geometry.width):
                    raise ValueError(
                        f"segmentation_maps[{i}]: expected the size of images[{i}] "
                        f"({geometry.height}x{geometry.width}), got {seg.shape[0]}x{seg.shape[1]}"
                    )
                if device is not None:
                    seg = seg.to(device)
                if do_reduce_labels:
                    seg = reduce_labels(seg)
                resized = _resize_and_crop(seg[None, :, :, None], geometry, "nearest-exact", False, IGNORE_INDEX)
                labels.append(resized[0, :, :, 0])
            data["labels"] = _stack(labels, "labels") if return_tensors is not None else labels
        return BatchFeature(data=data, tensor_type=return_tensors)

    def post_process_semantic_segmentation(
        self,
        outputs,
        target_sizes: Sequence[tuple[int, int]] | torch.Tensor | None = None,
        return_segmentation_scores: bool = False,
    ) -> list[torch.Tensor] | list[SemanticSegmentationPostProcessorOutput]:
        """Turn `MobileViTForSemanticSegmentation` outputs into one (height, width) class map per image.

        Same contract as stock transformers': the logits of image `i` are resized bilinearly to
        `target_sizes[i]` (its original size, for example) before the argmax; without `target_sizes` the maps
        keep the logits' resolution. The resize uses `align_corners=self.logits_align_corners`, the way the
        model family was trained (stock transformers always uses False, which is right for v1 only). With
        `return_segmentation_scores=True` each item is a `SemanticSegmentationPostProcessorOutput` with
        `segmentation` and the resized `segmentation_scores`.
        """
        logits = outputs.logits if hasattr(outputs, "logits") else outputs
        if target_sizes is not None:
            if isinstance(target_sizes, torch.Tensor):
                target_sizes = target_sizes.tolist()
            if len(target_sizes) != len(logits):
                raise ValueError(
                    f"target_sizes: expected one (height, width) per image ({len(logits)}), got {len(target_sizes)}"
                )
            scores = [
                F.interpolate(logits[i : i + 1], size=tuple(int(s) for s in target_sizes[i]), mode="bilinear",
                              align_corners=bool(self.logits_align_corners))[0]
                for i in range(len(logits))
            ]
        else:
            scores = list(logits)
        if not return_segmentation_scores:
            return [s.argmax(dim=0) for s in scores]
        return [
            SemanticSegmentationPostProcessorOutput(data={"segmentation": s.argmax(dim=0), "segmentation_scores": s})
            for s in scores
        ]


    def post_process_object_detection(
        self,
        outputs,
        threshold: float | None = None,
        target_sizes: Sequence[tuple[int, int]] | torch.Tensor | None = None,
        top_k: int | None = None,
    ) -> list[dict[str, torch.Tensor]]:
        """Turn a MobileViT detector's outputs into detections, one dict per image with `scores` (K,), `labels`
        (K,) (ids of `config.id2label`, 1 and up: 0 is the background class) and `boxes` (K, 4) as corners
        (x1, y1, x2, y2), transformers' contract.

        The rule is `self.detection_postprocessing` (see `mobilevit.ssd.postprocessing`): scores are the softmax
        over all classes, background included; each class's candidates above the threshold go through NMS; the
        caps and the order are the family's. `threshold` replaces the rule's score threshold (transformers'
        object-detection pipeline passes 0.5 unless told otherwise), `top_k` its cap per image.

        With `target_sizes` ((height, width) per image, the original sizes), boxes are in pixels of that size and
        clipped to it, as ml-cvnets' COCO evaluation writes them; without, they stay normalised to [0, 1] and
        unclipped (boxes may reach past the image), as ml-cvnets' `predict` returns them.
        """
        rule = PostProcessing.from_dict(self.detection_postprocessing) if self.detection_postprocessing is not None \
            else MLCVNETS_V02
        if threshold is not None and not (_is_number(threshold) and 0.0 <= threshold <= 1.0):
            raise ValueError(f"threshold: expected a score in [0, 1], got {threshold!r}")
        if top_k is not None and not (_is_positive_int(top_k) and top_k <= MAX_RESULTS_PER_IMAGE):
            raise ValueError(f"top_k: expected an integer from 1 to {MAX_RESULTS_PER_IMAGE} (mobilevit.limits), got "
                             f"{top_k!r}")
        logits, pred_boxes = _detector_outputs(outputs)
        if target_sizes is not None:
            if isinstance(target_sizes, torch.Tensor):
                target_sizes = target_sizes.tolist()
            if len(target_sizes) != len(logits) or not all(len(size) == 2 for size in target_sizes):
                raise ValueError(f"target_sizes: expected one (height, width) per image ({len(logits)}), got "
                                 f"{target_sizes!r}")
        scores = logits.float().softmax(dim=-1)[..., 1:]
        boxes = center_to_corners(pred_boxes.float())
        results = []
        for i in range(len(logits)):
            image_boxes, image_scores, labels = select_detections(scores[i], boxes[i], rule, threshold, top_k)
            if target_sizes is not None:
                height, width = (float(side) for side in target_sizes[i])
                image_boxes = _to_pixels(image_boxes, height, width)
            results.append({"scores": image_scores, "labels": labels, "boxes": image_boxes})
        return results


def _detector_outputs(outputs) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, pred_boxes) of a detector's output object, dict or tuple; a clear error for anything else."""
    get = outputs.get if hasattr(outputs, "get") else (lambda name: getattr(outputs, name, None))
    logits, pred_boxes = get("logits"), get("pred_boxes")
    if logits is None and isinstance(outputs, (tuple, list)) and len(outputs) >= 2:
        logits, pred_boxes = outputs[0], outputs[1]
    if not isinstance(logits, torch.Tensor) or not isinstance(pred_boxes, torch.Tensor) or logits.dim() != 3 \
            or tuple(pred_boxes.shape) != (*logits.shape[:2], 4):
        raise ValueError("outputs: expected a detector's outputs with logits (batch, anchors, classes) and pred_boxes "
                         f"(batch, anchors, 4), got {type(outputs).__name__}")
    return logits, pred_boxes


def _to_pixels(boxes: torch.Tensor, height: float, width: float) -> torch.Tensor:
    """Normalised corners -> pixels of a (height, width) image, clipped to it (ml-cvnets' `predict_and_save`)."""
    scale = boxes.new_tensor([width, height, width, height])
    return torch.minimum(torch.clamp(boxes * scale, min=0), scale)


def reduce_labels(labels: torch.Tensor) -> torch.Tensor:
    """transformers' `do_reduce_labels`: 0 (background) -> 255 (ignored), 255 stays 255, the rest minus one."""
    return torch.where((labels == 0) | (labels == IGNORE_INDEX), IGNORE_INDEX, labels - 1)


# --------------------------------------------------------------------------------------------------
# Settings and inputs (how each image is read: `image_reading.image_pixels`)


# The switches: True or False, or None for the default (`MobileViTImageProcessor.setting`).
_FLAGS = ("do_resize", "resize_antialias", "resize_bit_exact", "do_center_crop", "do_rescale", "do_normalize",
          "do_flip_channel_order", "do_reduce_labels", "do_convert_rgb")
# What None means for the switches whose class default is None: the ones stock transformers' MobileViT processor
# does not have or leaves unset, so that a config saved with the defaults holds exactly stock's keys
_NONE_MEANS = {"do_convert_rgb": True, "do_normalize": False, "resize_antialias": False, "resize_bit_exact": False}


def _is_positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _check_size_value(name: str, value) -> None:
    """`size` / `crop_size` as written in a config or passed in: an int, or a dict of positive ints."""
    if value is None or isinstance(value, SizeDict) or _is_positive_int(value):
        return
    keys = {"shortest_edge"} if name == "size" else set()
    keys |= {"height", "width"}
    if not (isinstance(value, dict) and value and set(value) <= keys | {"longest_edge"}
            and all(_is_positive_int(v) for v in value.values() if v is not None)):
        expected = "{'shortest_edge': int} or {'height': int, 'width': int}" if name == "size" else \
            "{'height': int, 'width': int}"
        raise ValueError(f"{name}: expected a positive int or {expected} of positive ints, got {value!r}")


def _check_settings(*, do_convert_rgb=None, size=None, crop_size=None, rescale_factor=None, resample=None,
                    do_normalize=False, image_mean=None, image_std=None, logits_align_corners=None,
                    detection_postprocessing=None, **flags) -> None:
    if detection_postprocessing is not None:
        PostProcessing.from_dict(detection_postprocessing)
    for name, value in dict(flags, do_convert_rgb=do_convert_rgb, logits_align_corners=logits_align_corners).items():
        if name in (*_FLAGS, "logits_align_corners") and value is not None and not isinstance(value, bool):
            raise ValueError(f"{name}: expected true, false or null (the default), got {value!r}")
    for name, value, needed in (("size", size, flags.get("do_resize")),
                                ("crop_size", crop_size, flags.get("do_center_crop"))):
        if value is None:
            if needed:
                raise ValueError(f"{name}: expected a size with {'do_resize' if name == 'size' else 'do_center_crop'}"
                                 "=True, got None")
            continue
        values = dict(value)
        sides = [values.get("shortest_edge")] if name == "size" and values.get("shortest_edge") else \
            [values.get("height"), values.get("width")]
        if not all(_is_positive_int(side) for side in sides):
            raise ValueError(f"{name}: expected positive sizes, got {values}")
    if flags.get("do_rescale") and not (isinstance(rescale_factor, numbers.Real) and not isinstance(rescale_factor, bool)
                                        and math.isfinite(rescale_factor) and rescale_factor > 0):
        raise ValueError(f"rescale_factor: expected a positive number with do_rescale=True, got {rescale_factor!r}")
    if resample is not None:
        mode = _torch_mode(resample)
        antialias = bool(flags.get("resize_antialias"))
        if flags.get("resize_bit_exact") and (mode, antialias) not in _BIT_EXACT_RESIZES:
            raise ValueError(f"resize_bit_exact: an exact emulation exists for "
                             f"{', '.join(_BIT_EXACT_RESIZES.values())}; got resample={int(resample)} ({mode}) with "
                             f"resize_antialias={antialias}")
    if do_normalize:
        for name, value in (("image_mean", image_mean), ("image_std", image_std)):
            values = _per_channel(name, value)
            if name == "image_std" and not all(v > 0 for v in values):
                raise ValueError(f"image_std: expected positive numbers, got {value!r}")
            if do_convert_rgb is not False and len(values) not in (1, 3):  # RGB output: known now
                raise ValueError(f"{name}: expected one value or 3 (one per channel), got {len(values)}: {value!r}")


def _channel_dimension(name: str, value) -> ChannelDimension:
    try:
        return ChannelDimension(value)
    except ValueError:
        raise ValueError(f"{name}: expected 'channels_first' or 'channels_last', got {value!r}") from None


def _per_channel(name: str, value) -> list[float]:
    """`image_mean` / `image_std`: one finite number or a list of them (None: stock transformers' default)."""
    if value is None:
        value = IMAGENET_STANDARD_MEAN if name == "image_mean" else IMAGENET_STANDARD_STD
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if not values or not all(isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) for v in values):
        raise ValueError(f"{name}: expected a number or a list of numbers (one per channel), got {value!r}")
    return [float(v) for v in values]


def _normalisation(image_mean, image_std, order: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) per output channel, as (C, 1, 1) tensors: given per input channel, reordered like the channels."""
    result = []
    for name, value in (("image_mean", image_mean), ("image_std", image_std)):
        values = _per_channel(name, value)
        if len(values) == 1:
            values = values * len(order)
        if len(values) != len(order):
            raise ValueError(f"{name}: expected one value or {len(order)} (one per channel), got {len(values)}: {value!r}")
        result.append(torch.tensor(values, dtype=torch.float32)[order].view(-1, 1, 1))
    return result[0], result[1]


def _as_list(images, name: str) -> list:
    """A single image, a list/tuple of images or a 4-d batch -> a non-empty list of images."""
    if isinstance(images, (list, tuple)):
        items = list(images)
    elif isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4:
        items = list(images)
    else:
        items = [images]
    if not items:
        raise ValueError(f"{name}: expected at least one image, got an empty {type(images).__name__}")
    return items


# --------------------------------------------------------------------------------------------------
# Geometry: where the resized image lands and which part of it the crop keeps.


class _Geometry(tuple):
    """(height, width) of the input, (height, width) after resizing, and the crop's (top, left, h, w)."""

    __slots__ = ()

    @classmethod
    def of(cls, height: int, width: int, size: SizeDict | None, crop_size: SizeDict | None) -> "_Geometry":
        for name, sizes in (("size", size), ("crop_size", crop_size)):
            if sizes is not None and any(v is not None and v <= 0 for v in dict(sizes).values()):
                raise ValueError(f"{name}: expected positive sizes, got {dict(sizes)}")
        if size is None:
            out_h, out_w = height, width
        elif size.shortest_edge:
            # ml-cvnets and transformers both truncate the long side: int(288 * 640 / 427) = 431.
            short, long = min(height, width), max(height, width)
            new_long = int(size.shortest_edge * long / short)
            out_h, out_w = (size.shortest_edge, new_long) if height <= width else (new_long, size.shortest_edge)
        elif size.height and size.width:
            out_h, out_w = size.height, size.width
        else:
            raise ValueError(f"size: expected {{'shortest_edge': int}} or {{'height': int, 'width': int}}, got {dict(size)}")
        if crop_size is None:
            crop = (0, 0, out_h, out_w)
        else:
            if not (crop_size.height and crop_size.width):
                raise ValueError(f"crop_size: expected {{'height': int, 'width': int}}, got {dict(crop_size)}")
            # Floor offsets (ml-cvnets and transformers); negative when the crop is larger (then padded).
            crop = ((out_h - crop_size.height) // 2, (out_w - crop_size.width) // 2, crop_size.height, crop_size.width)
        return cls(((height, width), (out_h, out_w), crop))

    @classmethod
    def of_each(cls, pixels: list[torch.Tensor], size: SizeDict | None, crop_size: SizeDict | None) -> list:
        """The geometry of each H x W x C image (worked out once per distinct input size)."""
        by_size: dict = {}
        for p in pixels:
            if p.shape[:2] not in by_size:
                by_size[p.shape[:2]] = cls.of(p.shape[0], p.shape[1], size, crop_size)
        return [by_size[p.shape[:2]] for p in pixels]

    height = property(lambda self: self[0][0])
    width = property(lambda self: self[0][1])
    crop_hw = property(lambda self: self[2][2:])  # the output size


# --------------------------------------------------------------------------------------------------
# Resizing: OpenCV-exact bilinear on uint8, torch interpolate for the other modes.


@functools.lru_cache(maxsize=256)
def _linear_taps(in_size: int, out_size: int, start: int, stop: int, clamp_fraction: bool):
    """Source indices and 11-bit weights of cv2.resize(INTER_LINEAR) for output positions [start, stop).

    Mirrors OpenCV: the source coordinate is computed in double and rounded to float, each weight is rounded
    separately (so a pair may sum to 2047 or 2049), and horizontally a coordinate outside the image snaps to
    the edge pixel with weight 1, while vertically only the row indices are clamped.
    """
    scale = 1.0 / (out_size / in_size)
    pos = ((torch.arange(start, stop, dtype=torch.float64) + 0.5) * scale - 0.5).float()
    first = torch.floor(pos)
    frac = pos - first
    first = first.long()
    if clamp_fraction:
        outside = (first < 0) | (first >= in_size - 1)
        frac = torch.where(outside, torch.zeros_like(frac), frac)
        first = first.clamp(0, in_size - 1)
    weight0 = torch.round((1 - frac) * _COEF_ONE).int()
    weight1 = torch.round(frac * _COEF_ONE).int()
    return first.clamp(0, in_size - 1), (first + 1).clamp(0, in_size - 1), weight0, weight1


def _resize_crop_linear_uint8(image: torch.Tensor, out_hw, rows: range, cols: range) -> torch.Tensor:
    """cv2.resize(INTER_LINEAR) of one H x W x C uint8 image, computed only for output `rows` x `cols`.

    Returns (1, len(rows), len(cols), 4) uint8; channel 3 is padding. Each pixel is packed into one int32
    (RGB + a pad byte) so that gathering columns moves 4-byte words instead of 3 separate bytes.
    """
    in_h, in_w = image.shape[:2]
    out_h, out_w = out_hw
    device = image.device
    if image.shape[2] == 4 and image.is_contiguous():
        packed = image[None]  # already 4 bytes per pixel; the fourth only ever reaches the padding channel
    else:
        packed = torch.empty((1, in_h, in_w, 4), dtype=torch.uint8, device=device)
        packed[0, :, :, :3].copy_(image[:, :, :3])
    packed = packed.view(torch.int32).squeeze(-1)
    y0, y1, wy0, wy1 = (t.to(device) for t in _linear_taps(in_h, out_h, rows.start, rows.stop, False))
    x0, x1, wx0, wx1 = (t.to(device) for t in _linear_taps(in_w, out_w, cols.start, cols.stop, True))
    # Horizontal pass over the source rows that the output rows read; exact in int32.
    needed, where = torch.unique(torch.cat([y0, y1]), return_inverse=True)
    src = packed.index_select(1, needed)

    def weighted_columns(index, weight):
        columns = src.index_select(2, index).view(torch.uint8).view(*src.shape[:2], len(index), 4)
        return columns.int().mul_(weight.view(1, 1, -1, 1))

    horizontal = weighted_columns(x0, wx0).add_(weighted_columns(x1, wx1))
    # Vertical pass as OpenCV's SIMD kernel: drop 4 bits, 16x16-bit multiply keeping the high half, then
    # round off the last 2 bits (this is what makes it bit-exact, not a plain rounding of the exact sum).
    # torch.bitwise_right_shift with a Python int is several times faster than the `>>` operator.
    horizontal = torch.bitwise_right_shift(horizontal, 4)

    def weighted_rows(index, weight):
        return torch.bitwise_right_shift(horizontal.index_select(1, index).mul_(weight.view(1, -1, 1, 1)), 16)

    out = weighted_rows(where[: len(y0)], wy0).add_(weighted_rows(where[len(y0) :], wy1)).add_(2)
    return torch.bitwise_right_shift(out, 2).clamp_(0, 255).to(torch.uint8)


def _pillow_bicubic(x: np.ndarray) -> np.ndarray:
    """Pillow's bicubic kernel (a = -0.5), each operation in the order of its C code, so the weights come out
    with the same float64 bits."""
    x = np.abs(x)
    near, far = x < 1.0, (x >= 1.0) & (x < 2.0)
    out = np.zeros_like(x)
    out[near] = ((-0.5 + 2.0) * x[near] - (-0.5 + 3.0)) * x[near] * x[near] + 1
    out[far] = (((x[far] - 5) * x[far] + 8) * x[far] - 4) * -0.5
    return out


def _pillow_triangle(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    return np.where(x < 1.0, 1.0 - x, 0.0)


# mode -> (kernel, support in input pixels at scale 1)
_PILLOW_FILTERS = {"bilinear": (_pillow_triangle, 1.0), "bicubic": (_pillow_bicubic, 2.0)}


@functools.lru_cache(maxsize=256)
def _pillow_taps(in_size: int, out_size: int, start: int, stop: int, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Source indices (n, k) and 22-bit integer weights (n, k) of Pillow's resampling of `in_size` pixels to
    `out_size`, for output positions [start, stop). Mirrors Resample.c's `precompute_coeffs` and
    `normalize_coeffs_8bpc`: the kernel widened by the scale when shrinking (the antialiasing), the window
    rounded with `(int)(x + 0.5)`, the weights normalised to sum 1 in float64 (summed in order) and each
    rounded half away from zero. Taps past a window's end have weight 0 (and a valid index)."""
    kernel, support = _PILLOW_FILTERS[mode]
    scale = in_size / out_size
    filter_scale = max(scale, 1.0)
    support *= filter_scale
    ksize = int(math.ceil(support)) * 2 + 1
    center = (np.arange(start, stop, dtype=np.float64) + 0.5) * scale
    first = np.trunc(center - support + 0.5).astype(np.int64).clip(0, None)
    count = np.minimum(np.trunc(center + support + 0.5).astype(np.int64), in_size) - first
    index = first[:, None] + np.arange(ksize)[None, :]
    weights = kernel((index.astype(np.float64) - center[:, None] + 0.5) * (1.0 / filter_scale))
    weights[np.arange(ksize)[None, :] >= count[:, None]] = 0.0
    total = np.cumsum(weights, axis=1)[:, -1:]  # a running sum: Pillow's loop order, the same rounding
    weights = np.divide(weights, total, out=weights, where=total != 0.0) * (1 << _PILLOW_PRECISION_BITS)
    fixed = np.trunc(np.where(weights < 0, weights - 0.5, weights + 0.5)).astype(np.int32)
    return torch.from_numpy(np.minimum(index, in_size - 1)), torch.from_numpy(fixed)


def _pillow_pass(pixels: torch.Tensor, in_size: int, out_size: int, outputs: range, mode: str,
                 offset: int = 0) -> torch.Tensor:
    """Pillow's 8-bit resampling from `in_size` to `out_size` positions along the first axis, computed for
    the positions `outputs`, of a contiguous (N, M, C) uint8 tensor holding input positions offset, offset+1,
    ...: int32 sums from 0.5 (rounding), clipped to 8 bits."""
    index, weights = _pillow_taps(in_size, out_size, outputs.start, outputs.stop, mode)
    index, weights = (index - offset).to(pixels.device), weights.to(pixels.device)
    rows = pixels.reshape(pixels.shape[0], -1)  # whole rows are gathered: contiguous copies
    total = torch.full((len(outputs), rows.shape[1]), 1 << (_PILLOW_PRECISION_BITS - 1), dtype=torch.int32,
                       device=pixels.device)
    for tap in range(index.shape[1]):
        total.add_(rows.index_select(0, index[:, tap]).int().mul_(weights[:, tap, None]))
    out = torch.bitwise_right_shift(total, _PILLOW_PRECISION_BITS).clamp_(0, 255).to(torch.uint8)
    return out.view(len(outputs), *pixels.shape[1:])


def _resize_crop_pillow_uint8(image: torch.Tensor, out_hw, rows: range, cols: range, mode: str) -> torch.Tensor:
    """Pillow's Image.resize (BILINEAR or BICUBIC) of one H x W x C uint8 image, bit for bit, computed only for
    output `rows` x `cols`: (len(rows), len(cols), C) uint8. Like Pillow, the width first (only over the input
    rows that the kept output rows read) into 8 bits, then the height; a side that keeps its size is not
    resampled."""
    (in_h, in_w), (out_h, out_w) = image.shape[:2], out_hw
    if out_h != in_h:
        index, _ = _pillow_taps(in_h, out_h, rows.start, rows.stop, mode)
        first, stop = int(index.min()), int(index.max()) + 1
    else:
        first, stop = rows.start, rows.stop
    band = image[first:stop]
    if out_w != in_w:  # along the columns: transposed, so that the gathers copy whole rows
        band = _pillow_pass(band.transpose(0, 1).contiguous(), in_w, out_w, cols, mode).transpose(0, 1)
    else:
        band = band[:, cols.start : cols.stop]
    if out_h != in_h:
        band = _pillow_pass(band.contiguous(), in_h, out_h, rows, mode, offset=first)
    return band


def _nearest_indices(in_size: int, out_size: int, start: int, stop: int, device) -> torch.Tensor:
    # Pixel-centre nearest neighbour (Pillow's NEAREST, torch's "nearest-exact").
    index = ((torch.arange(start, stop, dtype=torch.float64) + 0.5) * (in_size / out_size)).floor().long()
    return index.clamp_(0, in_size - 1).to(device)


def _crop_window(geometry: _Geometry) -> tuple[range, range]:
    """The output rows and columns of the resized image that the crop keeps."""
    _, (out_h, out_w), (top, left, crop_h, crop_w) = geometry
    return range(max(top, 0), min(top + crop_h, out_h)), range(max(left, 0), min(left + crop_w, out_w))


def _pad_to_crop(out: torch.Tensor, geometry: _Geometry, rows: range, cols: range, pad_value) -> torch.Tensor:
    """Pad a (N, h, w, C) crop with `pad_value` where the crop window reaches past the resized image."""
    _, _, (top, left, crop_h, crop_w) = geometry
    pad = (cols.start - left, left + crop_w - cols.stop, rows.start - top, top + crop_h - rows.stop)
    return F.pad(out, (0, 0, *pad), value=pad_value) if any(pad) else out


def _resize_and_crop_image(image: torch.Tensor, geometry: _Geometry, mode: str, antialias: bool,
                           bit_exact: bool) -> torch.Tensor:
    """One H x W x C image -> its (crop_h, crop_w, C' >= 3) crop of the resized image, padded with 0.

    The result may be a view of the input or of this thread's scratch memory: copy it before the next image.
    """
    if geometry[0] != geometry[1] and bit_exact and image.dtype == torch.uint8:
        rows, cols = _crop_window(geometry)
        if antialias:
            out = _resize_crop_pillow_uint8(image, geometry[1], rows, cols, mode)[None]
        else:
            out = _resize_crop_linear_uint8(image, geometry[1], rows, cols)
        return _pad_to_crop(out, geometry, rows, cols, 0)[0]
    return _resize_and_crop(image[None], geometry, mode, antialias, 0)[0]


def _resize_and_crop(batch: torch.Tensor, geometry: _Geometry, mode: str, antialias: bool, pad_value) -> torch.Tensor:
    """Resize a (N, H, W, C) batch to geometry's size and cut its crop (padding with `pad_value` outside)."""
    (in_h, in_w), (out_h, out_w), _ = geometry
    rows, cols = _crop_window(geometry)
    if (in_h, in_w) == (out_h, out_w):
        out = batch[:, rows.start : rows.stop, cols.start : cols.stop]
    elif mode == "nearest-exact":
        out = batch.index_select(1, _nearest_indices(in_h, out_h, rows.start, rows.stop, batch.device))
        out = out.index_select(2, _nearest_indices(in_w, out_w, cols.start, cols.stop, batch.device))
    else:
        out = _interpolate(batch, (out_h, out_w), mode, antialias, rows)
        out = out[:, rows.start : rows.stop, cols.start : cols.stop]
    return _pad_to_crop(out, geometry, rows, cols, pad_value)


# The resizes `resize_bit_exact=True` reproduces: (mode, antialias) -> whose arithmetic
_BIT_EXACT_RESIZES = {("bilinear", False): "bilinear without antialiasing (OpenCV's INTER_LINEAR)",
                      ("bilinear", True): "bilinear with antialiasing (Pillow's BILINEAR)",
                      ("bicubic", True): "bicubic with antialiasing (Pillow's BICUBIC)"}

# Resize operators that write into a given tensor (scratch memory): what F.interpolate calls, with out=.
_RESIZE_INTO = {
    ("bilinear", False): torch._C._nn.upsample_bilinear2d,
    ("bilinear", True): torch._C._nn._upsample_bilinear2d_aa,
    ("bicubic", False): torch._C._nn.upsample_bicubic2d,
    ("bicubic", True): torch._C._nn._upsample_bicubic2d_aa,
}


def _interpolate(batch: torch.Tensor, out_hw, mode: str, antialias: bool, rows: range) -> torch.Tensor:
    """torch's bilinear/bicubic resize (align_corners=False) of a (N, H, W, C) batch, bit for bit what
    F.interpolate computes in the output `rows` (other rows may hold anything); uint8 stays uint8 (torch's
    rounding uint8 kernels). The result lives in this thread's scratch memory."""
    n, in_h, in_w, channels = batch.shape
    out_h, out_w = out_hw
    resize = _RESIZE_INTO[mode, antialias]
    resized = _scratch("resized", (n, out_h, out_w, channels), batch.dtype, batch.device)
    # Channels-last views throughout: torch's fast uint8 kernels want this layout, and with 4 channels they
    # read and write it as is (3 channels are repacked to 4 and back inside the kernel).
    first, stop = _source_rows(in_h, out_h, rows, mode, antialias)
    separable = batch.dtype == torch.uint8 and batch.device.type == "cpu" and in_h != out_h and in_w != out_w
    if not separable or (first, stop) == (0, in_h):
        resize(batch.permute(0, 3, 1, 2), out_hw, False, None, None, out=resized.permute(0, 3, 1, 2))
        return resized
    # On CPU torch resizes 8-bit images in two passes, the width into an 8-bit intermediate, then the
    # height. Two calls give the same result, and the first one can skip the input rows that the kept rows
    # never read (a tenth of a landscape photo, a third of a portrait one). The intermediate's other rows
    # hold stale data, which only reaches output rows outside `rows`.
    wide = _scratch("wide", (n, in_h, out_w, channels), batch.dtype, batch.device)
    resize(batch[:, first:stop].permute(0, 3, 1, 2), (stop - first, out_w), False, None, None,
           out=wide[:, first:stop].permute(0, 3, 1, 2))
    resize(wide.permute(0, 3, 1, 2), out_hw, False, None, None, out=resized.permute(0, 3, 1, 2))
    return resized


def _source_rows(in_size: int, out_size: int, rows: range, mode: str, antialias: bool) -> tuple[int, int]:
    """The input rows [first, stop) that output `rows` read, with a row to spare either side. torch weighs
    the input within `support` of each output pixel's centre: 1 (bilinear) or 2 (bicubic) input pixels,
    times the scale when antialiasing a downscale."""
    scale = in_size / out_size
    support = (2 if mode == "bicubic" else 1) * (scale if antialias and scale > 1 else 1)
    first = math.floor(scale * (rows.start + 0.5) - support) - 1
    stop = math.ceil(scale * (rows.stop - 0.5) + support) + 1
    return max(first, 0), min(stop, in_size)


def _torch_mode(resample) -> str:
    try:
        return _RESAMPLE_TO_TORCH_MODE[PILImageResampling(int(resample))]
    except (KeyError, ValueError, TypeError):
        raise ValueError(
            f"resample: expected NEAREST (0), BILINEAR (2) or BICUBIC (3), got {resample!r}"
        ) from None


def _new_outputs(pixels: list[torch.Tensor], channels: list[int], geometries: list[_Geometry], channels_first: bool,
                 batched: bool) -> tuple[torch.Tensor | list[torch.Tensor], list[torch.Tensor]]:
    """Uninitialised float32 outputs (one (B, ...) batch when `batched`, else one tensor per image) of the
    crop sizes, C x H x W or H x W x C, and per image a C x H x W view of its output to write into."""
    shapes = [(c, *g.crop_hw) if channels_first else (*g.crop_hw, c) for c, g in zip(channels, geometries)]
    if batched:
        _check_same_shape(shapes, "pixel_values")
        outputs = _empty_float32((len(shapes), *shapes[0]), pixels[0].device)
        slots = outputs.unbind(0)
    else:
        slots = outputs = [torch.empty(shape, dtype=torch.float32, device=p.device) for shape, p in zip(shapes, pixels)]
    return outputs, [slot if channels_first else slot.permute(2, 0, 1) for slot in slots]


def _write_pixels(crop: torch.Tensor, channel_order: torch.Tensor, target: torch.Tensor, rescale: bool,
                  factor: float, normalisation: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
    """Write a (h, w, C) crop into `target` (C', h, w): channels `channel_order`, as float32, times `factor` if
    `rescale`, then less the mean and over the std of `normalisation`."""
    planes = _scratch("planes", (len(channel_order), *crop.shape[:2]), crop.dtype, crop.device)
    # Channels picked and transposed while still uint8 (4x less to move than floats), then converted and
    # scaled in one pass straight into the output.
    torch.index_select(crop.permute(2, 0, 1), 0, channel_order, out=planes)
    inverse = 1 / factor
    if not rescale:
        target.copy_(planes)
    elif inverse == round(inverse):
        # ml-cvnets divides by 255; dividing (rather than multiplying by 1/255) keeps its float32 bits.
        torch.div(planes, inverse, out=target)
    else:
        torch.mul(planes, factor, out=target)
    if normalisation is not None:
        mean, std = normalisation
        target.sub_(mean.to(target.device)).div_(std.to(target.device))


class _ScratchMemory(threading.local):
    """Per-thread memory reused for intermediates: one flat buffer per role, grown to the largest need, and
    the tensors handed out from it by shape (making a view costs more than looking one up)."""

    def __init__(self):
        self.buffers: dict = {}
        self.views: dict = {}


_SCRATCH = _ScratchMemory()


def _scratch(role: str, shape: tuple, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An uninitialised contiguous tensor in this thread's scratch memory for `role`, valid until the next
    request for the same role. Reused memory is already paged in and in cache; a fresh allocation of each
    intermediate cost more than computing it (page faults). Needs above _SCRATCH_MAX_BYTES are not kept."""
    key = (role, shape, dtype, device)
    view = _SCRATCH.views.get(key)
    if view is not None:
        return view
    numel = math.prod(shape)
    if numel * dtype.itemsize > _SCRATCH_MAX_BYTES:
        return torch.empty(shape, dtype=dtype, device=device)
    buffer_key = (role, dtype, device)
    # Plain tensors even when the first call comes under torch.inference_mode(): an inference tensor could
    # not be written into by a later call outside it.
    with torch.inference_mode(False):
        flat = _SCRATCH.buffers.get(buffer_key)
        if flat is None or flat.numel() < numel:
            flat = _SCRATCH.buffers[buffer_key] = torch.empty(numel, dtype=dtype, device=device)
            _SCRATCH.views.clear()  # views of the smaller buffer would keep it alive
        elif len(_SCRATCH.views) >= _SCRATCH_MAX_VIEWS:
            _SCRATCH.views.clear()  # images of many sizes: forget the shapes, keep the memory
        view = _SCRATCH.views[key] = flat[:numel].view(shape)
    return view


def _empty_float32(shape, device) -> torch.Tensor:
    """An uninitialised float32 tensor; large CPU ones on transparent huge pages, recycled once freed.

    A batch of 64 crops is 50 MB: glibc maps a block that large afresh on every call, and faulting it in
    4 KiB page by page took longer than converting the pixels (16 of 26 ms). With 2 MiB pages it is ~25
    faults instead of ~12,000, but the kernel still zeroes every fresh page (~3 ms per 50 MB); so once no
    tensor uses a batch's memory any more (the caller dropped it, or a DataLoader worker moved it to shared
    memory), that memory serves the next batch of the same size, as a caching allocator would.
    """
    nbytes = 4 * math.prod(shape)
    if device.type != "cpu" or nbytes < _HUGE_PAGE_MIN_BYTES or not hasattr(mmap, "MADV_HUGEPAGE"):
        return torch.empty(shape, dtype=torch.float32, device=device)
    mapping = _take_idle_mapping(nbytes)
    if mapping is None:
        mapping = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        mapping.madvise(mmap.MADV_HUGEPAGE)
    # The tensor's storage holds this memoryview (and the memoryview the mapping) for as long as any tensor
    # uses the memory; when the memoryview goes, the mapping becomes idle.
    view = memoryview(mapping)
    weakref.finalize(view, _keep_idle_mapping, mapping).atexit = False
    return torch.frombuffer(view, dtype=torch.float32).view(shape)


# Freed output batches, the most recently freed last. The finalizer that returns one may run in any thread
# at any moment (even inside _take_idle_mapping), so no lock: list operations are atomic under the GIL.
_IDLE_MAPPINGS: list = []
_MAX_IDLE_MAPPINGS = 2  # older ones are unmapped (a training loop has one or two batches in flight)


def _take_idle_mapping(nbytes: int):
    for mapping in reversed(_IDLE_MAPPINGS[:]):
        if len(mapping) == nbytes:
            try:
                _IDLE_MAPPINGS.remove(mapping)
            except ValueError:  # another thread took it first
                continue
            return mapping
    return None


def _keep_idle_mapping(mapping) -> None:
    _IDLE_MAPPINGS.append(mapping)
    while len(_IDLE_MAPPINGS) > _MAX_IDLE_MAPPINGS:
        try:
            _IDLE_MAPPINGS.pop(0)
        except IndexError:
            break


def _check_same_shape(shapes, key: str) -> None:
    if len(set(shapes)) > 1:
        raise ValueError(
            f"return_tensors: cannot batch {key} of different sizes {sorted(set(shapes))}; "
            "enable do_center_crop (or a fixed size) or leave return_tensors=None for a list"
        )


def _stack(values: list[torch.Tensor], key: str) -> torch.Tensor:
    _check_same_shape([tuple(v.shape) for v in values], key)
    return torch.stack(values)


__all__ = ["MobileViTImageProcessor"]
