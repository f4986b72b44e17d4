"""`mobilevit benchmark`: this package against stock transformers, ONNX Runtime and a ResNet-50, on one machine.

    mobilevit benchmark [--variants xx-small x-small small mobilevitv2-1.0] [--batch-sizes 1 32] [--threads 2]
                        [--task image-classification] [--image-size 256] [--repeats 20] [--output DIR]

Every MobileViT candidate runs the same weights (`fill_realistic_weights_`: activations at a trained
network's scale, no denormals): this package's model (its default eval path), stock transformers' model
loaded with that state dict, and ONNX Runtime on the graph `mobilevit export` writes for it. ResNet-50
(transformers' `ResNetForImageClassification`, the same realistic random weights) is the classic
reference point. Detectors (`--task object-detection`, 320x320 by default) have no stock transformers class: they
are timed against their own plain path (`mobilevit-plain`, the fast path switched off), ONNX Runtime and any
exported artefact, and the last column is the speed-up over the plain path. Candidates are timed interleaved in one process (A, B, C, A, B, C, ...) after a warm-up,
so that drifting machine load hits them alike; each timed call directly follows an untimed one of the same
candidate (see `time_interleaved`'s `lead_in`), so no candidate is timed while another one's threads are
still busy. The table gives median latency with its 10-90 % spread, throughput, and the speed-up over
stock transformers (median of per-round ratios). FLOPs are counted with
`torch.utils.flop_counter.FlopCounterMode` (2 x multiply-adds) on one image.

Memory allocation decides much of the result, so it is a stated condition (`--allocator`):

- `tuned` (the default): glibc malloc told (mallopt) to keep freed memory for reuse, as jemalloc or
  GLIBC_TUNABLES would on a server. No candidate page-faults: stock transformers at its best, the
  conservative comparison.
- `default`: glibc malloc as the process has it. glibc hands large freed blocks back to the system and
  page-faults them in again on the next call; stock transformers pays that on most calls (about 20,000 page
  faults per small-variant forward in a fresh process, most of its batch-32 time), this package's fast path
  hardly at all. How much depends on what the process allocated before (glibc adapts its thresholds to the
  largest blocks freed so far), so these numbers move with the order of the runs. ONNX export runs in a
  child process so that its large allocations do not retune the timed process. Since this package's fast
  path raises glibc's threshold on its first call (`fast_inference.settle_allocator`), the stock model
  timed beside it in one process profits from that too.
- `fresh`: what a user of each library gets. Every candidate runs in a process of its own, spawned for the
  benchmark, with glibc malloc as it starts; the parent still interleaves them call by call (only one runs
  at a time) and each process times its own calls, so sending inputs and results costs nothing.

Named in `--candidates` only: `mobilevit-bf16`, this package's model cast with `model.to(torch.bfloat16)`
(inputs too; oneDNN uses the CPU's BF16 instructions where it has them), the exported artefacts of
`mobilevit export` (`EXPORT_CANDIDATES`: ONNX Runtime int8, ExecuTorch, OpenVINO fp32 / bf16 / int8, LiteRT),
and `torch.compile`d models (`COMPILED_CANDIDATES`: this package's and stock transformers', Inductor, one graph
per batch size). A compiled candidate's first call at each batch size compiles; it is not timed, and its
seconds are reported apart (`Result.compile_s`, printed under the table).

`--background-load N` starts N busy processes (one CPU each, `BackgroundLoad`) before timing and stops them
after: latency on a machine that is doing other work, reproducibly.

`--output DIR` also writes results.json, results.md and chart.png there (refusing to replace them
without `--overwrite`).

Every argument, and the output folder, is checked before any model is built or timed (`check_settings`, one
line per mistake). ONNX Runtime needs the `export` extra (`pip install "mobilevit[export]"`): by default it is
timed when installed and left out (with a note) when not; asked for explicitly without the extra, it is a
one-line error naming the extra.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import UserError, require, require_cpp_compiler
from .file_utils import check_output_dir, check_output_files, claim_output, json_text, staged_outputs
from .tasks import CLASSIFICATION, OBJECT_DETECTION, SEGMENTATION, canonical_task

# torch, transformers and the registry are imported where they are used: `mobilevit benchmark --help` and its
# usage errors answer without them

CANDIDATES = ("mobilevit", "mobilevit-plain", "transformers", "onnxruntime", "resnet-50")
# this package's model cast to a lower precision (`model.to(dtype)`, inputs too), timed when named in --candidates
REDUCED_PRECISION = {"mobilevit-bf16": "bfloat16"}  # candidate -> torch dtype name
LABELS = {
    "mobilevit": "mobilevit (this package)",
    "mobilevit-plain": "mobilevit plain path (this package, fast path off)",
    "mobilevit-bf16": "mobilevit bfloat16 (this package)",
    "transformers": "transformers (stock)",
    "onnxruntime": "onnxruntime (exported)",
    "resnet-50": "ResNet-50 (transformers)",
}
# Deployment artefacts (`mobilevit export`), timed in their runtimes beside the candidates above when named in
# --candidates (never by default: each needs its extra). candidate -> (export format, precision); int8
# calibrates on the photos shipped with scikit-learn and scikit-image. Fixed-size formats take batch 1 only.
EXPORT_CANDIDATES = {
    "onnxruntime-int8": ("onnx", "int8"),
    "executorch": ("executorch", "fp32"),
    "executorch-int8": ("executorch", "int8"),
    "openvino": ("openvino", "fp32"),
    "openvino-bf16": ("openvino", "bf16"),  # OpenVINO's own default on a CPU with bfloat16 instructions
    "openvino-int8": ("openvino", "int8"),
    "litert": ("litert", "fp32"),
}
LABELS.update({name: f"{fmt} {precision} (exported)" for name, (fmt, precision) in EXPORT_CANDIDATES.items()})
# torch.compile(model, fullgraph=True, dynamic=False) with Inductor, timed when named in --candidates: candidate ->
# the eager candidate whose model it compiles (this package's compiles its plain path: docs/compile.md)
COMPILED_CANDIDATES = {"mobilevit-compiled": "mobilevit", "transformers-compiled": "transformers"}
COMPILE_BACKEND = "inductor"  # what users get (the tests' smoke run uses Dynamo's "eager")
LABELS.update({"mobilevit-compiled": "mobilevit torch.compile (this package)",
               "transformers-compiled": "transformers torch.compile (stock)"})
LABELS["openvino-bf16"] = "openvino bf16 (exported; OpenVINO's default on a BF16 CPU)"
ALL_CANDIDATES = CANDIDATES + tuple(REDUCED_PRECISION) + tuple(EXPORT_CANDIDATES) + tuple(COMPILED_CANDIDATES)
REFERENCE = "transformers"
# what the speed-up column compares with, per task where it is not stock transformers (which has no detector)
TASK_REFERENCE = {OBJECT_DETECTION: "mobilevit-plain"}
NEEDS_STOCK_CLASS = ("transformers", "transformers-compiled")  # candidates only tasks with a stock class have
DEFAULT_IMAGE_SIZE = {CLASSIFICATION: 256, SEGMENTATION: 512, OBJECT_DETECTION: 320}
IN_PROCESS_ALLOCATORS = ("tuned", "default")  # the conditions a single-process benchmark can have
ALLOCATORS = (*IN_PROCESS_ALLOCATORS, "fresh")
OUTPUT_FILES = ("results.json", "results.md", "chart.png")
# What the ONNX Runtime candidate needs (the `export` extra): exporting the graph, and running it.
ONNX_MODULES = ("onnxruntime", "onnx", "onnxscript")


class BenchmarkError(UserError):
    """A benchmark argument that cannot be used; the message names it, what was expected and what came."""


@dataclass
class Result:
    candidate: str
    variant: str
    task: str
    image_size: int
    batch_size: int
    params_m: float
    gflops: float  # per image
    median_ms: float
    p10_ms: float
    p90_ms: float
    images_per_s: float
    speedup: float | None  # over stock transformers, median of per-round ratios
    allocator: str = "tuned"  # see the module docstring
    background_load: int = 0  # busy processes running beside the timing (--background-load)
    compile_s: float | None = None  # compiled candidates: seconds of the first call at this batch size (not timed)


# --------------------------------------------------------------------------------------------------------
# Models and what to time
# --------------------------------------------------------------------------------------------------------
# classes of the released checkpoints of each task (ImageNet-1k, PASCAL VOC)
NUM_LABELS = {CLASSIFICATION: 1000, SEGMENTATION: 21, OBJECT_DETECTION: 81}


def build_mobilevit(variant: str, task: str, seed: int = 0) -> nn.Module:
    """A released size of any registered family for `task`, with realistic random weights, in eval mode."""
    from . import auto
    from .testing_utils import fill_realistic_weights_

    task = canonical_task(task, allowed=tuple(NUM_LABELS))
    config = auto.new_config(variant, task, num_labels=NUM_LABELS[task])
    return fill_realistic_weights_(auto.new_model(config, task), seed).eval()


def build_stock(model: nn.Module) -> nn.Module:
    """Stock transformers' class of the same family and head (same class name), holding `model`'s weights."""
    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    stock_cls = getattr(transformers, type(model).__name__)
    stock = stock_cls(CONFIG_MAPPING[model.config.model_type](**model.config.to_dict()))
    stock.load_state_dict(model.state_dict(), strict=True)
    return stock.eval()


def build_resnet50(seed: int = 0) -> nn.Module:
    from transformers import ResNetConfig, ResNetForImageClassification

    from .testing_utils import fill_realistic_weights_

    config = ResNetConfig(depths=[3, 4, 6, 3], hidden_sizes=[256, 512, 1024, 2048], layer_type="bottleneck", num_labels=1000)
    return fill_realistic_weights_(ResNetForImageClassification(config), seed).eval()


def export_in_child(model: nn.Module, image_size: int, workdir: Path) -> Path:
    """`mobilevit.export` of `model` into `workdir`, run in a child process (see `--allocator`)."""
    path = workdir / f"{model.config.variant}-{type(model).__name__}.onnx"
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as child:
        child.submit(_export_for_benchmark, model, path, image_size).result()
    return path


def _export_for_benchmark(model: nn.Module, path: Path, image_size: int) -> None:
    from .export import export_onnx

    export_onnx(model, path, overwrite=True, image_size=image_size)


def export_artefact_in_child(model: nn.Module, candidate: str, image_size: int, workdir: Path) -> Path:
    """The artefact of an export candidate (`EXPORT_CANDIDATES`), exported and checked in a child process."""
    from .export import FORMATS

    fmt, precision = EXPORT_CANDIDATES[candidate]
    path = workdir / f"{model.config.variant}-{type(model).__name__}-{candidate}{FORMATS[fmt].suffix}"
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as child:
        child.submit(_export_artefact, model, path, fmt, precision, image_size).result()
    return path


def _export_artefact(model: nn.Module, path: Path, fmt: str, precision: str, image_size: int) -> None:
    from .export import export_model

    export_model(model, fmt, path, precision, image_size=image_size, overwrite=True)


def tune_allocator() -> None:
    """Have glibc malloc keep freed memory for reuse (no trimming, no per-block mmap): the `tuned` condition
    (`fast_training.keep_freed_memory`, which `mobilevit train` applies to itself)."""
    from .fast_training import keep_freed_memory  # imports torch: not at the top (see the imports)

    if not keep_freed_memory():
        raise RuntimeError("allocator: 'tuned' needs glibc's mallopt, which this system's C library lacks or refused")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, image_size: int) -> int:
    """FLOPs (2 x multiply-adds) of one image, counted on the plain path (the fast path does the same math).
    Attention runs on SDPA's math backend here: the counter has no formula for the fused CPU kernel."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    switch = getattr(model, "set_fast_inference", None)
    if switch:
        switch(False)
    try:
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad(), sdpa_kernel([SDPBackend.MATH]):
            model(torch.rand(1, 3, image_size, image_size))
    finally:
        if switch:
            switch(True)
    return counter.get_total_flops()


