"""`mobilevit benchmark --mode train`: training images/s against stock transformers' Trainer-style step.

    mobilevit benchmark --mode train [--variants small mobilevitv2-1.0 xx-small:semantic-segmentation]
                        [--batch-sizes 16] [--image-size 256] [--threads 2] [--repeats 5] [--allocator fresh]
                        [--candidates mobilevit mobilevit-bf16 transformers]

One training step is what `transformers.Trainer` runs by default (`TrainingStep`): forward with labels (the
model's own loss), backward, `clip_grad_norm_(1.0)`, fused AdamW (Trainer's default optimizer with torch >=
2.8), `zero_grad`. Every candidate starts from the same weights (`fill_realistic_weights_`) and trains on
the same batch (random pixels and labels, fixed seed):

- `mobilevit`: this package's model, stepped as `MobileViTTrainer` steps it (forward and backward under the
  thread policy; the plain forward's NHWC layout and cheaper loss, `fast_training.py`), float32;
- `mobilevit-bf16`: the same under bfloat16 autocast (`mobilevit train --bf16`);
- `transformers`: stock transformers' class of the same family holding the same weights, float32, the
  reference of the ratios; `transformers-bf16` (named only) the same under bfloat16 autocast.

Every candidate's first step starts from the same random state (dropout), so its loss is comparable: the
float32 candidates must agree with stock within 1e-5 (relative), which the table shows beside the speed.

Memory allocation is a stated condition, as for inference (`--allocator`), and it matters more here: a
training step allocates and frees maps of tens of megabytes, which glibc's default malloc page-faults in
anew every step (`fast_training.keep_freed_memory`):
- `fresh` (default): each candidate in a process of its own as its users run it: this package with the
  setting `mobilevit train` applies to itself, stock transformers with glibc's default. What users feel.
- `tuned`: one process, glibc told to keep freed memory, for every candidate: the difference of the
  models' kernels alone.
- `default`: one process, glibc as it starts, for every candidate.

Candidates are interleaved step by step (`benchmark.time_interleaved`: order reversed every other round, an
untimed step before each timed one), so drifting machine load hits them alike; ratios are medians of
per-round ratios. `--clock cpu` times each step by the CPU time of its process instead of the wall clock:
on a machine other processes keep busy, a one-thread step's CPU time is what its wall time would be on an
idle machine (with more threads it also counts their waiting, so read it at `--threads 1`).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from . import auto
from .tasks import CLASSIFICATION, SEGMENTATION, canonical_task

GOAL_MODELS = ("small", "mobilevitv2-1.0", "xx-small:semantic-segmentation")
PHASES = ("forward", "backward", "clip", "optimizer")
TRAIN_CANDIDATES = ("mobilevit", "mobilevit-bf16", "transformers")
ALL_TRAIN_CANDIDATES = (*TRAIN_CANDIDATES, "transformers-bf16")
TRAIN_REFERENCE = "transformers"
LABELS = {
    "mobilevit": "mobilevit (this package)",
    "mobilevit-bf16": "mobilevit --bf16 (this package)",
    "transformers": "transformers (stock)",
    "transformers-bf16": "transformers bfloat16 autocast",
}
TRAIN_ALLOCATORS = ("fresh", "tuned", "default")
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
OUTPUT_FILES = ("train.json", "train.md")
LOSS_RTOL = 1e-5  # first-step loss of a float32 candidate against stock transformers'
MAX_GRAD_NORM = 1.0  # TrainingArguments' default
LEARNING_RATE = 1e-4


@dataclass
class TrainResult:
    candidate: str
    variant: str
    task: str
    image_size: int
    batch_size: int
    threads: int
    allocator: str
    clock: str
    median_ms: float
    p10_ms: float
    p90_ms: float
    images_per_s: float
    speedup: float | None  # over stock transformers (float32), median of per-round ratios
    first_loss: float
    background_load: int = 0


def parse_model_name(name: str, task: str = CLASSIFICATION) -> tuple[str, str]:
    """'VARIANT' (of `task`) or 'VARIANT:TASK' -> (canonical variant, canonical task); ValueError otherwise."""
    variant, _, own_task = name.partition(":")
    return auto.resolve_variant(variant)[1], canonical_task(own_task or task, allowed=(CLASSIFICATION, SEGMENTATION))


def training_batch(task: str, batch: int, image_size: int, num_labels: int, seed: int = 0) -> dict:
    """Random pixels in [0, 1] and random labels (a class per image, or per pixel), fixed by `seed`."""
    generator = torch.Generator().manual_seed(seed)
    pixel_values = torch.rand(batch, 3, image_size, image_size, generator=generator)
    shape = (batch, image_size, image_size) if task == SEGMENTATION else (batch,)
    return {"pixel_values": pixel_values, "labels": torch.randint(0, num_labels, shape, generator=generator)}


class TrainingStep:
    """One Trainer-style step of `candidate` on a fixed batch, phase by phase (`PHASES`); `step()` runs them all.

    The model is built here from (variant, task) with the benchmark's realistic weights, so every candidate,
    in this process or another, starts from the same ones."""

    def __init__(self, candidate: str, variant: str, task: str, batch: int, image_size: int, seed: int = 0):
        from .benchmark import NUM_LABELS, build_mobilevit, build_stock

        ours = build_mobilevit(variant, task, seed)
        self.candidate, self.ours = candidate, candidate.startswith("mobilevit")
        self.model = (ours if self.ours else build_stock(ours)).train()
        self.bf16 = candidate.endswith("-bf16")
        self.batch = training_batch(task, batch, image_size, NUM_LABELS[task], seed)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=LEARNING_RATE, fused=True)
        self.loss = None
        torch.manual_seed(seed)  # the first step's dropout masks, alike for every candidate
        self.first_loss = self.step()

    def run_phase(self, phase: str) -> None:
        if phase == "forward":
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
                self.loss = self.model(**self.batch).loss
        elif phase == "backward":
            self.loss.backward()
        elif phase == "clip":
            nn.utils.clip_grad_norm_(self.model.parameters(), MAX_GRAD_NORM)
        else:
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)

    def timed_step(self, clock: str = "wall") -> float:
        """One whole step; returns its duration by `clock` ("wall" or "cpu": this process's CPU time)."""
        read = CLOCKS[clock]
        start = read()
        self.step()
        return read() - start

    def step(self) -> float:
        """One whole step; returns its loss. This package's forward and backward run under the thread policy,
        as `MobileViTTrainer` runs them."""
        from .thread_policy import POLICY

        if self.ours:
            with POLICY.work("training step"):
                self.run_phase("forward")
                self.run_phase("backward")
        else:
            self.run_phase("forward")
            self.run_phase("backward")
        self.run_phase("clip")
        self.run_phase("optimizer")
        return float(self.loss.detach())


class FreshTrainingProcess:
    """A candidate's `TrainingStep` in a process of its own (the `fresh` condition), set up as its users run
    it; `runner(None)` has it run one step and returns the seconds it measured. The process starts in the
    background (several candidates' imports and first steps overlap); `first_loss` waits for it."""

    def __init__(self, candidate: str, variant: str, task: str, batch: int, image_size: int, threads: int,
                 clock: str = "wall"):
        self._process = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                            initializer=_fresh_start,
                                            initargs=(candidate, variant, task, batch, image_size, threads))
        self._first_loss = self._process.submit(_fresh_first_loss)
        self.clock = clock

    @property
    def first_loss(self) -> float:
        return self._first_loss.result()

    def __call__(self, _unused) -> float:
        return self._process.submit(_fresh_step, self.clock).result()

    def close(self) -> None:
        self._process.shutdown()


