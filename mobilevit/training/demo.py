"""`mobilevit demo`: train MobileViT-XXS on the two embedded data sets and walk the whole path a user walks.

For each task: train with `Trainer` (from scratch, CPU) -> evaluate -> save a Hub-ready folder ->
`from_pretrained` it back -> predict the held-out test images with a transformers `pipeline` -> score those
predictions. Everything lands in `--output-dir`:

    classification/   digits model folder (config, weights, processor, model card, metrics, curves)
    segmentation/     shapes model folder (same)
    metrics.json      {"classification": {"accuracy": ...}, "segmentation": {"mean_iou": ...}, ...}
    training_history.png       loss and metric per epoch, train and eval, both tasks
    segmentation_predictions.png   held-out scenes: true and predicted masks, wrong pixels in red
    classification_predictions.png held-out digits, true and predicted labels, mistakes framed in red
    images/           a few held-out images as files (digits/<label>/*.png, shapes/*.png) for the next steps

When it ends it prints the next steps, commands on these folders (`demo_report.next_steps`).

The recipe (sizes, epochs, learning rate) is chosen to reach the targets below on 2 CPU cores in a few
minutes; `RECIPES` holds it.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from .. import auto, limits
from ..file_utils import check_output_dir, claim_output, json_text, staged_directory
from .demo_data import SHAPES_LABELS, load_digits_dataset, load_shapes_dataset
from .demo_report import (EXAMPLES_DIR, classification_picture, next_steps, segmentation_picture,
                          write_example_images)
from .history import plot_histories
from .job import OutputExistsError, TrainError, TrainJob, train_and_save
from .metrics import SegmentationMetrics

TARGETS = {"classification": ("accuracy", 0.95), "segmentation": ("mean_iou", 0.80)}

# Digits: 64x64 upsampled 8x8 scans; no flip (a mirrored digit is another glyph), mild crops.
# Shapes: 96x96 scenes, output stride 8 (12x12 logits) so the masks follow the edges; ASPP as released; crops
# keep the aspect ratio (a stretched circle or square would blur the very classes being learnt).
RECIPES = {
    "classification": dict(task="image-classification", epochs=6, batch_size=32, learning_rate=2e-3, image_size=64,
                           eval_resize=64, crop_scale=(0.5, 1.0), flip_prob=0.0, multi_scale=False),
    "segmentation": dict(task="semantic-segmentation", epochs=20, batch_size=16, learning_rate=2e-3, image_size=96,
                         eval_resize=96, crop_scale=(0.5, 1.0), crop_ratio=(1.0, 1.0), flip_prob=0.5,
                         multi_scale=False, labels=SHAPES_LABELS, config_overrides={"output_stride": 8}),
}
SHAPES_SIZES = dict(image_size=96, num_train=800, num_val=100, num_test=100)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output-dir", default="demo-output", help="where everything goes")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    parser.add_argument("--seed", type=int, default=0, help="seeds the data, the initial weights and the augmentation")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: every CPU this process may use; training steps drop to one "
                             "thread while other processes hold the CPUs, as in `mobilevit train`)")
    parser.add_argument("--bf16", action="store_true",
                        help="train both models in bfloat16 autocast (evaluation and the saved models stay float32)")


def _pipeline_classification(folder: Path, test) -> tuple[float, list]:
    from transformers import pipeline

    model, processor, _ = auto.load_model_and_processor(folder)
    classifier = pipeline("image-classification", model=model, image_processor=processor, device="cpu")
    images = list(test["image"])
    predictions = classifier(images, batch_size=64, top_k=1)
    names = [p[0]["label"] for p in predictions]
    truth = [model.config.id2label[int(label)] for label in test["label"]]
    accuracy = float(np.mean([p == t for p, t in zip(names, truth)]))
    return accuracy, list(zip(images, names, truth))


def _pipeline_segmentation(folder: Path, test) -> tuple[dict, list]:
    from transformers import pipeline

    model, processor, _ = auto.load_model_and_processor(folder)
    segmenter = pipeline("image-segmentation", model=model, image_processor=processor, device="cpu")
    images, truths = list(test["image"]), [np.asarray(m, dtype=np.int64) for m in test["annotation"]]
    metrics = SegmentationMetrics(len(model.config.id2label), id2label=model.config.id2label)
    examples = []
    for image, truth, segments in zip(images, truths, segmenter(images, batch_size=32, subtask="semantic")):
        label_map = np.zeros(truth.shape, dtype=np.int64)
        for segment in segments:  # one binary mask per class present
            label_map[np.asarray(segment["mask"]) > 0] = model.config.label2id[segment["label"]]
        metrics.update(torch.from_numpy(label_map)[None], torch.from_numpy(truth)[None])
        examples.append((image, label_map, truth))
    return metrics.compute(), examples


def _plot_segmentations(examples: list, path: Path, count: int = 8) -> None:
    # true and predicted masks in `predict`'s colours, wrong pixels in red (demo_report)
    fig = segmentation_picture(examples, SHAPES_LABELS, "MobileViT-XXS DeepLabV3 on held-out shapes scenes (pipeline "
                               "output)", count)
    fig.savefig(path, dpi=80)


def _plot_digits(examples: list, path: Path, count: int = 24) -> None:
    # true and predicted labels, mistakes picked and framed in red (demo_report)
    fig = classification_picture(examples, "MobileViT-XXS on held-out digits (pipeline predictions)", count)
    fig.savefig(path, dpi=80)


def run_demo(output_dir: Path, overwrite: bool = False, seed: int = 0, bf16: bool = False) -> dict:
    """Run both tasks into a temporary folder, then move it to `output_dir`; returns the metrics. `bf16`:
    train in bfloat16 autocast (`TrainJob.bf16`)."""
    output_dir = check_output_dir(output_dir, "output_dir", error=TrainError)
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise OutputExistsError(f"output_dir: expected an empty or new folder, got {str(output_dir)!r} which holds "
                                f"files (pass --overwrite to replace it)")
    with claim_output(output_dir, "output_dir", replaces=True, error=TrainError):
        check_output_dir(output_dir, "output_dir", overwrite=overwrite, error=TrainError)  # again, under the claim
        return _run_demo(output_dir, overwrite, seed, bf16)


def _run_demo(output_dir: Path, overwrite: bool, seed: int, bf16: bool) -> dict:
    started = time.perf_counter()
    with staged_directory(output_dir, overwrite=overwrite, error=TrainError) as staging:
        summary, histories = {}, []
        print("== 1/2 image classification: scikit-learn digits, MobileViT-XXS from scratch ==", flush=True)
        digits = load_digits_dataset(seed=seed)
        result = train_and_save(TrainJob(data=digits, output_dir=staging / "classification", seed=seed, bf16=bf16,
                                         **RECIPES["classification"]))
        accuracy, digit_examples = _pipeline_classification(staging / "classification", digits["test"])
        summary["classification"] = {"accuracy": accuracy, "num_test_images": len(digits["test"]),
                                     "trainer_test": result.metrics["test"],
                                     "train_seconds": result.metrics["train_seconds"],
                                     "train_cpu_seconds": result.metrics["train_cpu_seconds"],
                                     "steps_by_threads": result.metrics["training"]["steps_by_threads"]}
        histories.append(("digits classification", result.metrics["history"], "accuracy"))
        _plot_digits(digit_examples, staging / "classification_predictions.png")

        print("== 2/2 semantic segmentation: shapes over real photos, MobileViT-XXS DeepLabV3 from scratch ==",
              flush=True)
        shapes = load_shapes_dataset(seed=seed, **SHAPES_SIZES)
        result = train_and_save(TrainJob(data=shapes, output_dir=staging / "segmentation", seed=seed, bf16=bf16,
                                         **RECIPES["segmentation"]))
        seg_metrics, seg_examples = _pipeline_segmentation(staging / "segmentation", shapes["test"])
        summary["segmentation"] = {**seg_metrics, "num_test_images": len(shapes["test"]),
                                   "trainer_test": result.metrics["test"],
                                   "train_seconds": result.metrics["train_seconds"],
                                   "train_cpu_seconds": result.metrics["train_cpu_seconds"],
                                   "steps_by_threads": result.metrics["training"]["steps_by_threads"]}
        histories.append(("shapes segmentation", result.metrics["history"], "mean_iou"))
        _plot_segmentations(seg_examples, staging / "segmentation_predictions.png")

        plot_histories(histories, staging / "training_history.png")
        write_example_images(staging / EXAMPLES_DIR, digits["test"], shapes["test"])
        summary["targets"] = {f"{task}.{name}": {"target": target, "value": summary[task][name],
                                                   "met": summary[task][name] >= target}
                              for task, (name, target) in TARGETS.items()}
        summary["total_seconds"] = round(time.perf_counter() - started, 1)
        summary["threads"] = torch.get_num_threads()
        summary["bf16"] = bf16
        (staging / "metrics.json").write_text(json_text(summary) + "\n")
    return summary


def run(args: argparse.Namespace) -> int:
    """`mobilevit demo`: a TrainError reaches `mobilevit.cli`, which prints it as one line."""
    threads = limits.usable_cpus() if args.threads is None else args.threads
    limits.check_threads("threads", threads, TrainError)
    limits.check_seed("seed", args.seed, TrainError)
    torch.set_num_threads(threads)
    summary = run_demo(Path(args.output_dir), args.overwrite, args.seed, bf16=args.bf16)
    print(f"\nDemo finished in {summary['total_seconds']:.0f} s; results in {args.output_dir}/")
    for key, entry in summary["targets"].items():
        print(f"  {key:<28} {entry['value']:.4f}  (target >= {entry['target']})  {'ok' if entry['met'] else 'MISSED'}")
    print("\n" + next_steps(args.output_dir))
    return 0 if all(entry["met"] for entry in summary["targets"].values()) else 1
