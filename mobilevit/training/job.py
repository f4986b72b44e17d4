"""One training run from data to a Hub-ready folder: what `mobilevit train` and `mobilevit demo` call.

    result = train_and_save(TrainJob(task="image-classification", data="my_images/", output_dir="out",
                                     model="apple/mobilevit-xx-small-local-copy", epochs=10))

Steps: check every argument and every example (errors before any training) -> build or load the model
(new head for the new label set) -> `MobileViTTrainer` (checkpoints every epoch in `<output_dir>.partial/`)
-> evaluate on the test split (else validation) -> on rank 0, write config.json, model.safetensors,
preprocessor_config.json, README.md (model card), metrics.json and training_history.png into a temporary
folder and move it into place whole. A killed run restarts from its last checkpoint with `resume=True`.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import set_seed

from .. import auto
from ..file_utils import staged_directory
from ..hub import write_model_card
from ..image_processing_mobilevit import MobileViTImageProcessor
from ..tasks import CLASSIFICATION, SEGMENTATION, canonical_task
from .data import MobileViTDataset, prepare_task_data
from .history import epoch_history, plot_history
from .metrics import ClassificationMetrics, SegmentationMetrics
from .trainer import MobileViTTrainer, MultiScaleOptions
from .transforms import EvalTransform, TrainAugmentation

# The metric a task is judged by (model card, plot, checkpoint comparison).
MAIN_METRIC = {CLASSIFICATION: "accuracy", SEGMENTATION: "mean_iou"}
# ml-cvnets trains classification with the multi-scale sampler and segmentation (DeepLabV3 configs) with the
# fixed-size `batch_sampler` at 512x512; the defaults follow.
MULTI_SCALE_DEFAULT = {CLASSIFICATION: True, SEGMENTATION: False}


class OutputExistsError(FileExistsError):
    """The output folder holds something and `overwrite` was not asked for."""


@dataclass
class TrainJob:
    """Everything a run needs. `data` is a folder (image folder tree or `save_to_disk`) or a `datasets`
    object; `model` a local checkpoint folder of any registered family to fine-tune (None: `variant`, a
    released size of any family, from scratch)."""

    task: str
    data: object
    output_dir: str | Path
    model: str | Path | None = None
    variant: str = "xx-small"
    epochs: float = 10
    batch_size: int = 32
    eval_batch_size: int | None = None
    learning_rate: float = 2e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    image_size: int | None = None  # training crop; default: the config's image_size
    eval_resize: int | None = None  # shortest edge before the centre crop at evaluation
    multi_scale: bool | None = None  # None: the task's default (MULTI_SCALE_DEFAULT)
    multi_scale_range: tuple[int, int] | None = None  # (min, max) resolution; None: 0.625x..1.25x image_size
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_prob: float = 0.5
    labels: list[str] | None = None
    config_overrides: dict = field(default_factory=dict)  # e.g. {"output_stride": 8} for a new model
    seed: int = 0
    resume: bool | str = False
    overwrite: bool = False
    keep_checkpoints: bool = False
    num_workers: int = 0
    logging_steps: int = 10
    report_to: str = "none"
    callbacks: list = field(default_factory=list)  # extra `TrainerCallback`s


def _positive(name, value, kind=(int,)):
    if isinstance(value, bool) or not isinstance(value, kind) or not value > 0:
        expected = "a positive integer" if kind == (int,) else "a positive number"
        raise ValueError(f"{name}: expected {expected}, got {value!r}")


def validate_job(job: TrainJob) -> TrainJob:
    """Check the arguments (not the data); returns the job with the task and variant spelled canonically."""
    job.task = canonical_task(job.task, allowed=tuple(MAIN_METRIC))
    job.variant = auto.resolve_variant(job.variant)[1]
    _positive("batch_size", job.batch_size)
    if job.eval_batch_size is not None:
        _positive("eval_batch_size", job.eval_batch_size)
    _positive("epochs", job.epochs, (int, float))
    _positive("learning_rate", job.learning_rate, (int, float))
    if job.image_size is not None:
        _positive("image_size", job.image_size)
    if job.eval_resize is not None:
        _positive("eval_resize", job.eval_resize)
    if not 0 <= job.warmup_ratio < 1:
        raise ValueError(f"warmup_ratio: expected a fraction in [0, 1), got {job.warmup_ratio!r}")
    if job.model is not None and not Path(job.model).is_dir():
        raise ValueError(f"model: expected a local checkpoint folder (config.json + model.safetensors), got "
                         f"{str(job.model)!r}, which is not a folder")
    return job


def _non_empty(path: Path) -> bool:
    return path.exists() and (not path.is_dir() or any(path.iterdir()))


def work_dir_for(output_dir: Path) -> Path:
    """Where checkpoints live while training: next to the output, so a killed run leaves the output alone."""
    return output_dir.with_name(output_dir.name + ".partial")


def build_model(job: TrainJob, id2label: dict[int, str]):
    """A new `job.variant` model, or `job.model` loaded with a head for `id2label`."""
    labels = {"id2label": dict(id2label), "label2id": {v: k for k, v in id2label.items()},
              "num_labels": len(id2label)}
    if job.model is not None:
        # a new label set gets a freshly initialised head; the backbone keeps its trained weights
        return auto.load_model(job.model, job.task, ignore_mismatched_sizes=True, **labels, **job.config_overrides)
    config = auto.new_config(job.variant, job.task, **labels, **job.config_overrides)
    return auto.new_model(config, job.task)


def build_processor(crop_size: int, resize: int, family) -> MobileViTImageProcessor:
    """The processor saved with the model: the same geometry as `EvalTransform(resize, crop_size)`, and the
    family's segmentation post-processing."""
    return MobileViTImageProcessor(do_resize=True, size={"shortest_edge": resize}, do_center_crop=True,
                                   crop_size={"height": crop_size, "width": crop_size}, do_flip_channel_order=True,
                                   logits_align_corners=family.segmentation_align_corners)