def torch_runner(model: nn.Module):
    import torch

    def forward(pixel_values):
        with torch.inference_mode():
            return model(pixel_values)

    return forward


class CompiledRunner:
    """`torch.compile(model, fullgraph=True, dynamic=False)` under inference mode: an Inductor graph per batch
    size, compiled by the first call at that size, whose seconds `compile_s` keeps (by batch size). `options`:
    Inductor's (torch.compile's `options`, e.g. {"freezing": True}); `fullgraph=False` lets Dynamo break graphs."""

    def __init__(self, model: nn.Module, options: dict | None = None, fullgraph: bool = True):
        import torch

        # isolated: compiled models of one class would otherwise share one limit of 8 graphs, after which Dynamo
        # runs them uncompiled (silently without fullgraph)
        compiled = torch.compile(model, fullgraph=fullgraph, dynamic=False, backend=COMPILE_BACKEND, options=options,
                                 isolate_recompiles=True)
        self._forward = torch_runner(compiled)
        self.compile_s = {}

    def __call__(self, pixel_values):
        batch = pixel_values.shape[0]
        if batch in self.compile_s:
            return self._forward(pixel_values)
        start = time.perf_counter()
        returned = self._forward(pixel_values)
        self.compile_s[batch] = time.perf_counter() - start
        return returned


