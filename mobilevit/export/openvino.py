"""OpenVINO IR (`.xml` + `.bin`), run with OpenVINO's CPU plugin; int8 by NNCF.

The model is converted from the `torch.export`ed program at the processor's input size (batch 1).
Precisions:

- fp32: weights and inference in float32. OpenVINO's CPU plugin infers in bfloat16 by default on CPUs that
  have it (0.02-0.1 logit error measured), so the runner, and the sidecar's `runtime_config`, ask for
  `INFERENCE_PRECISION_HINT=f32`.
- fp16: weights stored in float16 (half the size), inference in float32.
- bf16: float32 weights, inference in bfloat16 (`INFERENCE_PRECISION_HINT=bf16`); on a CPU without bfloat16
  the plugin runs float32 and the check reports that.
- int8: NNCF post-training quantization calibrated on the user's images (`ModelType.TRANSFORMER`, which keeps
  LayerNorm, Softmax and the other sensitive operations in float).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import ExportJob, Format
from .common import Runner, per_image

INFERENCE_PRECISION = {"fp32": "f32", "fp16": "f32", "int8": "f32", "bf16": "bf16"}


class OpenVINOFormat(Format):
    name, title, suffix, extra = "openvino", "OpenVINO", ".xml", "openvino"
    modules = ("openvino",)
    precision_modules = {"int8": ("nncf",)}
    precisions = ("fp32", "fp16", "bf16", "int8")
    calibrated = ("int8",)
    runtime = "OpenVINO (CPU)"
    companions = (".bin",)

    def write(self, job: ExportJob, path: Path) -> dict:
        import openvino as ov

        model = ov.convert_model(self.trace(job))
        model.inputs[0].get_tensor().set_names({"pixel_values"})
        for output, name in zip(model.outputs, job.graph.output_names()):
            output.get_tensor().set_names({name})
        facts = {"input_shape": [1, job.graph.config.num_channels, *job.size],
                 "runtime_config": {"INFERENCE_PRECISION_HINT": INFERENCE_PRECISION[job.precision]}}
        if job.precision == "int8":
            import nncf

            dataset = nncf.Dataset([image[None].numpy() for batch in job.calibration for image in batch])
            model = nncf.quantize(model, dataset, model_type=nncf.ModelType.TRANSFORMER,
                                  subset_size=sum(len(batch) for batch in job.calibration))
            facts["quantization"] = {"method": "NNCF post-training quantization (ModelType.TRANSFORMER)",
                                     "weights": "int8 per channel", "activations": "int8 per tensor"}
        ov.save_model(model, str(path), compress_to_fp16=job.precision == "fp16")
        return facts

    def load(self, path: Path, precision: str, threads: int | None) -> Runner:
        return openvino_runner(path, INFERENCE_PRECISION[precision], threads)


def openvino_runner(path: Path, precision: str = "f32", threads: int | None = None) -> Runner:
    import openvino as ov

    config = {"INFERENCE_PRECISION_HINT": precision}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    compiled = ov.Core().compile_model(str(path), "CPU", config)
    request = compiled.create_infer_request()

    def run_one(image: np.ndarray) -> list:
        result = request.infer({0: image})
        return [np.array(result[o]) for o in compiled.outputs]

    return per_image(run_one)


FORMAT = OpenVINOFormat()

__all__ = ["FORMAT", "OpenVINOFormat", "openvino_runner"]
