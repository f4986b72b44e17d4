"""One training run from data to a Hub-ready folder: what `mobilevit train` and `mobilevit demo` call.

    result = train_and_save(TrainJob(task="image-classification", data="my_images/", output_dir="out",
                                     model="apple/mobilevit-xx-small-local-copy", epochs=10))

Steps: check every argument (`validate_job`: the one place, before anything is read or written) and every
example (`prepare_task_data`) -> tidy `<output_dir>.partial/` (checkpoints of an earlier run: resumed,
refused or replaced) -> build or load the model (new head for the new label set) -> `MobileViTTrainer`
(checkpoints every epoch in `<output_dir>.partial/`) -> evaluate on the test split (else validation) -> on
rank 0, write config.json, model.safetensors, preprocessor_config.json, README.md (model card), metrics.json
and training_history.png into a temporary folder and move it into place whole.

A killed run restarts from its last whole checkpoint with `resume=True`; checkpoints the kill cut off while
they were written are reported and removed (`checkpoints.py`). A rejected run writes nothing, so the
corrected command runs.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import set_seed

from .. import auto
from ..errors import UserError, require_cpp_compiler
from ..file_utils import check_output_dir, remove_abandoned_leftovers, staged_directory
from ..hub import write_model_card
from ..image_processing_mobilevit import MobileViTImageProcessor
from ..tasks import CLASSIFICATION, SEGMENTATION, canonical_task
from .checkpoints import checkpoint_problem, scan_checkpoints
from .data import DataError, MobileViTDataset, prepare_task_data
from .history import epoch_history, plot_history
from .metrics import ClassificationMetrics, SegmentationMetrics
from .trainer import MobileViTTrainer, MultiScaleOptions
from .transforms import EvalTransform, TrainAugmentation

# The metric a task is judged by (model card, plot, checkpoint comparison).
MAIN_METRIC = {CLASSIFICATION: "accuracy", SEGMENTATION: "mean_iou"}
# ml-cvnets trains classification with the multi-scale sampler and segmentation (DeepLabV3 configs) with the
# fixed-size `batch_sampler` at 512x512; the defaults follow.
MULTI_SCALE_DEFAULT = {CLASSIFICATION: True, SEGMENTATION: False}


class TrainError(UserError):
    """An argument of `train` / `demo` that cannot be used; the message names it, what was expected and what came."""


class OutputExistsError(TrainError, FileExistsError):
    """The output folder (or its checkpoint folder) holds something and `overwrite` was not asked for."""


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
    threads: int | None = None  # torch CPU threads for this process (None: leave torch's setting)
    skip_bad_images: bool = False  # leave out (and report) examples that cannot be read, instead of stopping
    compile: bool = False  # torch.compile the model (Trainer's torch_compile): a graph per input shape
    compile_backend: str = "inductor"  # the torch.compile backend when `compile` (tests use "aot_eager")
    logging_steps: int = 10
    report_to: str = "none"
    callbacks: list = field(default_factory=list)  # extra `TrainerCallback`s


def _positive(name, value, kind=(int,)):
    if isinstance(value, bool) or not isinstance(value, kind) or not value > 0:
        expected = "a positive integer" if kind == (int,) else "a positive number"
        raise TrainError(f"{name}: expected {expected}, got {value!r}", usage=True)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _fraction(name, value):
    if not _is_number(value) or not 0 <= value < 1:
        raise TrainError(f"{name}: expected a fraction in [0, 1), got {value!r}", usage=True)


def _range(name, pair, upper=None):
    """A (MIN, MAX) pair with 0 < MIN <= MAX (<= upper)."""
    fits = isinstance(pair, (tuple, list)) and len(pair) == 2 and all(map(_is_number, pair))
    if not (fits and 0 < pair[0] <= pair[1] and (upper is None or pair[1] <= upper)):
        bound = f" <= {upper}" if upper is not None else ""
        raise TrainError(f"{name}: expected MIN,MAX with 0 < MIN <= MAX{bound}, got {pair!r}", usage=True)


def validate_job(job: TrainJob) -> TrainJob:
    """The one check of a run's arguments, before anything is read or written: values, the model folder, the
    data path, the output folder and its checkpoint folder, and a checkpoint to resume from. Returns the job
    with the task and variant spelled canonically and `output_dir` absolute. Data are checked next, by
    `prepare_task_data`."""
    try:
        job.task = canonical_task(job.task, allowed=tuple(MAIN_METRIC))
        if job.model is None:
            job.variant = auto.resolve_variant(job.variant)[1]
    except ValueError as err:
        raise TrainError(str(err), usage=True) from None
    for name in ("batch_size", "epochs", "learning_rate"):
        _positive(name, getattr(job, name), (int,) if name == "batch_size" else (int, float))
    for name in ("eval_batch_size", "image_size", "eval_resize", "threads"):
        if getattr(job, name) is not None:
            _positive(name, getattr(job, name))
    if not (_is_number(job.num_workers) and isinstance(job.num_workers, int) and job.num_workers >= 0):
        raise TrainError(f"num_workers: expected an integer >= 0, got {job.num_workers!r}", usage=True)
    if not isinstance(job.compile, bool):
        raise TrainError(f"compile: expected True or False, got {job.compile!r}", usage=True)
    if job.compile:
        _check_compile_backend(job.compile_backend)
    if not (_is_number(job.weight_decay) and job.weight_decay >= 0):
        raise TrainError(f"weight_decay: expected a number >= 0, got {job.weight_decay!r}", usage=True)
    _fraction("warmup_ratio", job.warmup_ratio)
    _range("crop_scale", job.crop_scale, upper=1)
    _range("crop_ratio", job.crop_ratio)
    if not _is_number(job.flip_prob) or not 0 <= job.flip_prob <= 1:
        raise TrainError(f"flip_prob: expected a probability in [0, 1], got {job.flip_prob!r}", usage=True)
    if job.labels is not None and (not job.labels or not all(isinstance(n, str) and n for n in job.labels)):
        raise TrainError(f"labels: expected class names, got {job.labels!r}", usage=True)
    config = _check_model(job)
    minimum = getattr(auto.family_of(config).pretrained_class, "min_input_size", 32)
    image_size = job.image_size or _as_int(config.image_size)
    if image_size < minimum:
        raise TrainError(f"image_size: expected at least {minimum} (the network downsamples {minimum}x), got "
                         f"{image_size}", usage=True)
    if job.multi_scale_range is not None:
        low, high = job.multi_scale_range
        if not (isinstance(low, int) and isinstance(high, int) and minimum <= low <= high):
            raise TrainError(f"multi_scale_range: expected MIN,MAX with {minimum} <= MIN <= MAX, got "
                             f"{low},{high}", usage=True)
    if isinstance(job.data, (str, Path)) and not Path(job.data).exists():
        raise DataError(f"data: expected an existing folder, got {str(job.data)!r} (does not exist)")
    job.output_dir = _check_output(job)
    return job


def _check_compile_backend(backend) -> None:
    from torch._dynamo import list_backends

    if backend not in list_backends(exclude_tags=()):  # the debugging backends too ("eager", "aot_eager")
        raise TrainError(f"compile_backend: expected a torch.compile backend such as "
                         f"{', '.join(list_backends())}, got {backend!r}", usage=True)
    if backend == "inductor" and not torch.cuda.is_available():
        require_cpp_compiler("compile")


def _check_model(job: TrainJob):
    """The config the run starts from (a folder's, or the variant's), with the run's overrides applied."""
    if job.model is None:
        try:
            return auto.new_config(job.variant, job.task, **job.config_overrides)
        except (ValueError, TypeError) as err:
            raise TrainError(str(err), usage=True) from None
    if not Path(job.model).is_dir():
        raise TrainError(f"model: expected a local checkpoint folder (config.json + model.safetensors), got "
                         f"{str(job.model)!r}, which is {'a file' if Path(job.model).exists() else 'not there'}")
    config = auto.load_config(job.model)
    try:
        return type(config).from_dict({**config.to_dict(), **job.config_overrides})
    except (ValueError, TypeError) as err:
        raise TrainError(str(err), usage=True) from None