def ort_runner(session):
    def forward(pixel_values):
        return session.run(None, {"pixel_values": pixel_values.numpy()})

    return forward


# --------------------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------------------
def time_interleaved(
    runners: dict, make_input, repeats: int, warmup: int, progress: bool = True, self_timed: bool = False,
    lead_in: bool = False,
) -> dict[str, list[float]]:
    """Seconds per call of each runner, measured round by round (order reversed every other round).
    `self_timed`: the runners return the seconds they measured themselves (FreshProcessRunner).
    `lead_in`: an untimed call of the same runner right before each timed one. After a call, PyTorch's OpenMP
    workers spin on for milliseconds, and the next candidate, in this process or another, shares a core with
    them: OpenMP splits work statically, so a PyTorch candidate waits for its slowed half (fresh processes,
    xx-small batch 1: 18.1 ms after stock's call against 11.3 ms after its own; ONNX Runtime, whose threads
    are not OpenMP's, 11.9 against 10.6). The lead-in call absorbs that and leaves the timed one in the
    candidate's steady state, as in a loop of its own."""
    from tqdm.auto import tqdm

    for name, runner in runners.items():
        for _ in range(warmup):
            runner(make_input(name))
    times = {name: [] for name in runners}
    names = list(runners)
    for round_index in tqdm(range(repeats), desc="timing " + ", ".join(names), disable=not progress, leave=False):
        for name in names if round_index % 2 == 0 else reversed(names):
            pixel_values = make_input(name)
            if lead_in:
                runners[name](pixel_values)
            start = time.perf_counter()
            returned = runners[name](pixel_values)
            times[name].append(returned if self_timed else time.perf_counter() - start)
    return times


class FreshProcessRunner:
    """A candidate in a process of its own (the `fresh` condition): `runner(batch)` has it run one call on
    its own input of that batch size and returns the seconds it measured."""

    def __init__(self, candidate: str, variant: str, task: str, image_size: int, threads: int, onnx_path=None):
        self._image_size = image_size
        self._process = ProcessPoolExecutor(
            max_workers=1, mp_context=multiprocessing.get_context("spawn"),
            initializer=_fresh_process_start, initargs=(candidate, variant, task, threads, onnx_path),
        )

    def __call__(self, batch: int) -> float:
        return self._process.submit(_fresh_process_call, batch, self._image_size).result()

    @property
    def compile_s(self) -> dict:
        """A compiled candidate's compile seconds by batch size (`CompiledRunner`), measured in its process."""
        return self._process.submit(_fresh_process_compile_s).result()

    def close(self) -> None:
        self._process.shutdown()


_FRESH_PROCESS = {}  # in a FreshProcessRunner's process: its runner and its inputs


