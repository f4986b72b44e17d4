"""`mobilevit export`: a saved model folder -> an ONNX file, checked with ONNX Runtime before it is kept.

    mobilevit export --format onnx --model DIR --output model.onnx [--opset 18] [--overwrite]

The graph comes from torch 2.13's dynamo-based exporter (`torch.onnx.export(..., dynamo=True)`), which
keeps the batch, height and width symbolic: one file serves every input size >= 32x32. The legacy
TorchScript exporter cannot: it traces Python-level shape arithmetic into constants, so the resize that
MobileViT blocks apply to maps not divisible by the patch size would be baked in for the example size.
While exporting, MobileViT blocks always emit that resize (same-size bilinear resizing is the identity),
so odd sizes take the same graph.

Before the file is moved into place, ONNX Runtime runs it on two input sizes (one of them odd, so the
resize path is exercised) and every output must match PyTorch within 1e-4.

Limits: float32 only; the graph holds the plain (unfolded) modules, ONNX Runtime folds BatchNorm itself;
the outputs are the main ones (logits, or the base model's last hidden state and pooled output), without
the per-stage hidden states.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

from . import auto
from .tasks import FEATURE_EXTRACTION

FORMATS = ("onnx",)
DEFAULT_OPSET = 18
CHECK_ATOL = 1e-4
# (batch, height, width) the exported file is run on before it is accepted; 250x310 takes the resize path
CHECK_SHAPES = ((1, 256, 256), (2, 250, 310))


class ExportCheckError(RuntimeError):
    """The exported graph does not reproduce the PyTorch model's outputs."""


class _MainOutputs(nn.Module):
    """The model with tensors in and tensors out, named for the ONNX graph."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def output_names(self) -> list[str]:
        if auto.task_of_model(self.model) == FEATURE_EXTRACTION:
            return ["last_hidden_state", "pooler_output"] if self.model.expand_output else ["last_hidden_state"]
        return ["logits"]

    def forward(self, pixel_values: torch.Tensor):
        outputs = self.model(pixel_values, return_dict=True)
        return tuple(outputs[name] for name in self.output_names())


def load_model(model_dir: str | os.PathLike) -> nn.Module:
    """A saved folder (ours or stock transformers') of any registered family, as this package's class of the
    head its config names, in eval mode."""
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"model: expected a folder with config.json (save_pretrained's output), got {model_dir}")
    return auto.load_model(model_dir).eval()


def export_onnx(
    model: nn.Module,
    output: str | os.PathLike,
    opset: int = DEFAULT_OPSET,
    overwrite: bool = False,
    check_shapes=CHECK_SHAPES,
    seed: int = 0,
) -> dict[str, float]:
    """Write `model` as ONNX to `output` after checking it with ONNX Runtime; returns the max error per shape."""
    output = Path(output)
    if output.exists() and not overwrite:
        raise FileExistsError(f"output: {output} already exists (pass overwrite=True / --overwrite to replace it)")
    if not output.parent.is_dir():
        raise FileNotFoundError(f"output: the folder {output.parent} does not exist")
    if not isinstance(opset, int) or opset < 18:
        raise ValueError(f"opset: expected an int >= 18 (the dynamo exporter's minimum), got {opset!r}")
    if next(model.parameters()).dtype != torch.float32:
        raise TypeError(f"model: expected float32 weights to export, got {next(model.parameters()).dtype}")

    wrapper = _MainOutputs(model.eval()).eval()
    size = int(getattr(model.config, "image_size", 256))
    example = torch.rand(2, model.config.num_channels, size, size)  # batch 2: a batch of 1 would be specialised
    dim = torch.export.Dim
    dynamic = {
        0: dim("batch", min=1, max=4096),
        2: dim("height", min=model.min_input_size, max=8192),
        3: dim("width", min=model.min_input_size, max=8192),
    }

    fd, tmp_name = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with torch.no_grad():
            torch.onnx.export(
                wrapper, (example,), str(tmp), dynamo=True, opset_version=opset,
                input_names=["pixel_values"], output_names=wrapper.output_names(),
                dynamic_shapes={"pixel_values": dynamic}, external_data=False,
            )
        errors = check_onnx(wrapper, tmp, check_shapes, seed)
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o666 & ~umask)  # mkstemp's 0600 is for the half-written file, not the result
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
    return errors


def ort_session(path: str | os.PathLike, threads: int | None = None):
    """An ONNX Runtime CPU session whose idle threads do not spin (they would steal cores from the caller)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def check_onnx(wrapper: _MainOutputs, path: Path, shapes, seed: int = 0) -> dict[str, float]:
    """Run the ONNX file and PyTorch on random inputs of `shapes`; raise ExportCheckError beyond CHECK_ATOL."""
    session = ort_session(path)
    generator = torch.Generator().manual_seed(seed)
    channels = wrapper.model.config.num_channels
    errors = {}
    for batch, height, width in shapes:
        pixel_values = torch.rand(batch, channels, height, width, generator=generator)
        with torch.no_grad():
            expected = wrapper(pixel_values)
        got = session.run(None, {"pixel_values": pixel_values.numpy()})
        error = max(float((torch.from_numpy(g) - e).abs().max()) for g, e in zip(got, expected))
        errors[f"{batch}x{channels}x{height}x{width}"] = error
        if not error <= CHECK_ATOL:
            raise ExportCheckError(
                f"ONNX Runtime differs from PyTorch by {error:.3g} (> {CHECK_ATOL}) on input {batch}x{channels}x{height}x{width}"
            )
    return errors


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=FORMATS, default="onnx", help="export format (only onnx)")
    parser.add_argument("--model", required=True, help="folder written by save_pretrained (ours or stock transformers')")
    parser.add_argument("--output", required=True, help="file to write, e.g. model.onnx")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    parser.add_argument("--overwrite", action="store_true", help="replace --output if it exists")


def run(args: argparse.Namespace) -> int:
    try:
        model = load_model(args.model)
        errors = export_onnx(model, args.output, opset=args.opset, overwrite=args.overwrite)
    except (OSError, ValueError, TypeError, ExportCheckError) as error:
        print(f"mobilevit export: error: {error}", file=sys.stderr)
        return 1
    checked = ", ".join(f"{shape}: {error:.1e}" for shape, error in errors.items())
    print(f"wrote {args.output} (dynamic batch/height/width); ONNX Runtime vs PyTorch max abs error: {checked}")
    return 0