def _inputs(job: TrainJob) -> list[tuple[str, Path]]:
    """What the run reads that an output could overwrite (a checkpoint to resume from is read before anything
    is written, and usually lives in the checkpoint folder)."""
    inputs = [("data", job.data)] if isinstance(job.data, (str, Path)) else []
    return inputs + ([("model", job.model)] if job.model is not None else [])


def _check_output(job: TrainJob) -> Path:
    """The output folder and its checkpoint folder `<output_dir>.partial`: never an input, inside one or around
    one (--overwrite would delete it), not a file; an output holding files needs `overwrite`; checkpoints of
    an unfinished run need `resume` or `overwrite`; a checkpoint to resume from must be whole."""
    output_dir = check_output_dir(job.output_dir, "output_dir", _inputs(job), error=TrainError)
    work_dir = work_dir_for(output_dir)
    check_output_dir(work_dir, "output_dir (its checkpoint folder)", _inputs(job), error=TrainError)
    if output_dir.is_dir() and any(output_dir.iterdir()) and not job.overwrite:
        raise OutputExistsError(f"output_dir: expected an empty or new folder, got {str(output_dir)!r} which holds "
                                f"files (pass overwrite=True / --overwrite to replace it)")
    if isinstance(job.resume, (str, Path)) and not isinstance(job.resume, bool):
        problem = checkpoint_problem(job.resume)
        if problem:
            raise TrainError(f"resume: expected a whole checkpoint folder (checkpoint-<step>), got "
                             f"{str(job.resume)!r}: {problem}")
    elif not job.resume and not job.overwrite:
        whole, _ = scan_checkpoints(work_dir / "checkpoints")
        if whole:
            raise OutputExistsError(f"output_dir: {str(work_dir)!r} holds checkpoints of an unfinished run "
                                    f"({whole[-1].name}); pass resume=True / --resume to continue it or "
                                    f"overwrite=True / --overwrite to start again")
    foreign = sorted(p.name for p in work_dir.iterdir() if p.name != "checkpoints") if work_dir.is_dir() else []
    if foreign:
        raise OutputExistsError(f"output_dir: its checkpoint folder {str(work_dir)!r} holds files this tool did not "
                                f"write ({', '.join(foreign[:3])}); move them away")
    return output_dir