def _fresh_process_start(candidate, variant, task, threads, onnx_path) -> None:
    import torch

    torch.set_num_threads(threads)
    if candidate == "onnxruntime" or candidate in EXPORT_CANDIDATES:
        model = None  # the parent exported the graph
    else:
        model = build_resnet50() if candidate == "resnet-50" else build_mobilevit(variant, task)
    _FRESH_PROCESS["runner"] = local_runner(candidate, model, threads, onnx_path)


def _fresh_process_call(batch: int, image_size: int) -> float:
    inputs = _FRESH_PROCESS.setdefault("inputs", {})
    if batch not in inputs:
        inputs[batch] = benchmark_input(batch, image_size)
    start = time.perf_counter()
    _FRESH_PROCESS["runner"](inputs[batch])
    return time.perf_counter() - start


def _fresh_process_compile_s() -> dict:
    return dict(getattr(_FRESH_PROCESS["runner"], "compile_s", {}))


# A busy loop for --background-load: pure arithmetic (one CPU, next to no memory traffic) that stops when told
# (SIGTERM), when the benchmark that started it is gone, or after its time limit, whatever happens.
_BUSY_LOOP = """
import os, sys, time
parent, deadline = int(sys.argv[1]), time.monotonic() + float(sys.argv[2])
x = 0.0
while time.monotonic() < deadline and os.getppid() == parent:
    for _ in range(200_000):
        x = x * 0.999999 + 1.0
"""
BACKGROUND_LOAD_LIMIT_S = 3 * 3600


class BackgroundLoad:
    """`count` processes that keep one CPU busy each while the benchmark times: the contention of a shared
    server or a laptop doing other work, made reproducible. A context manager: started on entry, stopped on
    exit (also on an error or Ctrl-C); each one also stops by itself if this process dies."""

    def __init__(self, count: int):
        self.count, self._processes = count, []

    def __enter__(self):
        import subprocess

        for _ in range(self.count):
            self._processes.append(subprocess.Popen(
                [sys.executable, "-c", _BUSY_LOOP, str(os.getpid()), str(BACKGROUND_LOAD_LIMIT_S)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            ))
        return self

    def __exit__(self, *exc_info):
        for process in self._processes:
            process.terminate()
        for process in self._processes:
            process.wait()
        self._processes = []


def benchmark_input(batch: int, image_size: int) -> torch.Tensor:
    import torch

    return torch.rand(batch, 3, image_size, image_size, generator=torch.Generator().manual_seed(batch))


def summarise(times: dict[str, list[float]], reference: str | None) -> dict[str, dict]:
    """Median and 10-90 % spread in ms, and the median per-round speed-up over `reference`."""
    summary = {}
    for name, samples in times.items():
        ms = sorted(1000 * t for t in samples)
        speedup = None
        if reference in times:
            speedup = statistics.median(r / t for r, t in zip(times[reference], samples))
        summary[name] = {
            "median_ms": statistics.median(ms),
            "p10_ms": ms[int(0.1 * (len(ms) - 1))],
            "p90_ms": ms[int(round(0.9 * (len(ms) - 1)))],
            "speedup": speedup,
        }
    return summary


def __getattr__(name: str):
    """`DEFAULT_VARIANTS`, MobileViT v1's released sizes, read from the registry when first asked for."""
    if name == "DEFAULT_VARIANTS":
        from . import auto

        return auto.family("mobilevit").variants
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def onnx_installed() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in ONNX_MODULES)


def default_candidates(task: str = CLASSIFICATION) -> tuple[str, ...]:
    """Every candidate whose dependencies this install has (ONNX Runtime only with the `export` extra) and that
    the task has: the plain path only where stock transformers has no class (detection), ResNet-50 only for
    classification."""
    candidates = [c for c in CANDIDATES if c != "onnxruntime" or onnx_installed()]
    if task in TASK_REFERENCE:
        return tuple(c for c in candidates if c not in NEEDS_STOCK_CLASS and c != "resnet-50")
    return tuple(c for c in candidates if c != "mobilevit-plain")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_settings(*, variants, batch_sizes, threads, task, image_size, repeats, warmup, candidates,
                   allocator, background_load=0) -> dict:
    """The one check of the benchmark's arguments, before any model is built; returns them spelled canonically
    (task, variant names, image size filled in, candidates resolved)."""
    from . import auto, limits

    try:
        task = canonical_task(task, allowed=tuple(NUM_LABELS))
        variants = [auto.resolve_variant(v)[1] for v in variants]
    except ValueError as err:
        raise BenchmarkError(str(err), usage=True) from None
    if not variants:
        raise BenchmarkError("variants: expected at least one released size, got none", usage=True)
    candidates = default_candidates(task) if candidates is None else tuple(candidates)
    unknown = sorted(set(candidates) - set(ALL_CANDIDATES))
    if unknown or not candidates:
        raise BenchmarkError(f"candidates: expected names from {list(ALL_CANDIDATES)}, got {unknown or 'none'}",
                             usage=True)
    if task in TASK_REFERENCE and set(candidates) & {*NEEDS_STOCK_CLASS, "resnet-50"}:
        raise BenchmarkError(f"candidates: stock transformers has no {task} model to time (no "
                             f"{', '.join(repr(c) for c in NEEDS_STOCK_CLASS)} or 'resnet-50' for it); got "
                             f"{list(candidates)}", usage=True)
    if not batch_sizes or any(not _is_int(b) or b < 1 for b in batch_sizes):
        raise BenchmarkError(f"batch_sizes: expected positive integers, got {list(batch_sizes)}", usage=True)
    limits.check_threads("threads", threads, BenchmarkError)
    limits.check_int("repeats", repeats, 1, limits.MAX_REPEATS, "timed rounds; more say nothing new", BenchmarkError)
    limits.check_int("warmup", warmup, 0, limits.MAX_WARMUP, "untimed calls; more say nothing new", BenchmarkError)
    limits.check_processes("background_load", background_load, BenchmarkError)
    if allocator not in ALLOCATORS:
        raise BenchmarkError(f"allocator: expected one of {list(ALLOCATORS)}, got {allocator!r}", usage=True)
    image_size = image_size if image_size is not None else DEFAULT_IMAGE_SIZE[task]
    limits.check_image_side("image_size", image_size, BenchmarkError)
    for variant in variants:  # the largest batch of each variant, as every candidate runs it, must fit in memory
        config = auto.new_config(variant, task, num_labels=NUM_LABELS[task])
        per_image = auto.memory_per_image(config, task, image_size, image_size, training=False)
        limits.check_fits_in_memory("batch_sizes", max(batch_sizes), per_image, f"{variant} at {image_size}x"
                                    f"{image_size} takes about", BenchmarkError)
    if "onnxruntime" in candidates:
        for module in ONNX_MODULES:
            require(module, "export", "the onnxruntime candidate (exporting and running the ONNX graph)")
    if COMPILE_BACKEND == "inductor" and any(name in COMPILED_CANDIDATES for name in candidates):
        require_cpp_compiler("the compiled candidates (" + ", ".join(COMPILED_CANDIDATES) + ")")
    exported = [name for name in candidates if name in EXPORT_CANDIDATES]
    if exported:
        from .export import FORMATS

        for name in exported:  # each format's extra, named in a one-line error when it is missing
            fmt, precision = EXPORT_CANDIDATES[name]
            FORMATS[fmt].require(precision)
    return dict(variants=variants, batch_sizes=list(batch_sizes), threads=threads, task=task, image_size=image_size,
                repeats=repeats, warmup=warmup, candidates=candidates, allocator=allocator,
                background_load=background_load)


