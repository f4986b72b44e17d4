"""How `mobilevit predict`'s settings change its images/s: batch sizes, worker counts, and whether the workers
pause while a forward runs (the engine's choice when workers and model threads want more CPUs than there are).

    PYTHONPATH=. python benchmarks/bench_predict_settings.py --task classification --images 256 \
        --configs b1 b8 b32 b64 b32-nopause b32-w1 --rounds 3

Each config is a full `mobilevit predict` run in this process over the same folder of generated 1024x768 JPEGs
(`benchmark_predict.generate_photos`), on xx-small with realistic random weights (1000 classes; DeepLabV3 with 21
for segmentation); configs run interleaved, in reversed order every other round, and the medians of predict's
own images/s are printed with the machine's load. Config names: `b<batch size>`, then optional `-w<workers>` and
`-nopause` (workers decode beside the forward even when they share its CPUs).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import sys
import tempfile
from pathlib import Path


def make_model(folder: Path, task: str) -> Path:
    from mobilevit import auto
    from mobilevit.testing_utils import fill_realistic_weights_

    num_labels = 1000 if task == "image-classification" else 21
    config = auto.new_config("xx-small", task, num_labels=num_labels)
    model = fill_realistic_weights_(auto.new_model(config, task), seed=0).eval()
    model.save_pretrained(folder)
    auto.image_processor_for(config, task).save_pretrained(folder)
    return folder


def predict_rate(config: str, photos: Path, model: Path, output: Path) -> float:
    """images/s that `mobilevit predict` reports for one config."""
    import mobilevit.inference as inference
    from mobilevit import cli

    batch, *options = config.split("-")
    argv = ["predict", str(photos), "--model", str(model), "--output-dir", str(output), "--overwrite", "--no-progress",
            "--batch-size", batch[1:], *(arg for o in options if o.startswith("w") for arg in ("--workers", o[1:]))]
    original = inference.WorkerPool

    class Overlapping(original):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.pauses = False

    inference.WorkerPool = Overlapping if "nopause" in options else original
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = cli.main(argv)
    finally:
        inference.WorkerPool = original
    if code != 0:
        raise RuntimeError(err.getvalue()[-1000:])
    summary = next(line for line in err.getvalue().splitlines() if " images/s" in line)
    return float(summary.split(" images/s")[0].rsplit(", ", 1)[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="image-classification",
                        choices=("image-classification", "semantic-segmentation"))
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--photo-size", default="1024x768")
    parser.add_argument("--configs", nargs="+", default=["b1", "b8", "b32", "b64", "b32-nopause"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    import torch

    from mobilevit.benchmark_predict import generate_photos, machine_load

    torch.set_num_threads(args.threads)
    width, height = (int(v) for v in args.photo_size.split("x"))
    with tempfile.TemporaryDirectory(prefix="bench-predict-settings-") as work:
        work = Path(work)
        model = make_model(work / "model", args.task)
        photos = generate_photos(work / "photos", args.images, (width, height), log=lambda line: None)
        print(f"{args.task}, {args.images} JPEGs of {args.photo_size}, {args.threads} threads; "
              f"before: {machine_load()}")
        rates = {config: [] for config in args.configs}
        for round_index in range(args.rounds):
            for config in args.configs if round_index % 2 == 0 else args.configs[::-1]:
                rates[config].append(predict_rate(config, photos, model, work / "out"))
                print(f"  round {round_index}: {config} {rates[config][-1]:.1f} images/s", file=sys.stderr, flush=True)
        print(f"after: {machine_load()}")
        best = max(statistics.median(v) for v in rates.values())
        for config, values in rates.items():
            median = statistics.median(values)
            print(f"{config:>14}: {median:7.1f} images/s ({median / best:.2f} of the best)  "
                  f"[{', '.join(f'{v:.1f}' for v in values)}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
