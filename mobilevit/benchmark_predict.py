"""`mobilevit benchmark --mode predict`: `mobilevit predict` end to end on a folder of JPEGs it generates, against
the model's own batch throughput and stock `transformers.pipeline` at its best batch size, in one run.

    mobilevit benchmark --mode predict [--variants xx-small | --fixture mobilevit_xxs | --model DIR] [--images 400]
                        [--task image-classification] [--photo-size 1024x768] [--runtimes pytorch openvino]
                        [--batch-sizes 1 8 16 32 64] [--threads 2] [--images-dir DIR] [--output DIR]

Every task predict serves: a classifier (the default), a segmenter or a detector, generated at a released size
(`--task`, realistic random weights) or read from `--model` (its task from the folder).

What is timed, one after the other on the same folder and weights (the machine's load is printed with them):

- **model**: the runtime alone on ready pixel batches of predict's batch size, at the pixel size predict feeds it
  for these photos: the throughput that decoding and preprocessing should hide behind;
- **predict**: `mobilevit predict FOLDER --model M --output-dir OUT` in a process of its own, as a user runs it;
  its images/s are the ones it reports for its own work (from the first image read to the last result written:
  the imports and the model loading are left out, and the whole command's wall time is shown beside it); its
  peak memory is that process's maximum resident set (`getrusage`);
- **transformers.pipeline**: stock transformers' classes and image processor loaded from the same folder
  (`transformers.pipeline("image-classification", model=M)`, "image-segmentation" for a segmenter), over the
  folder's paths, at each of `--batch-sizes` on the first `SWEEP_IMAGES` images, then at the best one on all of
  them. Stock transformers has no MobileViT detector: for a detector, stock's object-detection pipeline runs
  this package's model and processor (stock's loop: its preprocessing calls, batching and post-processing);
- **batch-1 latency** of each runtime's forward (`--runtimes`, PyTorch first), interleaved call by call.

Printed: a table and the ratios the goals name (predict / model, predict / stock at its best, exported runtime /
PyTorch at batch 1), with the machine's load average before and after.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .tasks import CLASSIFICATION, OBJECT_DETECTION, SEGMENTATION

SWEEP_IMAGES = 128  # stock's batch-size sweep runs on this many images, its best batch size on all
DEFAULT_IMAGES = 400
DEFAULT_PHOTO_SIZE = (1024, 768)
DEFAULT_STOCK_BATCH_SIZES = (1, 8, 16, 32, 64)
UNIQUE_PHOTOS = 64  # distinct generated photos; the rest of the folder are copies of them (decoding is the same work)
LATENCY_CALLS = 30
# classes of a generated model: ImageNet's, PASCAL VOC's, COCO's 80 and the background
GENERATED_LABELS = {CLASSIFICATION: 1000, SEGMENTATION: 21, OBJECT_DETECTION: 81}


@dataclass
class PredictBenchmark:
    model: str
    task: str
    images: int
    photo_size: str
    threads: int
    load_before: str
    rows: list[dict] = field(default_factory=list)
    ratios: dict = field(default_factory=dict)
    load_after: str = ""


def generate_photos(folder: Path, count: int, size: tuple[int, int], log=print) -> Path:
    """`count` JPEGs (quality 90) of `size` (width, height): crops of the photos shipped with scikit-learn and
    scikit-image, scaled, flipped and rotated, `UNIQUE_PHOTOS` distinct ones copied to fill the folder."""
    import numpy as np
    from PIL import Image

    from .export.common import sample_photos

    folder.mkdir(parents=True, exist_ok=True)
    photos = [Image.fromarray(p) for p in sample_photos()]
    rng = np.random.default_rng(0)
    width, height = size
    made = []
    for i in range(min(count, UNIQUE_PHOTOS)):
        photo = photos[i % len(photos)]
        crop_w, crop_h = int(photo.width * rng.uniform(0.6, 1.0)), int(photo.height * rng.uniform(0.6, 1.0))
        left, top = int(rng.integers(0, photo.width - crop_w + 1)), int(rng.integers(0, photo.height - crop_h + 1))
        picture = photo.crop((left, top, left + crop_w, top + crop_h)).resize(size, Image.BILINEAR)
        if i % 2:
            picture = picture.transpose(Image.FLIP_LEFT_RIGHT)
        path = folder / f"photo_{i:05d}.jpg"
        picture.convert("RGB").save(path, quality=90)
        made.append(path)
    for i in range(len(made), count):
        shutil.copyfile(made[i % len(made)], folder / f"photo_{i:05d}.jpg")
    log(f"generated {count} JPEGs of {width}x{height} in {folder}")
    return folder


def machine_load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.1f} / {five:.1f} / {fifteen:.1f} (1 / 5 / 15 min) on {os.cpu_count()} CPUs"


def run_predict(folder: Path, model_dir: Path, output: Path, runtime: str, threads: int, extra=()) -> dict:
    """`mobilevit predict` in a process of its own: its reported images/s, wall time and peak RSS."""
    command = [sys.executable, "-m", "mobilevit", "predict", str(folder), "--model", str(model_dir), "--output-dir",
               str(output), "--overwrite", "--no-progress", "--runtime", runtime, "--threads", str(threads), *extra]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stderr = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"predict failed ({process.returncode}): {stderr.strip().splitlines()[-1:]}")
    summary = next(line for line in stderr.splitlines() if " results in " in line)
    rate = float(summary.split(" images/s")[0].rsplit(", ", 1)[-1])
    peak = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    return {"images_per_s": rate, "wall_s": wall, "peak_rss_mb": peak / 2**20, "summary": summary}


def input_size(processor, task: str, photo_size: tuple[int, int]) -> tuple[int, int]:
    """The (height, width) of the pixels predict feeds the model for a photo of `photo_size` (width, height): the
    processor's fixed size, or (segmentation of whole images) its resize of such a photo."""
    import numpy as np

    from .predict import WRITERS
    from .runtimes import fixed_input_size

    whole_image = WRITERS[task].whole_image
    size = fixed_input_size(processor, whole_image)
    if size is not None:
        return size
    photo = np.zeros((photo_size[1], photo_size[0], 3), dtype=np.uint8)
    overrides = {"do_center_crop": False} if whole_image else {}
    pixel_values = processor(images=photo, input_data_format="channels_last", return_tensors="pt",
                             **overrides)["pixel_values"]
    return tuple(pixel_values.shape[-2:])


