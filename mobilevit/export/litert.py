"""LiteRT (`.tflite`, formerly TensorFlow Lite) by `litert-torch`, run with LiteRT's interpreter.

`litert-torch` 0.10 keeps torch 2.13 but downgrades typing_extensions and pydantic, which breaks the
`[dev]` extra's jupyter-client; so it lives in an environment of its own:

    python -m venv .venv-litert && .venv-litert/bin/pip install torch==2.13.0 && .venv-litert/bin/pip install -e ".[litert]"
    export MOBILEVIT_LITERT_PYTHON=$PWD/.venv-litert/bin/python

`mobilevit export --format litert` then runs the conversion and the interpreter in that Python, as a child
process (`python -m mobilevit.export.litert ...`), and compares the outputs here. Where `litert_torch`
imports in the current environment, everything runs in-process instead.

The graph is `torch.export`ed at the processor's input size (batch 1). int8 (`--quantize int8`): PT2E with
litert-torch's quantizer (symmetric, weights per channel, activations per tensor, calibrated on the user's
images). The converted model then takes and returns int8 tensors: the input is quantized with the scale and
zero point stated in the sidecar (`io_quantization`; for pixels in [0, 1] that is x / scale + zero_point),
and the outputs are dequantized the same way. The runners here do both, so the comparison with PyTorch is in
float.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..errors import MissingDependencyError
from .base import ExportJob, Format
from .common import ExportError, Runner, per_image

PYTHON_VARIABLE = "MOBILEVIT_LITERT_PYTHON"


def _in_process() -> bool:
    try:
        import litert_torch  # noqa: F401
    except ImportError:
        return False
    return True


def separate_python() -> str | None:
    """The interpreter of the separate LiteRT environment, if one is configured."""
    return os.environ.get(PYTHON_VARIABLE) or None


class LiteRTFormat(Format):
    name, title, suffix, extra = "litert", "LiteRT", ".tflite", "litert"
    modules = ("litert_torch",)
    precisions = ("fp32", "int8")
    calibrated = ("int8",)
    runtime = "LiteRT interpreter"

    def require(self, precision: str) -> None:
        if _in_process():
            return
        python = separate_python()
        if python is None:
            raise MissingDependencyError(
                "mobilevit export --format litert needs litert-torch, which is neither installed here nor configured "
                f"as a separate environment; install it in its own venv with pip install \"mobilevit[litert]\" and "
                f"set {PYTHON_VARIABLE} to that venv's python (see docs/installation.md, 'LiteRT in its own environment')")
        if not Path(python).is_file():
            raise MissingDependencyError(f"{PYTHON_VARIABLE}: expected the path of a Python interpreter, got {python!r} "
                                         "(no such file)")

    def write(self, job: ExportJob, path: Path) -> dict:
        calibration = torch.cat(job.calibration) if job.calibration else None
        if _in_process():
            io = convert(job.graph, job.example, path, calibration)
        else:
            with tempfile.TemporaryDirectory(prefix="mobilevit-litert-") as folder:
                if calibration is not None:
                    np.save(Path(folder) / "calibration.npy", calibration.numpy())
                _child("convert", model_dir=str(job.model_dir), size=list(job.size), output=str(path), folder=folder)
                io = json.loads((Path(folder) / "io.json").read_text())
        facts = {"input_shape": [1, job.graph.config.num_channels, *job.size], "io_quantization": io,
                 "environment": "in-process" if _in_process() else f"child process ({separate_python()})"}
        if job.precision == "int8":
            facts["quantization"] = {"method": "PT2E, litert-torch PT2EQuantizer (static)",
                                     "weights": "int8 per channel", "activations": "int8 per tensor",
                                     "inputs_and_outputs": "int8, see io_quantization"}
        return facts

    def load(self, path: Path, precision: str, threads: int | None) -> Runner:
        if not _in_process():
            raise MissingDependencyError("running a .tflite in this process needs litert-torch here (pip install "
                                         "\"mobilevit[litert]\" in a separate environment, and run from there)")
        return interpreter_runner(path, threads)

    def runner(self, path: Path, job: ExportJob) -> Runner:
        if _in_process():
            return interpreter_runner(path, job.threads)

        def run(pixel_values: np.ndarray) -> list:
            with tempfile.TemporaryDirectory(prefix="mobilevit-litert-") as folder:
                np.save(Path(folder) / "inputs.npy", np.ascontiguousarray(pixel_values, dtype=np.float32))
                _child("run", artefact=str(path), folder=folder, threads=job.threads)
                count = len(job.graph.output_names())
                return [np.load(Path(folder) / f"output{i}.npy") for i in range(count)]

        return run


def convert(graph: torch.nn.Module, example: torch.Tensor, path: Path, calibration: torch.Tensor | None = None) -> dict:
    """Write the `.tflite` (int8 when `calibration` images are given); returns its inputs' and outputs'
    int8 quantization (empty lists for float32)."""
    import litert_torch

    from .. import export_mode

    graph = graph.eval()
    with torch.no_grad(), export_mode.exporting(graph, fixed_size=True):
        if calibration is None:
            converted = litert_torch.convert(graph, (example,))
        else:
            from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
            from litert_torch.quantize.quant_config import QuantConfig
            from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

            quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
            prepared = prepare_pt2e(torch.export.export(graph, (example,), strict=False).module(), quantizer)
            for image in calibration.split(1):  # the graph takes one image
                prepared(image)
            quantized = convert_pt2e(prepared, fold_quantize=False)
            converted = litert_torch.convert(quantized, (example,), quant_config=QuantConfig(pt2e_quantizer=quantizer))
    converted.export(str(path))
    interpreter = _interpreter(path, 1)
    return {side: [{"dtype": np.dtype(d["dtype"]).name, "scale": float(d["quantization"][0]),
                    "zero_point": int(d["quantization"][1])} for d in details if d["dtype"] == np.int8]
            for side, details in (("inputs", interpreter.get_input_details()),
                                  ("outputs", interpreter.get_output_details()))}


def _interpreter(path: Path, threads: int | None):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=threads or 2)
    interpreter.allocate_tensors()
    return interpreter


def interpreter_runner(path: Path, threads: int | None = None) -> Runner:
    """The `.tflite` in LiteRT's interpreter; int8 inputs are quantized and int8 outputs dequantized."""
    interpreter = _interpreter(path, threads)
    source = interpreter.get_input_details()[0]
    outputs = interpreter.get_output_details()

    def quantize(image: np.ndarray) -> np.ndarray:
        if source["dtype"] != np.int8:
            return np.ascontiguousarray(image, dtype=np.float32)
        scale, zero_point = source["quantization"]
        return np.clip(np.round(image / scale + zero_point), -128, 127).astype(np.int8)

    def dequantize(value: np.ndarray, detail: dict) -> np.ndarray:
        if detail["dtype"] != np.int8:
            return value.copy()
        scale, zero_point = detail["quantization"]
        return (value.astype(np.float32) - zero_point) * scale

    def run_one(image: np.ndarray) -> list:
        interpreter.set_tensor(source["index"], quantize(image))
        interpreter.invoke()
        return [dequantize(interpreter.get_tensor(o["index"]), o) for o in outputs]

    return per_image(run_one)