_FRESH = {}  # in a FreshTrainingProcess: its TrainingStep


def _fresh_start(candidate, variant, task, batch, image_size, threads) -> None:
    from .fast_training import keep_freed_memory

    torch.set_num_threads(threads)
    if candidate.startswith("mobilevit"):
        keep_freed_memory()  # what `mobilevit train` does to its own process
    _FRESH["step"] = TrainingStep(candidate, variant, task, batch, image_size)


def _fresh_first_loss() -> float:
    return _FRESH["step"].first_loss


def _fresh_step(clock: str) -> float:
    return _FRESH["step"].timed_step(clock)


def benchmark_training(models=GOAL_MODELS, batch_sizes=(16,), image_size: int = 256, threads: int = 2,
                       repeats: int = 5, warmup: int = 1, candidates=TRAIN_CANDIDATES, allocator: str = "fresh",
                       background_load: int = 0, task: str = CLASSIFICATION, clock: str = "wall",
                       progress: bool = True) -> list[TrainResult]:
    """Time every candidate's step on every model ('VARIANT' of `task` or 'VARIANT:TASK') and batch size.
    `allocator="tuned"` changes this process's malloc settings for good."""
    from .benchmark import BackgroundLoad, summarise, time_interleaved, tune_allocator

    torch.set_num_threads(threads)
    if allocator == "tuned":
        tune_allocator()
    candidates = [c for c in ALL_TRAIN_CANDIDATES if c in candidates]
    results = []
    for name in models:
        variant, model_task = parse_model_name(name, task)
        for batch in batch_sizes:
            if allocator == "fresh":
                runners = {c: FreshTrainingProcess(c, variant, model_task, batch, image_size, threads, clock)
                           for c in candidates}
            else:
                steps = {c: TrainingStep(c, variant, model_task, batch, image_size) for c in candidates}
                runners = {c: (lambda _unused, s=s: s.timed_step(clock)) for c, s in steps.items()}
            try:
                first = {c: (runners[c] if allocator == "fresh" else steps[c]).first_loss for c in candidates}
                with BackgroundLoad(background_load):
                    times = time_interleaved(runners, lambda c: None, repeats, warmup, progress, self_timed=True,
                                             lead_in=True)
            finally:
                for runner in runners.values():
                    if isinstance(runner, FreshTrainingProcess):
                        runner.close()
            for candidate, s in summarise(times, TRAIN_REFERENCE).items():
                results.append(TrainResult(
                    candidate=candidate, variant=variant, task=model_task, image_size=image_size, batch_size=batch,
                    threads=threads, allocator=allocator, clock=clock, median_ms=s["median_ms"], p10_ms=s["p10_ms"],
                    p90_ms=s["p90_ms"], images_per_s=1000 * batch / s["median_ms"], speedup=s["speedup"],
                    first_loss=first[candidate], background_load=background_load))
            if progress:
                print(format_table([r for r in results if (r.variant, r.task, r.batch_size) == (variant, model_task, batch)],
                                   header=False), flush=True)
    return results


