"""The front end every format shares: the graph's inputs and outputs, real check images, the comparison with
PyTorch, the sidecar that states the preprocessing, and writing outputs whole.

Nothing here names a model family: models come from `mobilevit.auto`, so every registered family exports.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import auto
from ..errors import UserError
from ..file_utils import json_text
from ..ssd import center_to_corners
from ..tasks import CLASSIFICATION, FEATURE_EXTRACTION, OBJECT_DETECTION, SEGMENTATION

INPUT_NAME = "pixel_values"
SIDECAR_SUFFIX = ".json"  # model.onnx -> model.onnx.json: one per artefact, whatever sits beside it


class ExportError(UserError):
    """A mistake in `mobilevit export`'s arguments (exit 2) or an input it cannot use (exit 1)."""


class ExportCheckError(ExportError):
    """The artefact, run in its runtime, does not reproduce PyTorch's outputs within the bound."""


# ---------------------------------------------------------------------------------------------------------
# The graph: pixels in, the main outputs out
# ---------------------------------------------------------------------------------------------------------
class MainOutputs(nn.Module):
    """The model with one tensor in and plain tensors out (logits, or the backbone's last hidden state and
    pooled output), which is what every exported graph holds; the per-stage hidden states are left out.

    A detector's graph ends at decoded boxes and scores, where non-maximum suppression takes over (outside the
    graph, by the rule in the sidecar): `scores` (batch, anchors, classes), the softmax over all classes with the
    background in column 0, and `boxes` (batch, anchors, 4), corners (x1, y1, x2, y2) normalised to the input,
    not clipped."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.task = auto.task_of_model(model)
        if self.task == FEATURE_EXTRACTION:
            self._names = self._backbone_outputs()
        else:
            self._names = ["scores", "boxes"] if self.task == OBJECT_DETECTION else ["logits"]

    @property
    def config(self):
        return self.model.config

    @property
    def min_input_size(self) -> int:
        return int(getattr(self.model, "min_input_size", 32))

    def output_names(self) -> list[str]:
        return list(self._names)

    def dynamic_example_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """An input size to trace a graph for every size with: `size`, or for a detector one where every level
        but the global one is at least 2x2 (torch.export makes a dimension of 1 a constant, and the graph would
        serve only inputs whose small levels are 1x1 too)."""
        if self.task != OBJECT_DETECTION:
            return tuple(size)
        deepest = max(self.config.ssd_output_strides)
        least = (deepest // 32 + 1) * 32
        return tuple(max(side, least) for side in size)

    def _backbone_outputs(self) -> list[str]:
        """What this family's backbone returns (some have no pooled output), asked of the model itself."""
        probe = torch.zeros(1, self.config.num_channels, 2 * self.min_input_size, 2 * self.min_input_size)
        with torch.no_grad():
            outputs = self.model(probe, return_dict=True)
        return [name for name in ("last_hidden_state", "pooler_output") if outputs.get(name) is not None]

    def forward(self, pixel_values: torch.Tensor):
        outputs = self.model(pixel_values, return_dict=True)
        if self.task == OBJECT_DETECTION:
            return outputs.logits.softmax(dim=-1), center_to_corners(outputs.pred_boxes)
        return tuple(outputs[name] for name in self.output_names())


def load_model(model_dir: str | os.PathLike):
    """(model in eval mode, its image processor, task) of a saved folder of any registered family, with a
    one-line `ExportError` for a folder that is not one or whose weights do not fit its config."""
    path = Path(model_dir)
    if not path.is_dir():
        what = "a file" if path.exists() else "nothing"
        raise ExportError(f"--model: expected a folder written by save_pretrained, got {str(path)!r} ({what} there)")
    try:
        with auto.quiet_transformers():  # its load report and bar would precede our one-line error
            model, processor, task = auto.load_model_and_processor(path)
    except Exception as err:  # noqa: BLE001 truncated weights (SafetensorError), mismatched widths (RuntimeError), ...
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
        if "mismatch" in first_line:
            first_line = _first_mismatch(path) or first_line
        raise ExportError(f"--model: cannot load the model in {str(path)!r}: {type(err).__name__}: {first_line}") from None
    if next(model.parameters()).dtype != torch.float32:
        model = model.float()  # exports start from float32; precision is chosen by --quantize
    return model.eval(), processor, task


