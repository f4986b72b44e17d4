"""LiteRT (`.tflite`, formerly TensorFlow Lite) by `litert-torch`, run with LiteRT's interpreter.

`litert-torch` 0.10 keeps torch 2.13 but downgrades typing_extensions and pydantic, which breaks the
`[dev]` extra's jupyter-client; so it lives in an environment of its own:

    python -m venv .venv-litert && .venv-litert/bin/pip install torch==2.13.0 && .venv-litert/bin/pip install -e ".[litert]"
    export MOBILEVIT_LITERT_PYTHON=$PWD/.venv-litert/bin/python

`mobilevit export --format litert` then runs the conversion and the interpreter in that Python, as a child
process (`python -m mobilevit.export.litert ...`), and compares the outputs here. Where `litert_torch`
imports in the current environment, everything runs in-process instead.

The graph is `torch.export`ed at the processor's input size (batch 1). fp32 only: litert-torch's PT2E int8
failed on MobileViT (see README, "Deployment").
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
from .common import ExportError, Runner

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
    precisions = ("fp32",)
    runtime = "LiteRT interpreter"

    def require(self, precision: str) -> None:
        if _in_process():
            return
        python = separate_python()
        if python is None:
            raise MissingDependencyError(
                "mobilevit export --format litert needs litert-torch, which is neither installed here nor configured "
                f"as a separate environment; install it in its own venv with pip install \"mobilevit[litert]\" and "
                f"set {PYTHON_VARIABLE} to that venv's python (see README, Deployment)")
        if not Path(python).is_file():
            raise MissingDependencyError(f"{PYTHON_VARIABLE}: expected the path of a Python interpreter, got {python!r} "
                                         "(no such file)")

    def write(self, job: ExportJob, path: Path) -> dict:
        if _in_process():
            convert(job.graph, job.example, path)
        else:
            _child("convert", model_dir=str(job.model_dir), size=list(job.size), output=str(path))
        return {"input_shape": [1, job.graph.config.num_channels, *job.size],
                "environment": "in-process" if _in_process() else f"child process ({separate_python()})"}

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


def convert(graph: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    import litert_torch

    from .. import export_mode

    with torch.no_grad(), export_mode.exporting(graph, fixed_size=True):
        converted = litert_torch.convert(graph.eval(), (example,))
    converted.export(str(path))


def interpreter_runner(path: Path, threads: int | None = None) -> Runner:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=threads or 2)
    interpreter.allocate_tensors()
    input_index = interpreter.get_input_details()[0]["index"]
    outputs = interpreter.get_output_details()

    def run(pixel_values: np.ndarray) -> list:
        results = []
        for image in pixel_values:  # the graph takes one image
            interpreter.set_tensor(input_index, np.ascontiguousarray(image[None], dtype=np.float32))
            interpreter.invoke()
            results.append([interpreter.get_tensor(o["index"]).copy() for o in outputs])
        return [np.concatenate([r[i] for r in results]) for i in range(len(outputs))]

    return run


def _child(command: str, **arguments) -> None:
    """Run `command` in the separate LiteRT environment; its errors come back as one line."""
    completed = subprocess.run([separate_python(), "-m", "mobilevit.export.litert", command, json.dumps(arguments)],
                               capture_output=True, text=True)
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
        convert(MainOutputs(model).eval(), example, Path(arguments["output"]))
    else:
        folder = Path(arguments["folder"])
        outputs = interpreter_runner(Path(arguments["artefact"]), arguments.get("threads"))(np.load(folder / "inputs.npy"))
        for i, output in enumerate(outputs):
            np.save(folder / f"output{i}.npy", output)


FORMAT = LiteRTFormat()

if __name__ == "__main__":
    _main(sys.argv[1], json.loads(sys.argv[2]))

__all__ = ["FORMAT", "LiteRTFormat", "convert", "interpreter_runner", "PYTHON_VARIABLE"]