def loss_agrees(result: TrainResult, reference: TrainResult) -> bool:
    return abs(result.first_loss - reference.first_loss) <= LOSS_RTOL * abs(reference.first_loss)


TABLE_HEADER = ("| model | task | candidate | batch | step ms (median, p10-p90) | images/s | vs transformers | "
                "first loss |\n|---|---|---|---:|---:|---:|---:|---:|")


def format_table(results: list[TrainResult], header: bool = True) -> str:
    lines = [TABLE_HEADER] if header else []
    reference = {(r.variant, r.task, r.batch_size): r for r in results if r.candidate == TRAIN_REFERENCE}
    for r in results:
        speedup = f"{r.speedup:.2f}x" if r.speedup is not None else ""
        loss = f"{r.first_loss:.6f}"
        ref = reference.get((r.variant, r.task, r.batch_size))
        if ref is not None and r is not ref:
            delta = r.first_loss - ref.first_loss
            agreement = "" if r.candidate.endswith("-bf16") else (" ok" if loss_agrees(r, ref) else " DIFFERS")
            loss += f" ({delta:+.1e}{agreement})"
        lines.append(f"| {r.variant} | {r.task} | {LABELS[r.candidate]} | {r.batch_size} | "
                     f"{r.median_ms:.0f} ({r.p10_ms:.0f}-{r.p90_ms:.0f}) | {r.images_per_s:.1f} | {speedup} | {loss} |")
    return "\n".join(lines)