def _first_mismatch(path: Path) -> str | None:
    """'weights do not fit config.json: <key> is <shape> in the weights, <shape> by the config' (or None)."""
    from safetensors import safe_open

    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        return None
    config = auto.load_config(path)
    expected = {k: tuple(v.shape) for k, v in auto.new_model(config).state_dict().items()}
    with safe_open(str(weights[0]), framework="pt") as stored:
        for key in stored.keys():
            shape = tuple(stored.get_slice(key).get_shape())
            for name in (key, key.removeprefix(config.model_type + ".")):
                if name in expected and expected[name] != shape:
                    return (f"the weights do not fit config.json: {key} is {list(shape)} in {weights[0].name}, "
                            f"{list(expected[name])} by the config")
    return None


def input_size(processor, config) -> tuple[int, int]:
    """(height, width) the model's processor produces: the fixed input of fixed-size formats."""
    crop = getattr(processor, "crop_size", None) if processor.setting("do_center_crop") else None
    if crop and crop.get("height"):
        return int(crop["height"]), int(crop["width"])
    size = config.image_size
    return (size[0], size[1]) if isinstance(size, (list, tuple)) else (int(size), int(size))


# ---------------------------------------------------------------------------------------------------------
# Real images to check with
# ---------------------------------------------------------------------------------------------------------
def sample_photos() -> list[np.ndarray]:
    """Photos shipped inside scikit-learn and scikit-image (no download): RGB uint8 arrays."""
    from sklearn.datasets import load_sample_images
    from skimage import data

    photos = list(load_sample_images().images)
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        photos.append(np.asarray(getattr(data, name)()))
    return [p if p.ndim == 3 else np.repeat(p[..., None], 3, axis=2) for p in photos]


def check_inputs(processor, size: tuple[int, int], channels: int) -> torch.Tensor:
    """The shipped photos through the model's own processor, at the export's input size."""
    photos = sample_photos()
    if channels != 3:  # a model of other channel counts: the photos' grey levels, repeated
        photos = [np.repeat(p.mean(axis=2, keepdims=True).astype(np.uint8), channels, axis=2) for p in photos]
    return preprocess(processor, photos, size)


def preprocess(processor, images, size: tuple[int, int]) -> torch.Tensor:
    """`images` as the processor prepares them, forced to `size` (crop or resize) for a fixed-size graph."""
    pixel_values = processor(images, return_tensors="pt")["pixel_values"].float()
    if tuple(pixel_values.shape[-2:]) != tuple(size):
        pixel_values = torch.nn.functional.interpolate(pixel_values, size=size, mode="bilinear", align_corners=False)
    return pixel_values


# ---------------------------------------------------------------------------------------------------------
# Comparing an artefact with PyTorch
# ---------------------------------------------------------------------------------------------------------
# The bound each precision is checked against: max |artefact - PyTorch| over every output, divided by the
# largest |PyTorch output|; measured values are in docs/deployment.md. fp32: 1e-4, absolute for outputs
# within [-1, 1] (float32 rounding grows with the values: a trained segmenter's logits reach 6.5 and its
# 250x310 ONNX graph, resizes included, differed by 1.5e-4).
# int8 changes outputs too much for an elementwise bound, and arg-max agreement on a few photos is coarse (a
# random-weight test model's logits lie close together): the check only catches a broken artefact, by the
# correlation of all its outputs with PyTorch's; what int8 costs is measured as accuracy on the user's
# held-out data (--eval-data).
FP32_ATOL = 1e-4
RELATIVE_BOUNDS = {"fp16": 2e-2, "bf16": 8e-2}
MIN_CORRELATION = {"int8": 0.5}  # garbage gives ~0; a random-weight classifier in OpenVINO int8 gave 0.63