def _training_arguments(job: TrainJob, checkpoints: Path):
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(checkpoints), num_train_epochs=job.epochs, per_device_train_batch_size=job.batch_size,
        per_device_eval_batch_size=job.eval_batch_size or job.batch_size, learning_rate=job.learning_rate,
        weight_decay=job.weight_decay, lr_scheduler_type="cosine", warmup_steps=job.warmup_ratio,
        eval_strategy="epoch", save_strategy="epoch", save_total_limit=2, logging_strategy="steps",
        logging_steps=job.logging_steps, seed=job.seed, data_seed=job.seed, report_to=job.report_to,
        remove_unused_columns=False, batch_eval_metrics=True, dataloader_num_workers=job.num_workers,
        save_only_model=False, disable_tqdm=False, use_cpu=not torch.cuda.is_available(),
    )


def _metrics_for(task: str, id2label, family):
    if task == CLASSIFICATION:
        return ClassificationMetrics()
    return SegmentationMetrics(num_labels=len(id2label), id2label=id2label,
                               align_corners=family.segmentation_align_corners)


@dataclass
class TrainResult:
    output_dir: Path
    metrics: dict  # {"validation": {...}, "test": {...} (if a test split), "history": [...], ...}
    model: object
    processor: object
    trainer: MobileViTTrainer


def train_and_save(job: TrainJob) -> TrainResult:
    """Run `job` (see the module docstring); returns the trained model, its processor and the metrics."""
    job = validate_job(job)
    output_dir = Path(job.output_dir).expanduser().absolute()
    work_dir = work_dir_for(output_dir)
    if _non_empty(output_dir) and not job.overwrite:
        raise OutputExistsError(f"output_dir: expected an empty or new folder, got {str(output_dir)!r} which holds "
                                f"files (pass overwrite=True / --overwrite to replace it)")
    resume_from = _resume_checkpoint(job, work_dir)

    data = prepare_task_data(job.data, job.task, labels=job.labels, seed=job.seed)
    set_seed(job.seed)  # the new weights (and a new head) depend on the seed only, like Trainer's model_init
    model = build_model(job, data.id2label)
    family = auto.family_of(model)
    image_size = job.image_size or _as_int(model.config.image_size)
    default_resize = image_size if job.task == SEGMENTATION else int(round(image_size * 288 / 256))
    eval_resize = job.eval_resize or default_resize
    processor = build_processor(image_size, eval_resize, family)
    augment = TrainAugmentation(image_size, job.crop_scale, job.crop_ratio, job.flip_prob)
    train_set = MobileViTDataset(data.train, job.task, augment, data.image_column, data.label_column)
    eval_transform = EvalTransform(eval_resize, image_size)
    val_set = MobileViTDataset(data.validation, job.task, eval_transform, data.image_column, data.label_column)
    test_set = (MobileViTDataset(data.test, job.task, eval_transform, data.image_column, data.label_column)
                if data.test is not None else None)

    multi_scale = MULTI_SCALE_DEFAULT[job.task] if job.multi_scale is None else job.multi_scale
    low, high = job.multi_scale_range or (None, None)
    trainer = MobileViTTrainer(
        model=model, args=_training_arguments(job, work_dir / "checkpoints"), train_dataset=train_set,
        eval_dataset=val_set, compute_metrics=_metrics_for(job.task, data.id2label, family),
        train_metrics=_metrics_for(job.task, data.id2label, family), callbacks=list(job.callbacks),
        multi_scale=MultiScaleOptions(enabled=multi_scale, min_size=low, max_size=high))
    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=resume_from)
    train_seconds = time.perf_counter() - started

    metrics = {"task": job.task, "main_metric": MAIN_METRIC[job.task],
               "validation": _strip(trainer.evaluate(val_set, metric_key_prefix="eval"), "eval_")}
    if test_set is not None:
        metrics["test"] = _strip(trainer.evaluate(test_set, metric_key_prefix="test"), "test_")
    metrics["history"] = epoch_history(trainer.state.log_history)
    metrics["train_seconds"] = round(train_seconds, 1)
    metrics["training"] = {"epochs": job.epochs, "batch_size": job.batch_size, "learning_rate": job.learning_rate,
                           "image_size": image_size, "multi_scale": multi_scale, "seed": job.seed,
                           "world_size": trainer.args.world_size, "base_model": str(job.model) if job.model else None,
                           "variant": model.config.variant, "num_train_examples": len(train_set)}
    metrics["eval_resize"] = eval_resize
    if isinstance(job.data, (str, Path)):
        metrics["dataset"] = Path(job.data).name

    trainer.accelerator.wait_for_everyone()
    if trainer.is_world_process_zero():
        _write_output(model, processor, metrics, job, output_dir, work_dir)
    trainer.accelerator.wait_for_everyone()
    return TrainResult(output_dir, metrics, model, processor, trainer)