def write_report(results: list[TrainResult], output: Path, overwrite: bool) -> list[Path]:
    """train.json and train.md in `output`, each written to a temporary file and moved into place."""
    output.mkdir(parents=True, exist_ok=True)
    targets = [output / name for name in OUTPUT_FILES]
    existing = [str(t) for t in targets if t.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"output: {existing} already exist (pass --overwrite to replace them)")
    texts = {"train.json": json.dumps([asdict(r) for r in results], indent=2) + "\n",
             "train.md": format_table(results) + "\n"}
    for target in targets:
        tmp = target.with_name(f".{target.stem}.tmp{target.suffix}")
        try:
            tmp.write_text(texts[target.name])
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
    return targets


def run_train_mode(args: argparse.Namespace) -> int:
    """`mobilevit benchmark --mode train`, every argument checked before any model is built."""
    from .benchmark import BenchmarkError, machine_load
    from .file_utils import check_output_dir

    def usage(message):
        return BenchmarkError(message, usage=True)

    models = args.variants or list(GOAL_MODELS)
    try:
        for name in models:
            parse_model_name(name, args.task)
    except ValueError as err:
        raise usage(str(err)) from None
    batch_sizes = args.batch_sizes or [16]
    if any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in batch_sizes):
        raise usage(f"batch_sizes: expected positive integers, got {list(batch_sizes)}")
    image_size = args.image_size or 256
    if image_size < 32:
        raise usage(f"image_size: expected an integer >= 32 (the network downsamples 32x), got {image_size}")
    for name, minimum in (("threads", 1), ("repeats", 1), ("warmup", 0), ("background_load", 0)):
        if getattr(args, name) < minimum:
            expected = "a positive integer" if minimum == 1 else "an integer >= 0"
            raise usage(f"{name}: expected {expected}, got {getattr(args, name)}")
    candidates = args.candidates or list(TRAIN_CANDIDATES)
    unknown = sorted(set(candidates) - set(ALL_TRAIN_CANDIDATES))
    if unknown:
        raise usage(f"candidates: --mode train times {list(ALL_TRAIN_CANDIDATES)}, got {unknown}")
    allocator = args.allocator or "fresh"
    if allocator not in TRAIN_ALLOCATORS:
        raise usage(f"allocator: expected one of {list(TRAIN_ALLOCATORS)}, got {allocator!r}")
    if args.output is not None:
        check_output_dir(args.output, "--output", replaces=False, error=BenchmarkError)
        existing = [name for name in OUTPUT_FILES if (args.output / name).exists()]
        if existing and not args.overwrite:
            raise BenchmarkError(f"--output: {str(args.output)!r} already holds {', '.join(existing)} (pass "
                                 "--overwrite to replace them)")

    results = benchmark_training(models, batch_sizes, image_size, args.threads, args.repeats, args.warmup,
                                 candidates, allocator, args.background_load, args.task, args.clock)
    load = f", {args.background_load} busy background processes" if args.background_load else ""
    print(f"\ntraining step (forward, backward, clip, fused AdamW), {image_size}x{image_size}, {args.threads} threads, "
          f"{allocator} allocator, {args.clock} clock{load}, torch {torch.__version__}; {machine_load()}\n")
    print(format_table(results))
    if args.output is not None:
        print("\nwrote " + ", ".join(str(p) for p in write_report(results, args.output, args.overwrite)))
    return 0


__all__ = ["TrainingStep", "TrainResult", "benchmark_training", "format_table", "run_train_mode", "GOAL_MODELS"]