def check_output(output: Path, overwrite: bool) -> None:
    """--output: a folder (or a new one) this user can write, without our files in it unless `overwrite`."""
    check_output_dir(output, "--output", replaces=False, error=BenchmarkError)
    existing = [name for name in OUTPUT_FILES if (output / name).exists()]
    if existing and not overwrite:
        raise BenchmarkError(f"--output: {str(output)!r} already holds {', '.join(existing)} (pass --overwrite to "
                             "replace them)")
    check_output_files([output / name for name in OUTPUT_FILES], "--output", overwrite=True, error=BenchmarkError)


def benchmark(
    variants=None,
    batch_sizes=(1, 32),
    threads: int = 2,
    task: str = "image-classification",
    image_size: int | None = None,
    repeats: int = 20,
    warmup: int = 3,
    candidates=None,
    progress: bool = True,
    allocator: str = "tuned",
    background_load: int = 0,
) -> list[Result]:
    """Time `candidates` on every variant and batch size; returns one Result per (candidate, variant, batch).
    `candidates=None`: every candidate whose dependencies are installed (`default_candidates`).
    `allocator="tuned"` changes this process's malloc settings for good (there is no way back).
    `background_load`: that many busy processes run while the candidates are timed (`BackgroundLoad`)."""
    import torch

    variants = variants if variants is not None else __getattr__("DEFAULT_VARIANTS")
    settings = check_settings(variants=variants, batch_sizes=batch_sizes, threads=threads, task=task,
                              image_size=image_size, repeats=repeats, warmup=warmup, candidates=candidates,
                              allocator=allocator, background_load=background_load)
    variants, task, image_size, candidates = (settings[k] for k in ("variants", "task", "image_size", "candidates"))
    torch.set_num_threads(threads)
    if allocator == "tuned":
        tune_allocator()

    results = []
    with tempfile.TemporaryDirectory(prefix="mobilevit-bench-") as workdir:
        groups = [(variant, build_mobilevit(variant, task)) for variant in variants]
        if "resnet-50" in candidates and task == CLASSIFICATION:
            groups.append(("resnet-50", build_resnet50()))
        fresh = allocator == "fresh"
        for variant, model in groups:
            names = ["resnet-50"] if variant == "resnet-50" else [c for c in ALL_CANDIDATES if c in candidates and c != "resnet-50"]
            if not names:
                continue
            runners = {name: build_runner(name, model, variant, task, image_size, threads, Path(workdir), fresh) for name in names}
            params = count_parameters(model) / 1e6
            gflops = count_flops(model, image_size) / 1e9
            try:
                for batch in batch_sizes:
                    with BackgroundLoad(background_load):
                        if fresh:  # each process makes the same input itself
                            times = time_interleaved(
                                runners, lambda name: batch, repeats, warmup, progress, self_timed=True, lead_in=True
                            )
                        else:
                            pixel_values = benchmark_input(batch, image_size)
                            times = time_interleaved(
                                runners, lambda name: pixel_values, repeats, warmup, progress, lead_in=True
                            )
                    for name, s in summarise(times, reference_of(task)).items():
                        compile_s = runners[name].compile_s.get(batch) if name in COMPILED_CANDIDATES else None
                        results.append(
                            Result(
                                candidate=name, variant=variant, task=task, image_size=image_size, batch_size=batch,
                                params_m=params, gflops=gflops, median_ms=s["median_ms"], p10_ms=s["p10_ms"],
                                p90_ms=s["p90_ms"], images_per_s=1000 * batch / s["median_ms"], speedup=s["speedup"],
                                allocator=allocator, background_load=background_load, compile_s=compile_s,
                            )
                        )
                    if progress:
                        print(format_table([r for r in results if r.variant == variant and r.batch_size == batch], header=False))
            finally:  # fresh processes end with their variant, also when timing fails
                for runner in runners.values():
                    if isinstance(runner, FreshProcessRunner):
                        runner.close()
    return results


