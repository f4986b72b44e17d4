"""Where one batch-1 forward of the fast path spends its time: per operator, its fixed cost, and SiLU's.

    PYTHONPATH=. python benchmarks/profile_fast_path.py [--variants xx-small small] [--threads 2]
                                                        [--image-size 256] [--rounds 20]

For each variant (realistic random weights, eval mode, inference mode, batch 1):

1. torch.profiler over `--rounds` forwards: every operator's self time per forward (ms), its share of the
   profiled total and its calls per forward. The profiler adds a little to every call, so read shares.
2. The fixed cost: median latency at 32x32, where no layer has real work, beside the median at
   `--image-size`. What remains at 32x32 is per-call set-up (PyTorch dispatch, oneDNN and MKL) and Python.
3. SiLU against a plain multiply on a tensor the size of the network's widest map: how much more than
   memory traffic the activation costs.

The benchmark (`mobilevit benchmark`, `benchmarks/bench_models.py`) compares libraries; this script is
for finding the next thing to speed up.
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch
from torch.nn import functional as F

from mobilevit import benchmark as bench
from mobilevit.auto import resolve_variant
from mobilevit.fast_inference import widest_map_elements

FIXED_COST_SIZE = 32  # the smallest input every variant takes (its last stage is then 1x1)
TOP_OPERATORS = 12


def operator_profile(model: torch.nn.Module, pixel_values: torch.Tensor, rounds: int) -> list[tuple[str, float, int]]:
    """(operator, self ms per forward, calls per forward), slowest first."""
    from torch.profiler import ProfilerActivity, profile

    forward = bench.torch_runner(model)
    for _ in range(3):
        forward(pixel_values)
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        for _ in range(rounds):
            forward(pixel_values)
    rows = [(e.key, e.self_cpu_time_total / 1000 / rounds, e.count // rounds) for e in profiler.key_averages()]
    return sorted(rows, key=lambda row: -row[1])


def median_ms(runner, make_input, rounds: int) -> float:
    times = bench.time_interleaved({"run": runner}, lambda name: make_input(), rounds, warmup=3, progress=False)
    return 1000 * statistics.median(times["run"])


def report(variant: str, image_size: int, rounds: int) -> str:
    model = bench.build_mobilevit(variant, "image-classification")
    forward = bench.torch_runner(model)
    lines = [f"\n## {variant}, batch 1, {image_size}x{image_size}, {torch.get_num_threads()} threads"]

    rows = operator_profile(model, bench.benchmark_input(1, image_size), rounds)
    total = sum(ms for _, ms, _ in rows)
    lines.append(f"\n{'operator':52s} {'ms/forward':>10s} {'share':>6s} {'calls':>6s}")
    for name, ms, calls in rows[:TOP_OPERATORS]:
        lines.append(f"{name[:52]:52s} {ms:10.2f} {ms / total:6.1%} {calls:6d}")
    lines.append(f"{'(all operators, profiled)':52s} {total:10.2f}")

    full = median_ms(forward, lambda: bench.benchmark_input(1, image_size), rounds)
    fixed = median_ms(forward, lambda: bench.benchmark_input(1, FIXED_COST_SIZE), rounds)
    lines.append(
        f"\nfixed cost: {fixed:.2f} ms at {FIXED_COST_SIZE}x{FIXED_COST_SIZE} against {full:.2f} ms at "
        f"{image_size}x{image_size} ({fixed / full:.0%} of it)"
    )

    elements = widest_map_elements(model.base_model, image_size, image_size)
    widest = torch.randn(elements, generator=torch.Generator().manual_seed(0))
    silu = median_ms(lambda x: F.silu(x), lambda: widest, rounds)
    multiply = median_ms(lambda x: torch.mul(x, x), lambda: widest, rounds)
    lines.append(
        f"SiLU on the widest map ({elements / 1e6:.2f} M elements): {silu:.3f} ms, a multiply {multiply:.3f} ms "
        f"({silu / multiply:.1f}x)"
    )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=list(bench.DEFAULT_VARIANTS))
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads (0: keep PyTorch's setting)")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=20, help="profiled and timed forwards per measurement")
    args = parser.parse_args(argv)
    if args.image_size < FIXED_COST_SIZE:
        parser.error(f"--image-size: expected at least {FIXED_COST_SIZE}, got {args.image_size}")
    if args.threads < 0:
        parser.error(f"--threads: expected 0 (keep PyTorch's setting) or a positive number, got {args.threads}")
    if args.rounds < 1:
        parser.error(f"--rounds: expected a positive number, got {args.rounds}")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}; {bench.machine_load()}")
    for variant in args.variants:
        print(report(resolve_variant(variant)[1], args.image_size, args.rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