def load_for_timing(model_dir: Path, runtime_names, threads: int, photo_size: tuple[int, int]):
    """The runtimes of the folder's model and the pixel size predict feeds them, on `threads` threads."""
    import torch

    from . import auto
    from .predict import WRITERS
    from .runtimes import load_runtime

    torch.set_num_threads(threads)
    model, processor, task = auto.load_model_and_processor(model_dir)
    loaded = {name: load_runtime(name, model, processor, whole_image=WRITERS[task].whole_image, threads=threads)
              for name in runtime_names}
    return loaded, (model.config.num_channels, *input_size(processor, task, photo_size))


def model_throughput(model_dir: Path, runtime_name: str, batch_size: int, threads: int, images: int,
                     photo_size: tuple[int, int] = DEFAULT_PHOTO_SIZE) -> float:
    """Images/s of the runtime alone on ready batches (random pixels of the size predict feeds it for photos of
    `photo_size`), over as many images as predict gets (at least 3 batches)."""
    import torch

    loaded, shape = load_for_timing(model_dir, [runtime_name], threads, photo_size)
    runtime = loaded[runtime_name]
    pixel_values = torch.rand(batch_size, *shape, generator=torch.Generator().manual_seed(0))
    runtime(pixel_values)
    calls = max(3, -(-images // batch_size))
    started = time.perf_counter()
    for _ in range(calls):
        runtime(pixel_values)
    return calls * batch_size / (time.perf_counter() - started)


def batch1_latency(model_dir: Path, runtimes: list[str], threads: int, calls: int = LATENCY_CALLS,
                   photo_size: tuple[int, int] = DEFAULT_PHOTO_SIZE) -> dict[str, float]:
    """Median ms of a batch-1 forward per runtime, interleaved call by call (each timed call after an untimed one
    of the same runtime: another runtime's threads may still be spinning)."""
    import torch

    loaded, shape = load_for_timing(model_dir, runtimes, threads, photo_size)
    pixel_values = torch.rand(1, *shape, generator=torch.Generator().manual_seed(1))
    times = {name: [] for name in loaded}
    for name, runtime in loaded.items():
        for _ in range(3):
            runtime(pixel_values)
    for round_index in range(calls):
        order = list(loaded) if round_index % 2 == 0 else list(reversed(loaded))
        for name in order:
            loaded[name](pixel_values)
            started = time.perf_counter()
            loaded[name](pixel_values)
            times[name].append(time.perf_counter() - started)
    return {name: 1000 * statistics.median(samples) for name, samples in times.items()}


def stock_pipeline(folder: Path, model_dir: Path, batch_sizes, threads: int, log=print) -> dict:
    """Stock `transformers.pipeline` on the folder's paths: images/s per batch size on the first SWEEP_IMAGES,
    then at the best batch size on all of them. Stock classes from the folder; for a detector (stock has none),
    stock's pipeline on this package's model and processor."""
    import logging

    import torch
    import transformers

    from . import auto
    from .tasks import PIPELINE_TASKS

    torch.set_num_threads(threads)
    paths = sorted(str(p) for p in folder.glob("*.jpg"))
    task = auto.task_of(auto.load_config(model_dir), model_dir)
    if task == OBJECT_DETECTION:
        model, processor, _ = auto.load_model_and_processor(model_dir)
        stock_logger = logging.getLogger("transformers.pipelines.base")
        level = stock_logger.level
        stock_logger.setLevel(logging.CRITICAL)  # it logs that it does not know the model class, then runs it
        try:
            run = transformers.pipeline(PIPELINE_TASKS[task], model=model, image_processor=processor, device="cpu")
        finally:
            stock_logger.setLevel(level)
    else:
        run = transformers.pipeline(PIPELINE_TASKS[task], model=str(model_dir), device="cpu")

    def rate(images, batch_size):
        started = time.perf_counter()
        for _ in run(images, batch_size=batch_size):
            pass
        return len(images) / (time.perf_counter() - started)

    run(paths[:2], batch_size=2)  # warm-up
    sweep, sample = {}, paths[:SWEEP_IMAGES]
    for batch_size in batch_sizes:
        sweep[batch_size] = rate(sample, batch_size)
        log(f"  transformers.pipeline batch {batch_size}: {sweep[batch_size]:.1f} images/s on {len(sample)} images")
    best = max(sweep, key=sweep.get)
    return {"sweep": sweep, "best_batch_size": best, "images_per_s": rate(paths, best),
            "processor": type(run.image_processor).__name__, "model_class": type(run.model).__name__}


def prepare_model(workdir: Path, variant: str | None, fixture: str | None, model_dir: Path | None,
                  task: str | None = None) -> tuple[Path, str, str]:
    """(folder, description, task) of the model to run: given (its task from the folder; `task`, if given, must
    be it), converted from an ml-cvnets fixture (the same), or a released size for `task` (default
    classification) with realistic random weights (`GENERATED_LABELS` classes, the family's evaluation
    preprocessing for the task)."""
    from . import auto
    from .errors import UserError
    from .testing_utils import fill_realistic_weights_, fixture_model_folder, shared_fixtures_dir

    if model_dir is not None or fixture is not None:
        if model_dir is not None:
            folder, described, argument = Path(model_dir), str(model_dir), f"--model {str(model_dir)!r}"
        else:
            fixtures = shared_fixtures_dir()
            if fixtures is None:
                raise UserError("--fixture: ../shared/fixtures/mlcvnets not found (set MOBILEVIT_FIXTURES)")
            folder = fixture_model_folder(fixtures, fixture, workdir / fixture)
            described, argument = f"{fixture} (ml-cvnets fixture weights)", f"--fixture {fixture}"
        held = auto.task_of(auto.load_config(folder), folder)
        if task not in (None, held):
            raise UserError(f"--task: expected {held} (what {argument} holds) or no --task, got {task}", usage=True)
        return folder, described, held
    task = task or CLASSIFICATION
    labels = GENERATED_LABELS[task]
    config = auto.new_config(variant, task, num_labels=labels)
    model = fill_realistic_weights_(auto.new_model(config, task), seed=0).eval()
    output = workdir / f"{variant}-{task}"
    model.save_pretrained(output)
    auto.image_processor_for(config, task).save_pretrained(output)
    return output, f"{variant} {task} (realistic random weights, {labels} classes)", task


def benchmark_predict(*, variant: str = "xx-small", fixture: str | None = None, model_dir=None,
                      task: str | None = None, images: int = DEFAULT_IMAGES, photo_size=DEFAULT_PHOTO_SIZE,
                      images_dir=None, runtimes=("pytorch",), stock_batch_sizes=DEFAULT_STOCK_BATCH_SIZES,
                      threads: int = 2, log=print) -> PredictBenchmark:
    from .inference import DEFAULT_BATCH_SIZE

    with tempfile.TemporaryDirectory(prefix="mobilevit-bench-predict-") as work:
        work = Path(work)
        model_path, model_name, task = prepare_model(work, variant, fixture, model_dir, task)
        batch_size = DEFAULT_BATCH_SIZE[task]
        folder = Path(images_dir) if images_dir is not None \
            else generate_photos(work / "photos", images, photo_size, log)
        count = len(list(folder.glob("*.jpg")))
        result = PredictBenchmark(model_name, task, count, f"{photo_size[0]}x{photo_size[1]}", threads, machine_load())
        log(f"model alone, batch {batch_size} ...")
        model_rate = model_throughput(model_path, "pytorch", batch_size, threads, count, photo_size)
        result.rows.append({"what": f"model alone (pytorch, batch {batch_size}, ready pixels)",
                            "images_per_s": model_rate})
        predicted = {}
        for runtime in runtimes:
            log(f"mobilevit predict --runtime {runtime} ...")
            predicted[runtime] = run_predict(folder, model_path, work / f"out-{runtime}", runtime, threads)
            result.rows.append({"what": f"mobilevit predict --runtime {runtime} (batch {batch_size})",
                                **{k: v for k, v in predicted[runtime].items() if k != "summary"}})
        log("stock transformers.pipeline ...")
        stock = stock_pipeline(folder, model_path, stock_batch_sizes, threads, log)
        result.rows.append({"what": f"transformers.pipeline ({stock['model_class']}, {stock['processor']}), best "
                                    f"batch {stock['best_batch_size']} of {list(stock['sweep'])}",
                            "images_per_s": stock["images_per_s"]})
        log("batch-1 latency per runtime ...")
        latency = batch1_latency(model_path, list(runtimes), threads, photo_size=photo_size)
        for runtime, ms in latency.items():
            result.rows.append({"what": f"{runtime} forward at batch 1 (interleaved)", "latency_ms": ms})
        ours = predicted["pytorch"]["images_per_s"] if "pytorch" in predicted else None
        if ours:
            result.ratios["predict / model alone (goal >= 0.8)"] = ours / model_rate
            result.ratios["predict / transformers.pipeline at its best (goal >= 3)"] = ours / stock["images_per_s"]
        for runtime in runtimes:
            if runtime != "pytorch" and "pytorch" in latency:
                result.ratios[f"{runtime} / pytorch at batch 1 (goal >= 1.5 for openvino)"] = \
                    latency["pytorch"] / latency[runtime]
        result.load_after = machine_load()
    return result


def format_report(result: PredictBenchmark) -> str:
    lines = [f"predict benchmark ({result.task}): {result.images} JPEGs of {result.photo_size}, model {result.model}, "
             f"{result.threads} threads", f"before: {result.load_before}", "",
             "| what | images/s | batch-1 ms | wall s | peak RSS MB |", "|---|---:|---:|---:|---:|"]
    for row in result.rows:
        cells = [f"{row[k]:.1f}" if k in row else "" for k in ("images_per_s", "latency_ms", "wall_s", "peak_rss_mb")]
        lines.append(f"| {row['what']} | " + " | ".join(cells) + " |")
    lines += ["", *(f"{name}: {value:.2f}x" for name, value in result.ratios.items()), f"after: {result.load_after}"]
    return "\n".join(lines)


REPORT_FILES = ("predict.json", "predict.md")


def write_report(result: PredictBenchmark, output: Path, overwrite: bool) -> list[Path]:
    """The report's files in `output`, committed together (`file_utils.staged_outputs`): both appear or neither,
    and existing ones are replaced only with `overwrite`."""
    from .file_utils import json_text, staged_outputs

    texts = {output / "predict.json": json_text(asdict(result)) + "\n", output / "predict.md": format_report(result) + "\n"}
    with staged_outputs(list(texts), overwrite=overwrite, argument="--output") as staged:
        for path, text in texts.items():
            staged.path(path).write_text(text)
    return list(texts)


__all__ = ["benchmark_predict", "format_report", "write_report", "REPORT_FILES", "generate_photos", "run_predict", "PredictBenchmark"]
