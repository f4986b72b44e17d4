"""`mobilevit.pipeline` against stock `transformers.pipeline` on the same model folder and the same JPEG paths,
interleaved in one process (so a busy machine slows both alike), with their predictions compared.

    PYTHONPATH=. python benchmarks/bench_pipeline.py --fixture mobilevit_xxs --images 64 \
        --stock-batch-sizes 1 16 64 --rounds 3

Candidates: `mobilevit.pipeline(model=M)` at its default batch size and workers, and stock
`transformers.pipeline(task, model=M)` (stock classes and processor from the same folder) at each of
`--stock-batch-sizes`. Each round runs every candidate once over all the paths, in reversed order every other
round; medians of images/s are printed with each one's ratio to stock at its best, the machine's load before and
after, and how often the two pipelines' top-1 labels agree (classification; they run the same weights, so
anything but 100% is a bug). The model: `--fixture` (ml-cvnets fixture weights, ../shared/fixtures), `--model`
(a saved classifier or segmenter folder), or a generated xx-small classifier (realistic random weights).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

OURS = "mobilevit.pipeline (defaults)"


def images_per_second(run, paths: list[str], **kwargs) -> tuple[float, list]:
    started = time.perf_counter()
    results = list(run(paths, **kwargs))
    return len(paths) / (time.perf_counter() - started), results


def top1(result) -> str | None:
    """The best label of one classification result (a list of {'label', 'score'}); None for other tasks."""
    return result[0]["label"] if isinstance(result, list) and result and "score" in result[0] else None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fixture", default=None, help="ml-cvnets fixture weights, e.g. mobilevit_xxs")
    parser.add_argument("--model", type=Path, default=None, help="a saved model folder")
    parser.add_argument("--images", type=int, default=64, help="JPEGs per candidate and round (default 64)")
    parser.add_argument("--photo-size", default="1024x768")
    parser.add_argument("--stock-batch-sizes", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    for name, value, low, high in (("--images", args.images, 1, 100_000), ("--rounds", args.rounds, 1, 100),
                                   ("--threads", args.threads, 1, 1024)):
        if not low <= value <= high:
            parser.error(f"{name}: expected an integer from {low} to {high}, got {value}")
    if any(not 1 <= b <= 4096 for b in args.stock_batch_sizes):
        parser.error(f"--stock-batch-sizes: expected integers from 1 to 4096, got {args.stock_batch_sizes}")

    import torch
    import transformers

    import mobilevit
    from mobilevit.benchmark_predict import generate_photos, machine_load, prepare_model
    from mobilevit.tasks import PIPELINE_TASKS

    torch.set_num_threads(args.threads)
    width, height = (int(v) for v in args.photo_size.split("x"))
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as work:
        work = Path(work)
        model, described, task = prepare_model(work, "xx-small", args.fixture, args.model)
        folder = generate_photos(work / "photos", args.images, (width, height), log=lambda line: None)
        paths = sorted(str(p) for p in folder.glob("*.jpg"))
        ours = mobilevit.pipeline(model=str(model))
        stock = transformers.pipeline(PIPELINE_TASKS[task], model=str(model), device="cpu")
        candidates = {OURS: (ours, {})}
        candidates.update({f"transformers.pipeline batch {b}": (stock, {"batch_size": b})
                           for b in args.stock_batch_sizes})
        for run, kwargs in candidates.values():  # warm-up: first calls allocate and load kernels
            run(paths[:2], **kwargs)
        print(f"{described}, {len(paths)} JPEGs of {args.photo_size}, {args.threads} threads; "
              f"stock: {type(stock.model).__name__} + {type(stock.image_processor).__name__}; "
              f"before: {machine_load()}")
        rates = {name: [] for name in candidates}
        agreement = []
        for round_index in range(args.rounds):
            order = list(candidates) if round_index % 2 == 0 else list(reversed(candidates))
            labels = {}
            for name in order:
                run, kwargs = candidates[name]
                rate, results = images_per_second(run, paths, **kwargs)
                rates[name].append(rate)
                labels[name] = [top1(r) for r in results]
                print(f"  round {round_index}: {name} {rate:.2f} images/s", file=sys.stderr, flush=True)
            reference = labels.pop(OURS)
            agreement += [a == b for other in labels.values() for a, b in zip(reference, other)]
        print(f"after: {machine_load()}\n")
        medians = {name: statistics.median(values) for name, values in rates.items()}
        best_stock = max((n for n in medians if n.startswith("transformers")), key=medians.get)
        print("| candidate | images/s (median) | runs | / stock at its best |\n|---|---:|---|---:|")
        for name, median in medians.items():
            print(f"| {name} | {median:.2f} | {', '.join(f'{v:.2f}' for v in rates[name])} | "
                  f"{median / medians[best_stock]:.2f}x |")
        if reference and reference[0] is not None:
            share = 100 * sum(agreement) / len(agreement)
            print(f"\nstock's top-1 labels equal to mobilevit.pipeline's: {share:.1f}% of {len(agreement)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
