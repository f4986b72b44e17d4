"""`mobilevit demo`: train MobileViT-XXS on the two embedded data sets and walk the whole path a user walks.

For each task: train with `Trainer` (from scratch, CPU) -> evaluate -> save a Hub-ready folder ->
`from_pretrained` it back -> predict the held-out test images with a transformers `pipeline` -> score those
predictions. Everything lands in `--output-dir`:

    classification/   digits model folder (config, weights, processor, model card, metrics, curves)
    segmentation/     shapes model folder (same)
    metrics.json      {"classification": {"accuracy": ...}, "segmentation": {"mean_iou": ...}, ...}
    training_history.png       loss and metric per epoch, train and eval, both tasks
    segmentation_predictions.png   predicted masks over held-out images, next to the true masks
    classification_predictions.png held-out digits with their predicted labels

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
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default: 1, safe on a shared machine: on a busy 2-core one, 2 "
                             "threads trained 20-30x slower than 1)")


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


PALETTE = np.array([[0, 0, 0], [230, 25, 75], [60, 180, 75], [0, 130, 200]], dtype=np.float32)


def _plot_segmentations(examples: list, path: Path, count: int = 8) -> None:
    # a pyplot-free Figure: no global backend switch, so a notebook's inline plots keep working
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    fig = Figure(figsize=(2 * count, 6.4))
    axes = fig.subplots(3, count)
    for column, (image, predicted, truth) in enumerate(examples[:count]):
        pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
        for row, (title, labels) in enumerate((("image", None), ("predicted", predicted), ("true", truth))):
            shown = pixels if labels is None else np.where(
                (labels > 0)[..., None], 0.45 * pixels + 0.55 * PALETTE[np.clip(labels, 0, len(PALETTE) - 1)], pixels)
            axes[row, column].imshow(shown.astype(np.uint8))
            axes[row, column].set_axis_off()
            if column == 0:
                axes[row, column].set_title(title, loc="left", fontsize=10)
    handles = [Patch(color=PALETTE[i] / 255, label=name)
               for i, name in enumerate(SHAPES_LABELS) if i]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles))
    fig.suptitle("MobileViT-XXS DeepLabV3 on held-out shapes scenes (pipeline output)")
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path, dpi=80)


def _plot_digits(examples: list, path: Path, count: int = 24) -> None:
    # a pyplot-free Figure: no global backend switch, so a notebook's inline plots keep working
    from matplotlib.figure import Figure

    fig = Figure(figsize=(count // 3 * 1.2, 4.2))
    axes = fig.subplots(3, count // 3)
    for ax, (image, predicted, truth) in zip(axes.flat, examples[:count]):
        ax.imshow(np.asarray(image.convert("L")), cmap="gray")
        ax.set_title(f"{predicted}" + ("" if predicted == truth else f" (true {truth})"),
                     color="black" if predicted == truth else "red", fontsize=9)
        ax.set_axis_off()
    fig.suptitle("MobileViT-XXS on held-out digits (pipeline predictions)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def run_demo(output_dir: Path, overwrite: bool = False, seed: int = 0) -> dict:
    """Run both tasks into a temporary folder, then move it to `output_dir`; returns the metrics."""
    output_dir = check_output_dir(output_dir, "output_dir", error=TrainError)
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise OutputExistsError(f"output_dir: expected an empty or new folder, got {str(output_dir)!r} which holds "
                                f"files (pass --overwrite to replace it)")
    with claim_output(output_dir, "output_dir", replaces=True, error=TrainError):
        check_output_dir(output_dir, "output_dir", overwrite=overwrite, error=TrainError)  # again, under the claim
        return _run_demo(output_dir, overwrite, seed)


def _run_demo(output_dir: Path, overwrite: bool, seed: int) -> dict:
    started = time.perf_counter()
    with staged_directory(output_dir, overwrite=overwrite, error=TrainError) as staging:
        summary, histories = {}, []
        print("== 1/2 image classification: scikit-learn digits, MobileViT-XXS from scratch ==", flush=True)
        digits = load_digits_dataset(seed=seed)
        result = train_and_save(TrainJob(data=digits, output_dir=staging / "classification", seed=seed,
                                         **RECIPES["classification"]))
        accuracy, digit_examples = _pipeline_classification(staging / "classification", digits["test"])
        summary["classification"] = {"accuracy": accuracy, "num_test_images": len(digits["test"]),
                                     "trainer_test": result.metrics["test"],
                                     "train_seconds": result.metrics["train_seconds"]}
        histories.append(("digits classification", result.metrics["history"], "accuracy"))
        _plot_digits(digit_examples, staging / "classification_predictions.png")

        print("== 2/2 semantic segmentation: shapes over real photos, MobileViT-XXS DeepLabV3 from scratch ==",
              flush=True)
        shapes = load_shapes_dataset(seed=seed, **SHAPES_SIZES)
        result = train_and_save(TrainJob(data=shapes, output_dir=staging / "segmentation", seed=seed,
                                         **RECIPES["segmentation"]))
        seg_metrics, seg_examples = _pipeline_segmentation(staging / "segmentation", shapes["test"])
        summary["segmentation"] = {**seg_metrics, "num_test_images": len(shapes["test"]),
                                   "trainer_test": result.metrics["test"],
                                   "train_seconds": result.metrics["train_seconds"]}
        histories.append(("shapes segmentation", result.metrics["history"], "mean_iou"))
        _plot_segmentations(seg_examples, staging / "segmentation_predictions.png")

        plot_histories(histories, staging / "training_history.png")
        summary["targets"] = {f"{task}.{name}": {"target": target, "value": summary[task][name],
                                                   "met": summary[task][name] >= target}
                              for task, (name, target) in TARGETS.items()}
        summary["total_seconds"] = round(time.perf_counter() - started, 1)
        summary["threads"] = torch.get_num_threads()
        (staging / "metrics.json").write_text(json_text(summary) + "\n")
    return summary


def run(args: argparse.Namespace) -> int:
    """`mobilevit demo`: a TrainError reaches `mobilevit.cli`, which prints it as one line."""
    limits.check_threads("threads", args.threads, TrainError)
    limits.check_seed("seed", args.seed, TrainError)
    torch.set_num_threads(args.threads)
    summary = run_demo(Path(args.output_dir), args.overwrite, args.seed)
    print(f"\nDemo finished in {summary['total_seconds']:.0f} s; results in {args.output_dir}/")
    for key, entry in summary["targets"].items():
        print(f"  {key:<28} {entry['value']:.4f}  (target >= {entry['target']})  {'ok' if entry['met'] else 'MISSED'}")
    return 0 if all(entry["met"] for entry in summary["targets"].values()) else 1