def build_runner(name: str, model: nn.Module, variant: str, task: str, image_size: int, threads: int, workdir: Path, fresh: bool):
    """A callable that runs candidate `name` on `model`'s weights (built from `variant`, `task`): here, or in
    a fresh process of its own that builds the same weights. ONNX Runtime's graph is exported here, in a
    child process (see `--allocator`)."""
    onnx_path = export_in_child(model, image_size, workdir) if name == "onnxruntime" else None
    if name in EXPORT_CANDIDATES:  # the artefact's path travels where the ONNX graph's does
        onnx_path = export_artefact_in_child(model, name, image_size, workdir)
    if fresh:
        return FreshProcessRunner(name, variant, task, image_size, threads, onnx_path)
    return local_runner(name, model, threads, onnx_path)


def local_runner(name: str, model: nn.Module | None, threads: int, onnx_path: Path | None = None):
    """Candidate `name` in this process: `model` itself (this package, the ResNet-50), stock transformers
    holding its weights, or ONNX Runtime (non-spinning threads) on the graph at `onnx_path`."""
    if name == "onnxruntime":
        from .export import ort_session

        return ort_runner(ort_session(onnx_path, threads=threads))
    if name in EXPORT_CANDIDATES:
        from .export import artefact_runner

        fmt, precision = EXPORT_CANDIDATES[name]
        run = artefact_runner(fmt, onnx_path, precision, threads)
        return lambda pixel_values: run(pixel_values.numpy())
    if name in COMPILED_CANDIDATES:
        return CompiledRunner(build_stock(model) if COMPILED_CANDIDATES[name] == "transformers" else model)
    if name == "transformers":
        return torch_runner(build_stock(model))
    if name == "mobilevit-plain":
        plain = copy.deepcopy(model).set_fast_inference(False)
        return torch_runner(plain)
    if name in REDUCED_PRECISION:
        import torch

        dtype = getattr(torch, REDUCED_PRECISION[name])
        run = torch_runner(copy.deepcopy(model).to(dtype))
        return lambda pixel_values: run(pixel_values.to(dtype))
    return torch_runner(model)


# --------------------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------------------
def machine_load() -> str:
    """Other processes' load skews every timing; say how busy the machine was."""
    one, five, _ = os.getloadavg()
    return f"{os.cpu_count()} CPUs, load average {one:.1f} (1 min) / {five:.1f} (5 min)"


TABLE_HEADER = (
    "| model | variant | params (M) | GFLOPs | batch | latency ms (median, p10-p90) | images/s | vs {reference} |\n"
    "|---|---|---:|---:|---:|---:|---:|---:|"
)


def reference_of(task: str) -> str:
    """The candidate the speed-up column divides by: stock transformers, or the plain path where stock has none."""
    return TASK_REFERENCE.get(task, REFERENCE)


def format_table(results: list[Result], header: bool = True) -> str:
    reference = reference_of(results[0].task) if results else REFERENCE
    shown = "transformers" if reference == REFERENCE else "plain path"
    lines = [TABLE_HEADER.format(reference=shown)] if header else []
    for r in results:
        speedup = f"{r.speedup:.2f}x" if r.speedup is not None else ""
        lines.append(
            f"| {LABELS[r.candidate]} | {r.variant} | {r.params_m:.2f} | {r.gflops:.2f} | {r.batch_size} | "
            f"{r.median_ms:.1f} ({r.p10_ms:.1f}-{r.p90_ms:.1f}) | {r.images_per_s:.1f} | {speedup} |"
        )
    return "\n".join(lines)


def format_compile_times(results: list[Result]) -> str:
    """A line per compiled candidate and batch size: the seconds its first call took (compiling), not timed."""
    return "\n".join(f"compile time of {LABELS[r.candidate]}, {r.variant}, batch {r.batch_size}: {r.compile_s:.1f} s "
                     "(its first call; not in the timings)" for r in results if r.compile_s is not None)


