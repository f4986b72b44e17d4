"""ONNX (`.onnx`), run with ONNX Runtime; int8 by ONNX Runtime's static QDQ quantization.

The graph comes from torch's dynamo-based exporter (`torch.onnx.export(..., dynamo=True)`) with the batch,
height and width symbolic: one file serves every input size >= the model's minimum. The legacy
TorchScript exporter cannot: it traces Python-level shape arithmetic into constants. The graph holds the
plain modules; ONNX Runtime folds BatchNorm itself.

int8 (`--quantize int8`): weights per output channel, activations per tensor from calibration on the
user's images, only on the inputs of Conv and MatMul (and Gemm). ONNX Runtime's defaults also quantize
LayerNorm, Softmax, Resize and Concat; on MobileViT that ruins segmentation (49 % pixel agreement with
float against 87 % for Conv only, measured on random weights), because the transformer's LayerNorm inputs
and the attention probabilities do not fit one int8 scale. `quant_pre_process` is skipped: it fails on the
dynamic-shape graph, and the graph is already what it would produce for the ops quantized here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .base import ExportJob, Format
from .common import INPUT_NAME, Runner

DEFAULT_OPSET = 18
MAX_SIDE = 8192
QUANTIZED_OPS = ["Conv", "MatMul", "Gemm"]


def export_graph(job: ExportJob, path: Path, opset: int = DEFAULT_OPSET) -> None:
    """The job's graph as a dynamic-shape float32 ONNX file."""
    from .. import export_mode

    graph = job.graph
    # batch 2 (a batch of 1 would be specialised), and a size where no dimension is 1 but the global level's
    example = torch.rand(2, graph.config.num_channels, *graph.dynamic_example_size(job.size))
    dim = torch.export.Dim
    dynamic = {0: dim("batch", min=1, max=4096), 2: dim("height", min=graph.min_input_size, max=MAX_SIDE),
               3: dim("width", min=graph.min_input_size, max=MAX_SIDE)}
    with torch.no_grad(), export_mode.exporting(graph, fixed_size=False):
        torch.onnx.export(graph, (example,), str(path), dynamo=True, opset_version=opset, input_names=[INPUT_NAME],
                          output_names=graph.output_names(), dynamic_shapes={INPUT_NAME: dynamic},
                          external_data=False, verbose=False)


def quantize_int8(float_path: Path, path: Path, calibration: list[torch.Tensor]) -> dict:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._batches = iter(calibration)

        def get_next(self):
            batch = next(self._batches, None)
            return None if batch is None else {INPUT_NAME: batch.numpy()}

    quantize_static(str(float_path), str(path), Reader(), quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=QUANTIZED_OPS, per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, extra_options={"ActivationSymmetric": False})
    return {"method": "ONNX Runtime static QDQ", "quantized_ops": QUANTIZED_OPS, "weights": "int8 per channel",
            "activations": "uint8 per tensor (min/max calibration)", "kept_float": "everything else "
            "(LayerNorm, Softmax, Resize, Concat, Add, activations)"}


def ort_session(path: str | Path, threads: int | None = None):
    """An ONNX Runtime CPU session whose idle threads do not spin (they would steal cores from the caller)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxFormat(Format):
    name, title, suffix, extra = "onnx", "ONNX", ".onnx", "export"
    modules = ("onnxruntime", "onnx", "onnxscript")  # the runtime, and the exporter's own dependencies
    precisions = ("fp32", "int8")
    calibrated = ("int8",)
    runtime = "ONNX Runtime"
    fixed_size = False

    def write(self, job: ExportJob, path: Path) -> dict:
        if job.precision == "fp32":
            export_graph(job, path)
            return {"dynamic_axes": ["batch", "height", "width"]}
        float_path = path.with_name(path.stem + ".float.onnx")
        try:
            export_graph(job, float_path)
            return {"dynamic_axes": ["batch", "height", "width"],
                    "quantization": quantize_int8(float_path, path, job.calibration)}
        finally:
            float_path.unlink(missing_ok=True)

    def load(self, path: Path, precision: str, threads: int | None) -> Runner:
        session = ort_session(path, threads)

        def run(pixel_values: np.ndarray) -> list:
            return session.run(None, {INPUT_NAME: np.ascontiguousarray(pixel_values, dtype=np.float32)})

        return run


FORMAT = OnnxFormat()

__all__ = ["FORMAT", "OnnxFormat", "export_graph", "quantize_int8", "ort_session", "DEFAULT_OPSET"]
