"""OpenVINO IR (`.xml` + `.bin`), run with OpenVINO's CPU plugin; int8 by NNCF.

The model is converted from the `torch.export`ed program at the processor's input size with the batch
dimension free: the IR declares `[?, C, H, W]` and takes any batch of that height and width (the sidecar's
`input.accepts`). A job that asks for every size (`ExportJob.dynamic_size`: the runtime switch of `predict`
for segmentation of whole images) is converted from the dynamic ONNX graph instead (`[?, C, ?, ?]`, which
needs the `export` extra's ONNX exporter as well).

Precisions:

- fp32: weights and inference in float32. OpenVINO's CPU plugin infers in bfloat16 by default on CPUs that
  have it (0.01-0.1 logit error measured), whatever the IR holds, and it does not read a precision hint
  from the IR's rt_info: a program must compile it with `INFERENCE_PRECISION_HINT=f32` to get the checked
  numbers. The runner does; the sidecar's `runtime_config` states it and `mobilevit export` prints it.
- fp16: weights stored in float16 (half the size), inference in float32.
- bf16: float32 weights, inference in bfloat16 (`INFERENCE_PRECISION_HINT=bf16`); on a CPU without bfloat16
  the plugin runs float32 and the check reports that.
- int8: NNCF post-training quantization calibrated on the user's images (`ModelType.TRANSFORMER`, which keeps
  LayerNorm, Softmax and the other sensitive operations in float).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from .base import ExportJob, Format
from .common import INPUT_NAME, Runner

INFERENCE_PRECISION = {"fp32": "f32", "fp16": "f32", "int8": "f32", "bf16": "bf16"}


def runtime_config(precision: str, threads: int | None = None) -> dict:
    """The CPU plugin settings that reproduce the numbers `mobilevit export` checked."""
    config = {"INFERENCE_PRECISION_HINT": INFERENCE_PRECISION[precision]}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    return config


class OpenVINOFormat(Format):
    name, title, suffix, extra = "openvino", "OpenVINO", ".xml", "openvino"
    modules = ("openvino",)
    precision_modules = {"int8": ("nncf",)}
    precisions = ("fp32", "fp16", "bf16", "int8")
    calibrated = ("int8",)
    runtime = "OpenVINO (CPU)"
    companions = (".bin",)
    dynamic_batch = True
    can_take_every_size = True

    def write(self, job: ExportJob, path: Path) -> dict:
        import openvino as ov

        if self.is_fixed_size(job):
            model = ov.convert_model(self.trace(job))
        else:
            from .onnx import export_graph

            with tempfile.TemporaryDirectory(prefix="mobilevit-openvino-", dir=path.parent) as folder:
                onnx_path = Path(folder) / "graph.onnx"
                export_graph(job, onnx_path)
                model = ov.convert_model(str(onnx_path))
        accepted = self.accepted_shapes(job)
        # state the input's shape exactly: a number for a fixed axis, -1 (any) for a free one
        model.reshape({0: ov.PartialShape([v if isinstance(v, int) else -1 for v in accepted.values()])})
        model.inputs[0].get_tensor().set_names({INPUT_NAME})
        for output, name in zip(model.outputs, job.graph.output_names()):
            output.get_tensor().set_names({name})
        facts = {"runtime_config": runtime_config(job.precision),
                 "runtime_note": "compile with runtime_config (core.compile_model(xml, 'CPU', runtime_config)): "
                                 "without INFERENCE_PRECISION_HINT the CPU plugin runs bfloat16 on CPUs that have it"}
        if job.precision == "int8":
            import nncf

            dataset = nncf.Dataset([batch.numpy() for batch in job.calibration])
            model = nncf.quantize(model, dataset, model_type=nncf.ModelType.TRANSFORMER,
                                  subset_size=sum(len(batch) for batch in job.calibration))
            facts["quantization"] = {"method": "NNCF post-training quantization (ModelType.TRANSFORMER)",
                                     "weights": "int8 per channel", "activations": "int8 per tensor"}
        ov.save_model(model, str(path), compress_to_fp16=job.precision == "fp16")
        return facts

    def load(self, path: Path, precision: str, threads: int | None) -> Runner:
        return openvino_runner(path, precision, threads)


def openvino_runner(path: Path, precision: str = "fp32", threads: int | None = None) -> Runner:
    """The IR compiled for the CPU with the settings of `runtime_config`; runs whole batches."""
    import openvino as ov

    compiled = ov.Core().compile_model(str(path), "CPU", runtime_config(precision, threads))
    request = compiled.create_infer_request()

    def run(pixel_values: np.ndarray) -> list:
        result = request.infer({0: np.ascontiguousarray(pixel_values, dtype=np.float32)})
        return [np.array(result[o]) for o in compiled.outputs]

    return run


FORMAT = OpenVINOFormat()

__all__ = ["FORMAT", "OpenVINOFormat", "openvino_runner", "runtime_config"]
