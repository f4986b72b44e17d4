"""Where a training step spends its time: forward, backward, gradient clipping and AdamW, per operator.

    PYTHONPATH=. python benchmarks/profile_training.py [--models small mobilevitv2-1.0 xx-small:semantic-segmentation]
                                                      [--candidates mobilevit transformers] [--batch 16]
                                                      [--image-size 256] [--threads 2] [--rounds 2]
                                                      [--allocator tuned|default]

The step is the one `mobilevit benchmark --mode train` times (`mobilevit.benchmark_train.TrainingStep`), the
one `transformers.Trainer` runs by default: forward with labels (the model's own loss), backward,
`clip_grad_norm_(1.0)`, fused AdamW, `zero_grad`. For each model (realistic random weights, train mode,
BatchNorm live, the same batch) and candidate (this package's model, stock transformers' class holding the
same weights, either under bfloat16 autocast with `-bf16`), each phase of `--rounds` steps runs under its
own torch.profiler, so every operator is charged to the phase that ran it:

1. the phases' share of the step (ms per step, profiled; the profiler adds a little to every call),
2. per phase, the operators with the most self time (ms per step, share of the phase, calls per step).

The profiler measures wall time: on a machine other processes keep busy, read shares, not milliseconds. The
allocator is a process-wide condition (`tuned` by default: glibc keeps freed memory, as `mobilevit train`
runs; `default`: glibc page-faults large maps in anew each step, which stock transformers' users get).
`mobilevit benchmark --mode train` times the steps without a profiler, interleaved, and prints the ratios;
this script is for finding what to speed up next.
"""

from __future__ import annotations

import argparse
import sys

import torch

from mobilevit import benchmark as bench
from mobilevit import benchmark_train as speed

TOP_OPERATORS = 10


def profile_step(step: speed.TrainingStep, rounds: int) -> dict[str, list[tuple[str, float, int]]]:
    """{phase: [(operator, self ms per step, calls per step), ...] slowest first}, over `rounds` steps."""
    from torch.profiler import ProfilerActivity, profile

    totals: dict[str, dict[str, list[float]]] = {phase: {} for phase in speed.PHASES}
    for _ in range(rounds):
        for phase in speed.PHASES:
            with profile(activities=[ProfilerActivity.CPU]) as profiler:
                step.run_phase(phase)
            for event in profiler.key_averages():
                entry = totals[phase].setdefault(event.key, [0.0, 0])
                entry[0] += event.self_cpu_time_total / 1000
                entry[1] += event.count
    return {phase: sorted(((name, ms / rounds, calls // rounds) for name, (ms, calls) in ops.items()),
                          key=lambda row: -row[1])
            for phase, ops in totals.items()}


def report(model_name: str, candidate: str, batch: int, image_size: int, rounds: int) -> str:
    variant, task = speed.parse_model_name(model_name)
    step = speed.TrainingStep(candidate, variant, task, batch, image_size)  # its first step warms up
    profiles = profile_step(step, rounds)
    phase_ms = {phase: sum(ms for _, ms, _ in rows) for phase, rows in profiles.items()}
    total = sum(phase_ms.values())
    lines = [f"\n## {candidate}: {variant} {task}, batch {batch}, {image_size}x{image_size}, "
             f"{torch.get_num_threads()} threads",
             "\n" + "  ".join(f"{phase} {ms:.0f} ms ({ms / total:.0%})" for phase, ms in phase_ms.items())
             + f"  = {total:.0f} ms per step (profiled)"]
    for phase, rows in profiles.items():
        lines.append(f"\n{phase:52s} {'ms/step':>9s} {'share':>6s} {'calls':>6s}")
        for name, ms, calls in rows[:TOP_OPERATORS]:
            lines.append(f"{name[:52]:52s} {ms:9.1f} {ms / max(phase_ms[phase], 1e-9):6.1%} {calls:6d}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(speed.GOAL_MODELS),
                        help="VARIANT or VARIANT:TASK (default: " + " ".join(speed.GOAL_MODELS) + ")")
    parser.add_argument("--candidates", nargs="+", default=["mobilevit", "transformers"],
                        choices=speed.ALL_TRAIN_CANDIDATES)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads (0: keep PyTorch's setting)")
    parser.add_argument("--rounds", type=int, default=2, help="profiled steps per model and candidate")
    parser.add_argument("--allocator", choices=("tuned", "default"), default="tuned",
                        help="tuned: glibc keeps freed memory (as mobilevit train runs); default: as the process has it")
    args = parser.parse_args(argv)
    for name in ("batch", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name}: expected a positive number, got {getattr(args, name)}")
    if args.image_size < 32:
        parser.error(f"--image-size: expected at least 32 (the network downsamples 32x), got {args.image_size}")
    if args.threads < 0:
        parser.error(f"--threads: expected 0 (keep PyTorch's setting) or a positive number, got {args.threads}")
    try:
        for name in args.models:
            speed.parse_model_name(name)
    except ValueError as err:
        parser.error(f"--models: {err}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.allocator == "tuned":
        bench.tune_allocator()
    print(f"torch {torch.__version__}, {args.allocator} allocator; {bench.machine_load()}")
    for name in args.models:
        for candidate in args.candidates:
            print(report(name, candidate, args.batch, args.image_size, args.rounds), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