def _as_int(value) -> int:
    return int(value[0] if isinstance(value, (list, tuple)) else value)


def _strip(values: dict, prefix: str) -> dict:
    return {key[len(prefix):] if key.startswith(prefix) else key: value for key, value in values.items()
            if not key.endswith(("_runtime", "_samples_per_second", "_steps_per_second")) and key != "epoch"}


def _resume_checkpoint(job: TrainJob, work_dir: Path) -> str | None:
    """The checkpoint to resume from, or None; refuses to silently mix with a previous run's checkpoints."""
    from transformers.trainer_utils import get_last_checkpoint

    checkpoints = work_dir / "checkpoints"
    if isinstance(job.resume, (str, Path)) and not isinstance(job.resume, bool):
        if not Path(job.resume).is_dir():
            raise ValueError(f"resume: expected a checkpoint folder (checkpoint-<step>), got {str(job.resume)!r}")
        return str(job.resume)
    if job.resume:
        last = get_last_checkpoint(str(checkpoints)) if checkpoints.is_dir() else None
        if last is None:
            print(f"resume: no checkpoint in {checkpoints}, starting from the beginning")
        return last
    if _non_empty(work_dir):
        if not job.overwrite:
            raise OutputExistsError(f"output_dir: {str(work_dir)!r} holds checkpoints of an unfinished run; pass "
                                    f"resume=True / --resume to continue it or overwrite=True / --overwrite to "
                                    f"start again")
        if int(os.environ.get("RANK", "0")) == 0:
            shutil.rmtree(work_dir)
    return None


def _write_output(model, processor, metrics: dict, job: TrainJob, output_dir: Path, work_dir: Path) -> None:
    """Write the Hub folder into a temporary sibling, then swap it into place whole."""
    # an existing output_dir is only reached with overwrite (checked before training)
    with staged_directory(output_dir) as staging:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        (staging / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        plot_history(metrics["history"], MAIN_METRIC[job.task], staging / "training_history.png",
                     title=f"{auto.family_of(model).title} {model.config.variant or 'custom'} {job.task}")
        _write_card(model, metrics, job, staging)
    if not job.keep_checkpoints:
        shutil.rmtree(work_dir, ignore_errors=True)


def _write_card(model, metrics: dict, job: TrainJob, folder: Path) -> None:
    split = "test" if "test" in metrics else "validation"
    shown = {f"{split} {name}": value for name, value in metrics[split].items()
             if isinstance(value, float) and not name.startswith("iou_")}
    training = metrics["training"]
    notes = (f"Trained with `mobilevit train` ({'fine-tuned from ' + str(job.model) if job.model else 'from scratch'}"
             f"): {training['epochs']} epochs on {training['num_train_examples']} images, batch size "
             f"{job.batch_size} x {training['world_size']} process(es), AdamW with peak learning rate "
             f"{job.learning_rate} on a cosine schedule, {training['image_size']}x{training['image_size']} crops"
             f"{' with the multi-scale sampler' if training['multi_scale'] else ''}. The processor saved here "
             f"resizes the shortest edge to {metrics['eval_resize']} before the centre crop. Per-epoch curves: "
             f"`training_history.png`; all numbers: `metrics.json`.")
    write_model_card(folder, task=job.task, variant=model.config.variant, num_parameters=model.num_parameters(),
                     image_size=training["image_size"], num_labels=len(model.config.id2label),
                     dataset=metrics.get("dataset"), metrics=shown, notes=notes)