def _child(command: str, **arguments) -> None:
    """Run `command` in the separate LiteRT environment; its errors come back as one line. The child imports this
    very copy of the package (first on its path), whichever one its environment has installed: the model folder
    may be of a family that copy lacks."""
    package_root = str(Path(__file__).resolve().parents[2])
    path = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
    completed = subprocess.run([separate_python(), "-m", "mobilevit.export.litert", command, json.dumps(arguments)],
                               capture_output=True, text=True, env={**os.environ, "PYTHONPATH": path})
    if completed.returncode != 0:
        last = (completed.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise ExportError(f"LiteRT child process ({separate_python()}) failed: {last}")


def _main(command: str, arguments: dict) -> None:
    """The child's side: `convert` a saved model folder, or `run` an artefact on saved inputs."""
    if command == "convert":
        from .. import auto
        from .common import MainOutputs

        model = auto.load_model(arguments["model_dir"]).eval()
        example = torch.rand(1, model.config.num_channels, *arguments["size"], generator=torch.Generator().manual_seed(0))
        folder = Path(arguments["folder"])
        calibration = torch.from_numpy(np.load(folder / "calibration.npy")) if (folder / "calibration.npy").exists() else None
        io = convert(MainOutputs(model).eval(), example, Path(arguments["output"]), calibration)
        (folder / "io.json").write_text(json.dumps(io))
    else:
        folder = Path(arguments["folder"])
        outputs = interpreter_runner(Path(arguments["artefact"]), arguments.get("threads"))(np.load(folder / "inputs.npy"))
        for i, output in enumerate(outputs):
            np.save(folder / f"output{i}.npy", output)


FORMAT = LiteRTFormat()

if __name__ == "__main__":
    _main(sys.argv[1], json.loads(sys.argv[2]))

__all__ = ["FORMAT", "LiteRTFormat", "convert", "interpreter_runner", "PYTHON_VARIABLE"]
