"""What a format module provides (`Format`) and what it is given (`ExportJob`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .. import export_mode
from ..errors import require
from .common import MAX_BATCH, MAX_SIDE, MainOutputs, Runner


@dataclass
class ExportJob:
    """One export: the graph to write, at which size and precision, with which calibration images."""

    graph: MainOutputs  # the model with tensors in and out
    processor: object
    size: tuple[int, int]  # the example's (height, width); fixed-size formats take only this
    precision: str  # "fp32", "fp16", "bf16" or "int8"
    calibration: list[torch.Tensor] | None  # preprocessed batches (int8 with activation quantization)
    threads: int | None = None
    model_dir: Path | None = None  # the saved folder the graph was loaded from (for a child process)
    dynamic_size: bool = False  # asked for a graph of every height and width (formats that have one: ONNX, OpenVINO)

    def example(self, batch: int = 1) -> torch.Tensor:
        generator = torch.Generator().manual_seed(0)
        return torch.rand(batch, self.graph.config.num_channels, *self.size, generator=generator)


class Format:
    """One deployment format. Subclasses set the class attributes and implement `write` and `runner`."""

    name: str  # the --format value
    title: str  # how messages name it
    suffix: str  # what --output must end with
    extra: str  # the pip extra that installs it
    modules: tuple[str, ...]  # the imports that prove the extra is installed
    precision_modules: dict = {}  # precision -> further imports it needs
    precisions: tuple[str, ...]  # --quantize values, "fp32" (none) first
    calibrated: tuple[str, ...] = ()  # precisions that quantize activations and need calibration images
    runtime: str  # the runtime the artefact is checked in ("" when none runs here)
    fixed_size: bool = True  # the graph serves the example's size only (unless the job asks for every size)
    dynamic_batch: bool = False  # the graph takes any batch size (else batch 1)
    can_take_every_size: bool = False  # a job may ask for every height and width (`ExportJob.dynamic_size`)
    explicit_layer_norm: bool = False  # see export_mode.ExplicitLayerNorm
    is_folder: bool = False  # the artefact is a folder (.mlpackage)
    companions: tuple[str, ...] = ()  # files written beside the artefact (OpenVINO's .bin)

    def require(self, precision: str) -> None:
        """A one-line `MissingDependencyError` naming the extra when a module of the format is missing."""
        for module in self.modules + tuple(self.precision_modules.get(precision, ())):
            require(module, self.extra, f"mobilevit export --format {self.name} --quantize {precision}")

    def is_fixed_size(self, job: ExportJob) -> bool:
        return self.fixed_size and not (job.dynamic_size and self.can_take_every_size)

    def accepted_shapes(self, job: ExportJob) -> dict:
        """Every input shape the artefact takes: an int (that size only) or [min, max] per axis."""
        batch = [1, MAX_BATCH] if self.dynamic_batch or not self.is_fixed_size(job) else 1
        if self.is_fixed_size(job):
            height, width = job.size
        else:
            height = width = [job.graph.min_input_size, MAX_SIDE]
        return {"batch": batch, "channels": job.graph.config.num_channels, "height": height, "width": width}

    def input_shape(self, job: ExportJob) -> list:
        """The input's shape as the sidecar states it: a number where one size is taken, else the axis' name."""
        accepted = self.accepted_shapes(job)
        return [value if isinstance(value, int) else axis for axis, value in accepted.items()]

    def trace(self, job: ExportJob):
        """`torch.export` of the job's graph at its example size (any batch size when the format takes one),
        with the export forms of `export_mode`."""
        example = job.example(2 if self.dynamic_batch else 1)  # a batch of 1 would be specialised
        dynamic = ({0: torch.export.Dim("batch", min=1, max=MAX_BATCH)},) if self.dynamic_batch else None
        with torch.no_grad(), export_mode.exporting(job.graph, self.fixed_size, self.explicit_layer_norm):
            return torch.export.export(job.graph, (example,), dynamic_shapes=dynamic, strict=False)

    def write(self, job: ExportJob, path: Path) -> dict:
        """Write the artefact to `path`; returns facts for the sidecar (delegation, quantization, ...)."""
        raise NotImplementedError

    def runner(self, path: Path, job: ExportJob) -> Runner | None:
        """A callable NCHW float32 array -> list of output arrays that runs the written artefact, or None
        where this machine has no runtime for it."""
        return self.load(path, job.precision, job.threads)

    def load(self, path: Path, precision: str, threads: int | None) -> Runner:
        """The artefact in its runtime in this process (`runner` without the model)."""
        raise NotImplementedError

    def verify_without_runtime(self, path: Path, job: ExportJob) -> dict:
        """Checks of an artefact that cannot run here (Core ML off macOS)."""
        raise NotImplementedError

    def companion_paths(self, output: Path) -> list[Path]:
        return [output.with_suffix(suffix) for suffix in self.companions]


__all__ = ["ExportJob", "Format"]