def _is_rank_zero() -> bool:
    """Whether this process writes (the only process, or rank 0 of several)."""
    return int(os.environ.get("RANK", "0")) == 0


def _note(message: str) -> None:
    if _is_rank_zero():
        print(f"mobilevit train: {message}", file=sys.stderr, flush=True)


def _prepare_work_dir(job: TrainJob, work_dir: Path) -> str | None:
    """The checkpoint to resume from, or None for a fresh start, with `work_dir` made ready: checkpoints a kill
    cut off are reported and removed; without `resume`, an earlier run's folder is removed (checked in
    `_check_output`: only ever our own checkpoints, and whole ones only with `overwrite`)."""
    if isinstance(job.resume, (str, Path)) and not isinstance(job.resume, bool):
        return str(job.resume)
    checkpoints = work_dir / "checkpoints"
    whole, incomplete = scan_checkpoints(checkpoints)
    if not job.resume:
        if work_dir.exists() and _is_rank_zero():
            shutil.rmtree(work_dir)
        return None
    for path, problem in incomplete:
        _note(f"resume: skipping {path.name}, incomplete ({problem}; cut off while it was written?); removed")
        if _is_rank_zero():
            shutil.rmtree(path, ignore_errors=True)
    if not whole:
        _note(f"resume: no whole checkpoint in {checkpoints}, starting from the beginning")
        return None
    _note(f"resume: continuing from {whole[-1].name}")
    return str(whole[-1])


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