def save_chart(results: list[Result], path: Path) -> None:
    """Latency at the smallest batch and throughput at the largest, per candidate and variant."""
    import matplotlib
    import torch

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batches = sorted({r.batch_size for r in results})
    panels = [(batches[0], "median_ms", f"latency at batch {batches[0]} (ms, lower is better)")]
    if len(batches) > 1:
        panels.append((batches[-1], "images_per_s", f"throughput at batch {batches[-1]} (images/s, higher is better)"))
    variants = list(dict.fromkeys(r.variant for r in results))
    candidates = list(dict.fromkeys(r.candidate for r in results))
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.2), squeeze=False)
    width = 0.8 / max(1, len(candidates))
    for ax, (batch, field, title) in zip(axes[0], panels):
        for i, candidate in enumerate(candidates):
            values = {r.variant: getattr(r, field) for r in results if r.candidate == candidate and r.batch_size == batch}
            xs = [j + i * width for j, v in enumerate(variants) if v in values]
            bars = ax.bar(xs, [values[v] for v in variants if v in values], width, label=LABELS[candidate])
            ax.bar_label(bars, fmt="%.1f", fontsize=7)
        ax.set_xticks([j + width * (len(candidates) - 1) / 2 for j in range(len(variants))], variants)
        ax.set_title(title, fontsize=10)
    axes[0][0].legend(fontsize=8)
    r0 = results[0]
    load = f", {r0.background_load} busy background processes" if r0.background_load else ""
    fig.suptitle(f"MobileViT {r0.task}, {r0.image_size}x{r0.image_size}, {torch.get_num_threads()} threads{load}",
                 fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(results: list[Result], output: Path, overwrite: bool) -> list[Path]:
    """results.json / results.md / chart.png in `output`, committed together (`file_utils.staged_outputs`: all
    three appear, or none)."""
    targets = [output / name for name in OUTPUT_FILES]
    existing = [str(t) for t in targets if t.exists()]
    if existing and not overwrite:
        raise BenchmarkError(f"--output: {existing} already exist (pass --overwrite to replace them)")
    writers = {
        "results.json": lambda p: p.write_text(json_text([asdict(r) for r in results])),
        "results.md": lambda p: p.write_text("\n\n".join(filter(None, [format_table(results),
                                                                        format_compile_times(results)])) + "\n"),
        "chart.png": lambda p: save_chart(results, p),
    }
    with staged_outputs(targets, overwrite=overwrite, argument="--output", error=BenchmarkError) as staged:
        for target in targets:
            writers[target.name](staged.path(target))
    return targets


# --------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mode", choices=("inference", "train", "predict"), default="inference",
                        help="inference: the models' forward against stock transformers and the runtimes; train: a "
                             "training step (forward, backward, AdamW) against stock transformers' Trainer-style step "
                             "(mobilevit/benchmark_train.py); predict: `mobilevit predict` end to end on a folder of "
                             "JPEGs against the model alone and stock transformers.pipeline (mobilevit/benchmark_predict.py)")
    parser.add_argument("--variants", nargs="+", default=None,
                        help="released sizes of any family, e.g. small or mobilevitv2-1.0 (default: MobileViT v1's "
                             "three; --mode train: small, mobilevitv2-1.0, xx-small:semantic-segmentation, a :TASK "
                             "suffix overriding --task; --mode predict: xx-small); each is timed against stock "
                             "transformers' class of its family")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=None,
                        help="batch sizes (default: 1 32; --mode train: 16; --mode predict: stock "
                             "transformers.pipeline's, 1 8 16 32 64)")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads for PyTorch and ONNX Runtime")
    parser.add_argument("--task", default=None,
                        help="image-classification (default), semantic-segmentation or object-detection (--mode "
                             "predict with --model or --fixture: the folder's)")
    parser.add_argument("--image-size", type=int, default=None,
                        help="square input side (default 256, 512 for segmentation, 320 for detection)")
    parser.add_argument("--repeats", type=int, default=20, help="timed rounds per batch size")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls per candidate first")
    parser.add_argument("--candidates", nargs="+", default=None, choices=ALL_CANDIDATES + ("transformers-bf16",),
                        help="what to time (default: all of " + ", ".join(CANDIDATES) + " whose dependencies are "
                        "installed and that the task has (mobilevit-plain for detection only); "
                        'onnxruntime needs pip install "mobilevit[export]"); exported artefacts too: '
                        + ", ".join(EXPORT_CANDIDATES) + " (batch 1; each needs its extra); torch.compile'd models: "
                        + ", ".join(COMPILED_CANDIDATES) + " (Inductor; compile time reported apart); "
                        "--mode train: mobilevit, mobilevit-bf16, transformers (default), transformers-bf16")
    parser.add_argument(
        "--allocator", default=None, choices=ALLOCATORS,
        help="glibc malloc tuned to keep freed memory (default; stock at its best), as the process has it, or "
        "fresh: each candidate in its own new process (what a user of each library gets; the default of --mode "
        "train, where this package's training keeps freed memory and stock does not)",
    )
    parser.add_argument("--background-load", type=int, default=0, metavar="N",
                        help="N busy processes (one CPU each) started beside the timing and stopped after it: "
                        "latency under contention (default: 0)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="--mode train: time steps by the wall clock, or by their process's CPU time (on a "
                             "machine other processes keep busy, with --threads 1)")
    predict = parser.add_argument_group("--mode predict")
    predict.add_argument("--images", type=int, default=400, help="JPEGs to generate and predict (default: 400)")
    predict.add_argument("--photo-size", default="1024x768", metavar="WxH", help="their size (default: 1024x768)")
    predict.add_argument("--images-dir", type=Path, default=None, help="predict these JPEGs instead of generated ones")
    predict.add_argument("--runtimes", nargs="+", default=["pytorch"], choices=("pytorch", "onnxruntime", "openvino"),
                         help="predict with each runtime, and time each one's batch-1 forward (default: pytorch)")
    predict.add_argument("--fixture", default=None, metavar="NAME",
                         help="the model: ml-cvnets fixture weights converted (e.g. mobilevit_xxs; ../shared/fixtures)")
    predict.add_argument("--model", type=Path, default=None, metavar="DIR", help="the model: a saved classifier folder")
    parser.add_argument("--output", type=Path, default=None,
                        help="folder for results.json, results.md, chart.png (--mode train: train.json, train.md; "
                             "--mode predict: predict.json, predict.md)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing files in --output")


