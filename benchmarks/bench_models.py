"""Every speed goal of the fast path in one run, printed as ratios against stock transformers and ONNX Runtime.

    PYTHONPATH=. python benchmarks/bench_models.py [--threads 2] [--repeats 15] [--output DIR]

1. classification 256x256, batch 1 and 32, three variants: mobilevit vs transformers vs ONNX Runtime
2. DeepLabV3 segmentation 512x512, batch 1: mobilevit vs transformers
3. a training step (forward, backward, SGD step; train mode, BatchNorm live): mobilevit vs transformers

The timing itself is `mobilevit.benchmark` (interleaved candidates, realistic weights, medians of per-round
ratios). On a busy machine absolute numbers drift; the ratios are what to read.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

from mobilevit import benchmark as bench

GOALS = {
    "batch1": 1.6,  # latency speed-up over stock transformers, every variant
    "batch1_vs_ort": 1.0,  # ONNX Runtime latency / ours: no slower than ONNX Runtime
    "batch32": 3.0,  # throughput over stock transformers, every variant
    "segmentation": 1.6,  # DeepLabV3 512x512 batch 1 over stock
    "training": 0.95,  # training step: not slower than stock (5 % measurement noise allowed)
}


def training_ratio(variant: str, batch: int, image_size: int, repeats: int) -> float:
    """Median over rounds of stock step time / our step time."""
    ours = bench.build_mobilevit(variant, "image-classification").train()
    stock = bench.build_stock(ours).train()
    pixel_values = torch.rand(batch, 3, image_size, image_size)
    labels = torch.randint(0, 1000, (batch,))

    def stepper(model):
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

        def step(inputs):
            optimizer.zero_grad(set_to_none=True)
            model(inputs, labels=labels).loss.backward()
            optimizer.step()

        return step

    times = bench.time_interleaved(
        {"mobilevit": stepper(ours), "transformers": stepper(stock)}, lambda name: pixel_values, repeats, warmup=2
    )
    return statistics.median(s / o for s, o in zip(times["transformers"], times["mobilevit"]))


def verdict(value: float, goal: float) -> str:
    return f"{value:5.2f}x  (goal >= {goal}x: {'PASS' if value >= goal else 'FAIL'})"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15, help="rounds per measurement (batch 32: a third of it)")
    parser.add_argument("--variants", nargs="+", default=list(bench.DEFAULT_VARIANTS))
    parser.add_argument("--train-batch", type=int, default=8)
    parser.add_argument("--output", type=Path, default=None, help="also write the classification table/chart here")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--allocator", default="tuned", choices=bench.ALLOCATORS, help="see mobilevit/benchmark.py")
    args = parser.parse_args(argv)
    torch.manual_seed(0)

    candidates = ["mobilevit", "transformers", "onnxruntime"]
    common = dict(threads=args.threads, allocator=args.allocator)
    results = bench.benchmark(args.variants, [1], repeats=args.repeats, candidates=candidates, **common)
    results += bench.benchmark(args.variants, [32], repeats=max(3, args.repeats // 3), candidates=candidates, **common)
    segmentation = bench.benchmark(
        args.variants, [1], task="semantic-segmentation", repeats=max(5, args.repeats // 2),
        candidates=["mobilevit", "transformers"], **common,
    )
    training = {v: training_ratio(v, args.train_batch, 256, max(5, args.repeats // 2)) for v in args.variants}

    def pick(rows, candidate, variant, batch):
        return next(r for r in rows if (r.candidate, r.variant, r.batch_size) == (candidate, variant, batch))

    print(f"\nclassification 256x256 and segmentation 512x512, {args.threads} threads, fp32, {args.allocator} allocator, "
          f"torch {torch.__version__}; "
          f"{bench.machine_load()}\n")
    print(bench.format_table(results + segmentation))
    print("\nGoals (ratios; > 1 means this package is faster)")
    passed = True
    for v in args.variants:
        ours1, ort1 = pick(results, "mobilevit", v, 1), pick(results, "onnxruntime", v, 1)
        ours32, stock32 = pick(results, "mobilevit", v, 32), pick(results, "transformers", v, 32)
        rows = [
            ("batch-1 latency vs transformers", ours1.speedup, GOALS["batch1"]),
            ("batch-1 latency vs onnxruntime", ort1.median_ms / ours1.median_ms, GOALS["batch1_vs_ort"]),
            ("batch-32 throughput vs transformers", ours32.images_per_s / stock32.images_per_s, GOALS["batch32"]),
            ("segmentation 512 batch-1 vs transformers", pick(segmentation, "mobilevit", v, 1).speedup, GOALS["segmentation"]),
            (f"training step (batch {args.train_batch}) vs transformers", training[v], GOALS["training"]),
        ]
        for name, value, goal in rows:
            print(f"  {v:8s}  {name:44s} {verdict(value, goal)}")
            passed &= value >= goal
    if args.output is not None:
        bench.write_outputs(results, args.output, args.overwrite)
    print("\nall goals met" if passed else "\nsome goals not met (see FAIL above)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