@dataclass
class Comparison:
    """How an artefact's outputs compare with PyTorch's on the same inputs."""

    max_abs_error: float
    output_scale: float  # max |PyTorch output|
    relative_error: float  # max_abs_error / output_scale
    correlation: float  # Pearson correlation of all output values with PyTorch's
    agreement: float | None  # share of images (classification) or pixels (segmentation) with the same arg-max
    inputs: str  # what was compared, e.g. "7 photos at 256x256"

    def as_dict(self) -> dict:
        return {"max_abs_error": self.max_abs_error, "output_scale": self.output_scale,
                "relative_error": self.relative_error, "correlation": self.correlation,
                "agreement": self.agreement, "inputs": self.inputs}

    def summary(self) -> str:
        text = (f"max abs error {self.max_abs_error:.2e} (relative {self.relative_error:.2e}), "
                f"correlation {self.correlation:.4f}")
        return text + (f", arg-max agreement {self.agreement:.1%}" if self.agreement is not None else "")


def compare(expected: Sequence[torch.Tensor], got: Sequence[np.ndarray], task: str, inputs: str) -> Comparison:
    if len(got) != len(expected):
        raise ExportCheckError(f"the artefact returned {len(got)} outputs, PyTorch {len(expected)}")
    error, scale, pairs = 0.0, 0.0, []
    for e, g in zip(expected, got):
        g = torch.as_tensor(np.asarray(g), dtype=torch.float32)
        if tuple(g.shape) != tuple(e.shape):
            raise ExportCheckError(f"the artefact's output has shape {tuple(g.shape)}, PyTorch's {tuple(e.shape)}")
        if not torch.isfinite(g).all():
            raise ExportCheckError("the artefact's outputs hold NaN or infinity")
        error = max(error, float((g - e).abs().max()))
        scale = max(scale, float(e.abs().max()))
        pairs.append(torch.stack([g.flatten(), e.flatten().float()]))
    agreement = None
    if task in (CLASSIFICATION, SEGMENTATION):
        agreement = float((torch.as_tensor(np.asarray(got[0])).argmax(1) == expected[0].argmax(1)).float().mean())
    correlation = float(torch.corrcoef(torch.cat(pairs, dim=1))[0, 1])
    return Comparison(error, scale, error / max(scale, 1e-12), correlation, agreement, inputs)


def enforce_bound(comparison: Comparison, precision: str, runtime: str) -> None:
    """Raise `ExportCheckError` when `comparison` is outside the bound of `precision` (see RELATIVE_BOUNDS)."""
    if precision == "fp32":
        ok = comparison.max_abs_error <= FP32_ATOL * max(1.0, comparison.output_scale)
        bound = f"max abs error <= {FP32_ATOL} x max(1, |output|)"
    elif precision in RELATIVE_BOUNDS:
        ok, bound = comparison.relative_error <= RELATIVE_BOUNDS[precision], \
            f"relative error <= {RELATIVE_BOUNDS[precision]}"
    else:
        floor = MIN_CORRELATION[precision]
        ok, bound = comparison.correlation >= floor, f"correlation with PyTorch's outputs >= {floor}"
    if not ok:
        raise ExportCheckError(f"{runtime} differs from PyTorch beyond the {precision} bound ({bound}): "
                               f"{comparison.summary()} on {comparison.inputs}")


# ---------------------------------------------------------------------------------------------------------
# The sidecar: what a deployment needs to feed the artefact and read its outputs
# ---------------------------------------------------------------------------------------------------------
def sidecar_path(output: Path) -> Path:
    return output.with_name(output.name + SIDECAR_SUFFIX)