def run(args: argparse.Namespace) -> int:
    """`mobilevit benchmark`: everything checked before minutes of timing; a BenchmarkError reaches
    `mobilevit.cli`, which prints it as one line."""
    args.variants = args.variants or list(__getattr__("DEFAULT_VARIANTS"))
    args.batch_sizes = args.batch_sizes or [1, 32]
    args.allocator = args.allocator or "tuned"
    settings = check_settings(variants=args.variants, batch_sizes=args.batch_sizes, threads=args.threads,
                              task=args.task or CLASSIFICATION, image_size=args.image_size, repeats=args.repeats,
                              warmup=args.warmup,
                              candidates=args.candidates, allocator=args.allocator,
                              background_load=args.background_load)
    if args.output is not None:
        check_output(args.output, args.overwrite)
    claim = claim_output(args.output, "--output", error=BenchmarkError) if args.output is not None else nullcontext()
    with claim:
        if args.output is not None:
            check_output(args.output, args.overwrite)  # again, under the claim
        return _run(args, settings)


def _run(args: argparse.Namespace, settings: dict) -> int:
    if args.candidates is None and "onnxruntime" not in settings["candidates"]:
        print('note: onnxruntime is not timed: it needs pip install "mobilevit[export]"', file=sys.stderr)
    import torch

    results = benchmark(**settings)
    load = f", {args.background_load} busy background processes" if args.background_load else ""
    print(f"\n{results[0].task}, {results[0].image_size}x{results[0].image_size}, {args.threads} threads, "
          f"{args.allocator} allocator{load}, torch {torch.__version__}; {machine_load()}\n")
    print(format_table(results))
    if format_compile_times(results):
        print("\n" + format_compile_times(results))
    if args.output is not None:
        paths = write_outputs(results, args.output, args.overwrite)
        print("\nwrote " + ", ".join(str(p) for p in paths))
    return 0


MAX_PREDICT_IMAGES = 1_000_000


def run_predict_mode(args: argparse.Namespace) -> int:
    """`--mode predict` (mobilevit/benchmark_predict.py), its arguments checked first."""
    from .benchmark_predict import REPORT_FILES
    from .runtimes import require_runtime

    batch_sizes = args.batch_sizes or [1, 8, 16, 32, 64]
    if any(not _is_int(b) or b < 1 for b in batch_sizes):
        raise BenchmarkError(f"batch_sizes: expected positive integers, got {list(batch_sizes)}", usage=True)
    if not 1 <= args.images <= MAX_PREDICT_IMAGES:
        raise BenchmarkError(f"--images: expected an integer from 1 to {MAX_PREDICT_IMAGES}, got {args.images}",
                             usage=True)
    parts = args.photo_size.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() and 32 <= int(p) <= 8192 for p in parts):
        raise BenchmarkError(f"--photo-size: expected WIDTHxHEIGHT with sides from 32 to 8192, got {args.photo_size!r}",
                             usage=True)
    if not 1 <= args.threads <= 1024:
        raise BenchmarkError(f"threads: expected an integer from 1 to 1024, got {args.threads}", usage=True)
    from .predict import WRITERS

    task = None
    if args.task is not None:
        try:
            task = canonical_task(args.task, allowed=tuple(WRITERS))
        except ValueError as err:
            raise BenchmarkError(f"--{err}", usage=True) from None
    from . import auto  # loads torch: the arguments on their own are checked above

    args.variants = args.variants or ["xx-small"]
    if len(args.variants) != 1 and args.model is None and args.fixture is None:
        raise BenchmarkError(f"--variants: --mode predict times one model, got {len(args.variants)}", usage=True)
    variant = None
    if args.model is None and args.fixture is None:
        try:
            variant = auto.resolve_variant(args.variants[0])[1]
        except ValueError as err:
            raise BenchmarkError(str(err), usage=True) from None
    for runtime in args.runtimes:
        require_runtime(runtime)
    if args.images_dir is not None and not any(Path(args.images_dir).glob("*.jpg")):
        raise BenchmarkError(f"--images-dir: expected a folder of .jpg files, got {str(args.images_dir)!r}")
    report = [Path(args.output) / name for name in REPORT_FILES] if args.output is not None else []
    if args.output is not None:
        check_output_dir(args.output, "--output", replaces=False, error=BenchmarkError)
        check_output_files(report, "--output", overwrite=args.overwrite, error=BenchmarkError)
    claim = claim_output(report, "--output", error=BenchmarkError) if report else nullcontext()
    with claim:
        return _run_predict_mode(args, task, variant, parts, batch_sizes)


def _run_predict_mode(args: argparse.Namespace, task: str, variant, parts, batch_sizes) -> int:
    from .benchmark_predict import benchmark_predict, format_report, write_report

    runtimes = ["pytorch", *[r for r in args.runtimes if r != "pytorch"]]
    result = benchmark_predict(variant=variant, fixture=args.fixture, model_dir=args.model,
                               task=task, images=args.images,
                               photo_size=tuple(int(p) for p in parts), images_dir=args.images_dir, runtimes=runtimes,
                               stock_batch_sizes=batch_sizes, threads=args.threads,
                               log=lambda line: print(line, file=sys.stderr, flush=True))
    print(format_report(result))
    if args.output is not None:
        print("\nwrote " + ", ".join(str(p) for p in write_report(result, args.output, args.overwrite)))
    return 0