def _settle_problem_type(model, task: str) -> None:
    """Class indices as labels: say so before the first step. transformers' classification loss writes it into
    the config at its first call otherwise, and a compiled model then compiles its first graph again."""
    if task == CLASSIFICATION and model.config.problem_type is None:
        model.config.problem_type = "single_label_classification"


def build_processor(crop_size: int, resize: int, family) -> MobileViTImageProcessor:
    """The processor saved with the model: the same geometry as `EvalTransform(resize, crop_size)`, the family's
    channel order (the one training fed) and resampling, and its segmentation post-processing."""
    return MobileViTImageProcessor(do_resize=True, size={"shortest_edge": resize}, do_center_crop=True,
                                   crop_size={"height": crop_size, "width": crop_size},
                                   logits_align_corners=family.segmentation_align_corners,
                                   **family.preprocessing.pixel_settings)


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
        torch_compile=job.compile, torch_compile_backend=job.compile_backend if job.compile else None,
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
    output_dir = job.output_dir
    work_dir = work_dir_for(output_dir)
    data = prepare_task_data(job.data, job.task, labels=job.labels, seed=job.seed, skip_bad=job.skip_bad_images)
    if data.skipped:
        _note(f"data: left out {len(data.skipped)} examples that cannot be used (--skip-bad-images; listed in "
              "metrics.json under skipped_examples)")
    # nothing was written up to here; from here on this run owns the output's surroundings
    resume_from = _prepare_work_dir(job, work_dir)
    if _is_rank_zero():
        remove_abandoned_leftovers(output_dir)
    if job.threads is not None:
        torch.set_num_threads(job.threads)
    set_seed(job.seed)  # the new weights (and a new head) depend on the seed only, like Trainer's model_init
    model = build_model(job, data.id2label)
    _settle_problem_type(model, job.task)
    family = auto.family_of(model)
    image_size = job.image_size or _as_int(model.config.image_size)
    default_resize = image_size if job.task == SEGMENTATION else int(round(image_size * 288 / 256))
    eval_resize = job.eval_resize or default_resize
    processor = build_processor(image_size, eval_resize, family)
    augment = TrainAugmentation(image_size, job.crop_scale, job.crop_ratio, job.flip_prob)
    # pixels in the channel order the family's checkpoints were trained on (v1 BGR, v2 RGB)
    columns = dict(image_column=data.image_column, label_column=data.label_column,
                   channel_order=family.preprocessing.channel_order)
    train_set = MobileViTDataset(data.train, job.task, augment, **columns)
    eval_transform = EvalTransform(eval_resize, image_size)
    val_set = MobileViTDataset(data.validation, job.task, eval_transform, **columns)
    test_set = MobileViTDataset(data.test, job.task, eval_transform, **columns) if data.test is not None else None

    multi_scale = MULTI_SCALE_DEFAULT[job.task] if job.multi_scale is None else job.multi_scale
    low, high = job.multi_scale_range or (None, None)
    trainer = MobileViTTrainer(
        model=model, args=_training_arguments(job, work_dir / "checkpoints"), train_dataset=train_set,
        eval_dataset=val_set, compute_metrics=_metrics_for(job.task, data.id2label, family),
        train_metrics=_metrics_for(job.task, data.id2label, family), callbacks=list(job.callbacks),
        multi_scale=MultiScaleOptions(enabled=multi_scale, min_size=low, max_size=high))
    if job.compile:
        shapes = len(trainer.build_train_sampler(train_set).table)
        _note(f"compile: the first step at each of the {shapes} training input size(s) compiles a graph "
              f"({job.compile_backend}; minutes each on a small CPU); evaluation runs uncompiled (the fast path)")
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
                           "world_size": trainer.args.world_size, "compile": job.compile, "base_model": str(job.model) if job.model else None,
                           "variant": model.config.variant, "num_train_examples": len(train_set)}
    metrics["eval_resize"] = eval_resize
    metrics["skipped_examples"] = [asdict(bad) for bad in data.skipped]
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