def preprocessing_of(processor) -> dict:
    """The processor's steps in words and numbers a runtime outside Python can follow."""
    setting = processor.setting  # a switch stored as None means its default
    size = dict(processor.size) if setting("do_resize") and processor.size else None
    crop = dict(processor.crop_size) if setting("do_center_crop") and processor.crop_size else None
    resample = {0: "nearest", 2: "bilinear", 3: "bicubic"}.get(int(processor.resample), str(processor.resample))
    antialias = bool(setting("resize_antialias"))
    how = f"{resample}{', antialiased' if antialias else ''}"
    return {
        "resize": {"size": size, "resample": resample, "antialias": antialias} if size else None,
        "center_crop": crop,
        "rescale_factor": float(processor.rescale_factor) if setting("do_rescale") else None,
        "channel_order": "BGR" if setting("do_flip_channel_order") else "RGB",
        "normalize": None,
        "layout": "NCHW float32",
        "summary": (
            (f"resize the shortest edge to {size.get('shortest_edge')} ({how}), " if size and size.get("shortest_edge")
             else f"resize to {size} ({how}), " if size else "")
            + (f"centre-crop {crop['height']}x{crop['width']}, " if crop else "")
            + (f"multiply by {float(processor.rescale_factor):.6g} (pixels in [0, 1]), " if setting("do_rescale")
               else "")
            + ("flip RGB to BGR, " if setting("do_flip_channel_order") else "keep RGB, ")
            + "no mean/std normalisation"
        ),
    }


def write_sidecar(path: Path, content: dict) -> None:
    """The sidecar as JSON (NaN or infinity never written: `file_utils.json_text`)."""
    path.write_text(json_text(content) + "\n")


# ---------------------------------------------------------------------------------------------------------
# Quiet exporters: their notes about what does not concern a MobileViT graph look like failures
# ---------------------------------------------------------------------------------------------------------
_NOISY_LOGGERS = ("torch.onnx._internal.exporter._registration",  # "torchvision is not installed. Skipping ..."
                  "torch.onnx._internal.exporter._core")


def _not_from_onnxruntime_quantization(record: logging.LogRecord) -> bool:
    # "Please consider to run pre-processing before quantization" (twice), logged on the root logger: int8
    # ONNX is calibrated on the graph as exported, on purpose
    return "onnxruntime" not in record.pathname or "quantization" not in record.pathname


@contextmanager
def quiet_exporters():
    """While an artefact is written: no notes of missing torchvision operators (MobileViT uses none), no
    deprecation warnings from inside torch's exporters (`LeafSpec`) and no advice from ONNX Runtime's quantizer;
    our own log lines say what happens."""
    levels = {name: logging.getLogger(name).level for name in _NOISY_LOGGERS}
    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    root = logging.getLogger()
    # `logging.warning()` installs "WARNING:root:" printing on a root logger without handlers, for good: a
    # handler here for the while (printing as Python's last resort does) keeps that from happening
    handler = logging.StreamHandler() if not root.handlers else None
    if handler is not None:
        handler.setLevel(logging.WARNING)
        root.addHandler(handler)
    root.addFilter(_not_from_onnxruntime_quantization)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, message=".*LeafSpec.*")
            warnings.filterwarnings("ignore", category=FutureWarning, module="torch.*")
            yield
    finally:
        root.removeFilter(_not_from_onnxruntime_quantization)
        if handler is not None:
            root.removeHandler(handler)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def is_inside(path: Path, folder: Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


Runner = Callable[[np.ndarray], list]


def per_image(run_one: Callable[[np.ndarray], list]) -> Runner:
    """A runner for whole batches from one that takes a single 1xCxHxW image (the fixed-size graphs)."""

    def run(pixel_values: np.ndarray) -> list:
        outputs = [run_one(np.ascontiguousarray(image[None], dtype=np.float32)) for image in pixel_values]
        return [np.concatenate([np.asarray(o[i]) for o in outputs]) for i in range(len(outputs[0]))]

    return run

__all__ = ["ExportError", "ExportCheckError", "MainOutputs", "Comparison", "INPUT_NAME", "quiet_exporters",
           "per_image", "load_model", "input_size", "sample_photos", "check_inputs", "preprocess", "compare", "enforce_bound",
           "sidecar_path", "preprocessing_of", "write_sidecar", "is_inside", "Runner"]
