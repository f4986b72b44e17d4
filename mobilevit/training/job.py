"""One training run from data to a Hub-ready folder: what `mobilevit train` and `mobilevit demo` call.

    result = train_and_save(TrainJob(task="image-classification", data="my_images/", output_dir="out",
                                     model="apple/mobilevit-xx-small-local-copy", epochs=10))

Steps: check every argument (`validate_job`: the one place, before anything is read or written; a task's
recipe defaults are filled in first, so that its limits hold for the values the run uses) and every example
(`prepare_task_data`; detection: `prepare_detection_data`), the batch sizes against the data and the memory
first -> match the data's classes by name to a checkpoint resumed from -> tidy `<output_dir>.partial/`
(checkpoints of an earlier run: resumed, refused or replaced) -> build or load the model (new head for the new
label set; detection: `detection_job.build_detector`) -> `MobileViTTrainer` (checkpoints every epoch in
`<output_dir>.partial/`) -> evaluate on the test split (else validation) -> on rank 0, write config.json,
model.safetensors, preprocessor_config.json, README.md (model card), metrics.json and training_history.png
(detection: and predictions.png) into a temporary folder and move it into place whole. The output and its
checkpoint folder are claimed for the whole run (`file_utils.claim_output`): a second run into them is refused.

A killed run restarts from its last whole checkpoint with `resume=True`; checkpoints the kill cut off while
they were written are reported and removed (`checkpoints.py`). A rejected run writes nothing, so the
corrected command runs.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import set_seed

from .. import auto, limits
from ..errors import EXIT_INTERRUPTED, EXIT_TERMINATED, Interrupted, Terminated, UserError, require_cpp_compiler
from ..fast_training import keep_freed_memory
from ..file_utils import check_output_dir, claim_output, json_text, staged_directory
from ..hub import write_model_card
from ..image_processing_mobilevit import MobileViTImageProcessor
from ..tasks import CLASSIFICATION, OBJECT_DETECTION, SEGMENTATION, a_task, canonical_task
from ..thread_policy import POLICY
from . import detection_job
from .checkpoints import checkpoint_problem, scan_checkpoints
from .data import DataError, prepare_task_data
from .detection_data import collate_detection
from .history import epoch_history, plot_history
from .metrics import ClassificationMetrics, SegmentationMetrics
from .trainer import MobileViTTrainer, MultiScaleOptions
from .transforms import EvalTransform, TrainAugmentation

# The metric a task is judged by (model card, plot, checkpoint comparison); detection: COCO mAP@[.5:.95].
MAIN_METRIC = {CLASSIFICATION: "accuracy", SEGMENTATION: "mean_iou", OBJECT_DETECTION: "map"}
# ml-cvnets trains classification with the multi-scale sampler, segmentation (DeepLabV3 configs) and detection
# (SSDLite configs) with the fixed-size `batch_sampler` at 512x512 and 320x320; the defaults follow.
MULTI_SCALE_DEFAULT = {CLASSIFICATION: True, SEGMENTATION: False, OBJECT_DETECTION: False}
# AdamW's peak learning rate and weight decay where a run leaves them open (detection: `detection_job`)
LEARNING_RATE, WEIGHT_DECAY = 2e-3, 0.01


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
    learning_rate: float | None = None  # None: 2e-3; detection: ml-cvnets' 9e-4
    weight_decay: float | None = None  # None: 0.01; detection: ml-cvnets' (0.01 for v1, 0.05 for v2)
    warmup_ratio: float = 0.1
    image_size: int | None = None  # training crop; default: the config's image_size (detection: 320)
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
    bf16: bool = False  # the training forward under bfloat16 autocast (MobileViTTrainer); evaluation stays float32
    skip_bad_images: bool = False  # leave out (and report) examples that cannot be read, instead of stopping
    compile: bool = False  # torch.compile the model (Trainer's torch_compile): a graph per input shape
    compile_backend: str = "inductor"  # the torch.compile backend when `compile` (tests use "aot_eager")
    logging_steps: int = 10
    report_to: str = "none"
    callbacks: list = field(default_factory=list)  # extra `TrainerCallback`s


def _range(name, pair, low, high):
    """A (MIN, MAX) pair of finite numbers with low < MIN <= MAX <= high."""
    fits = isinstance(pair, (tuple, list)) and len(pair) == 2
    if fits:
        try:
            for value in pair:
                limits.check_number(name, value, low, high, above=True, error=TrainError)
        except TrainError:
            fits = False
    if not (fits and pair[0] <= pair[1]):
        raise TrainError(f"{name}: expected MIN,MAX of finite numbers with {low:g} < MIN <= MAX <= {high:g}, got "
                         f"{pair!r}", usage=True)


MAX_CROP_RATIO = 100.0  # aspect ratios of the random crop: wider than 100:1 leaves a crop of a pixel or two


def validate_job(job: TrainJob) -> TrainJob:
    """The one check of a run's arguments, before anything is read or written: every number within
    `mobilevit.limits`, the model folder, the data path, the output folder and its checkpoint folder, and a
    checkpoint to resume from. Returns the job with the task and variant spelled canonically and `output_dir`
    absolute. Data are checked next, by `prepare_task_data`, and the batch sizes against the data and the
    memory (`check_batch_sizes`)."""
    try:
        job.task = canonical_task(job.task, allowed=tuple(MAIN_METRIC))
        if job.model is None:
            job.variant = auto.resolve_variant(job.variant)[1]
    except ValueError as err:
        raise TrainError(str(err), usage=True) from None
    _fill_recipe_defaults(job)  # before the limits: they check the values the run will use
    limits.check_int("batch_size", job.batch_size, 1, error=TrainError)
    if job.eval_batch_size is not None:
        limits.check_int("eval_batch_size", job.eval_batch_size, 1, error=TrainError)
    limits.check_epochs("epochs", job.epochs, error=TrainError)
    limits.check_number("learning_rate", job.learning_rate, 0, above=True, error=TrainError)
    limits.check_number("weight_decay", job.weight_decay, 0, error=TrainError)
    limits.check_number("warmup_ratio", job.warmup_ratio, 0, 1, below=True, error=TrainError)
    limits.check_number("flip_prob", job.flip_prob, 0, 1, error=TrainError)
    limits.check_seed("seed", job.seed, error=TrainError)
    limits.check_processes("num_workers", job.num_workers, error=TrainError)
    if job.threads is not None:
        limits.check_threads("threads", job.threads, error=TrainError)
    if not isinstance(job.compile, bool):
        raise TrainError(f"compile: expected True or False, got {job.compile!r}", usage=True)
    if job.compile:
        _check_compile_backend(job.compile_backend)
    if not isinstance(job.bf16, bool):
        raise TrainError(f"bf16: expected True or False, got {job.bf16!r}", usage=True)
    _range("crop_scale", job.crop_scale, 0, 1)
    _range("crop_ratio", job.crop_ratio, 1 / MAX_CROP_RATIO - 1e-12, MAX_CROP_RATIO)
    if job.labels is not None and (not job.labels or not all(isinstance(n, str) and n for n in job.labels)):
        raise TrainError(f"labels: expected class names, got {job.labels!r}", usage=True)
    config = _check_model(job)
    minimum = getattr(auto.family_of(config).pretrained_class, "min_input_size", limits.MIN_IMAGE_SIDE)
    if job.image_size is not None:
        limits.check_image_side("image_size", job.image_size, TrainError, minimum)
    limits.check_image_side("image_size", _image_size(job, config), TrainError, minimum)
    if job.eval_resize is not None:
        limits.check_int("eval_resize", job.eval_resize, 1, limits.MAX_RESIZE_SIDE,
                         "8192 x 288/256, the evaluation recipe's resize before its crop", TrainError)
    if job.multi_scale_range is not None:
        low, high = job.multi_scale_range
        for side in (low, high):
            limits.check_image_side("multi_scale_range", side, TrainError, minimum)
        if low > high:
            raise TrainError(f"multi_scale_range: expected MIN,MAX with {minimum} <= MIN <= MAX, got {low},{high}",
                             usage=True)
    if isinstance(job.data, (str, Path)) and not Path(job.data).exists():
        raise DataError(f"data: expected an existing folder, got {str(job.data)!r} (does not exist)")
    job.output_dir = _check_output(job)
    return job


def _fill_recipe_defaults(job: TrainJob) -> None:
    """The learning rate, weight decay (and, for detection, image size) of the task's recipe where the job
    leaves them open."""
    if job.task == OBJECT_DETECTION and (job.model is None or Path(job.model).is_dir()):
        defaults = detection_job.recipe_defaults(job)
    else:
        defaults = {"learning_rate": LEARNING_RATE, "weight_decay": WEIGHT_DECAY}
    for name, value in defaults.items():
        if getattr(job, name) is None:
            setattr(job, name, value)


def _check_compile_backend(backend) -> None:
    from torch._dynamo import list_backends

    if backend not in list_backends(exclude_tags=()):  # the debugging backends too ("eager", "aot_eager")
        raise TrainError(f"compile_backend: expected a torch.compile backend such as "
                         f"{', '.join(list_backends())}, got {backend!r}", usage=True)
    if backend == "inductor" and not torch.cuda.is_available():
        require_cpp_compiler("compile")


def _image_size(job: TrainJob, config) -> int:
    """The training crop: --image-size, else the crop of the folder's processor (what the model was trained and is
    evaluated at), else the config's image_size."""
    if job.image_size is not None:
        return job.image_size
    if job.model is not None:
        processor = auto.load_image_processor(job.model, config)
        crop = processor.crop_size if processor.do_center_crop and processor.crop_size else None
        if crop and crop.get("height"):
            return int(crop["height"])
        if not processor.do_center_crop and processor.size and processor.size.get("height"):
            return int(processor.size["height"])  # a stretch to a fixed size (MobileViTv2 segmentation)
    return _as_int(config.image_size)


def check_batch_sizes(job: TrainJob, config, num_train: int, image_size: int) -> None:
    """A batch never exceeds the data (larger values are lowered to the training split's size, with a note), and
    the batches must fit in memory at the crop size, where training and evaluation run (`mobilevit.limits`)."""
    if job.batch_size > num_train:
        _note(f"batch_size: {job.batch_size} is more than the {num_train} training examples; batches of {num_train}")
        job.batch_size = num_train
    device = torch.device("cuda") if torch.cuda.is_available() else None
    weights = 4 * 4 * sum(p.numel() for p in _meta_model(config, job.task).parameters())  # + grads, Adam's m, v
    training = auto.memory_per_image(config, job.task, image_size, image_size, training=True)
    limits.check_fits_in_memory("batch_size", job.batch_size, training, f"training {_described(config)} at "
                                f"{image_size}x{image_size} keeps about", TrainError, device, fixed_bytes=weights)
    if job.eval_batch_size is not None:
        inference = auto.memory_per_image(config, job.task, image_size, image_size, training=False)
        limits.check_fits_in_memory("eval_batch_size", job.eval_batch_size, inference, f"evaluating "
                                    f"{_described(config)} at {image_size}x{image_size} takes about", TrainError,
                                    device)


def _described(config) -> str:
    return f"{auto.family_of(config).title} {getattr(config, 'variant', None) or 'custom'}"


def _meta_model(config, task):
    with torch.device("meta"):
        return auto.new_model(config, task)


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
    if job.task not in auto.family_of(config).tasks:
        raise TrainError(f"task: {auto.family_of(config).title} has no {job.task} model", usage=True)
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
    an unfinished run need `resume` or `overwrite`; a checkpoint to resume from must be whole. Rank 0 of several
    processes checks (and claims the output, `train_and_save`) for them all: the other ranks write nothing, and
    would take rank 0's claim for another run's."""
    if not _is_rank_zero():
        return Path(job.output_dir).expanduser().resolve()
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


def _resume_checkpoint(job: TrainJob, work_dir: Path) -> Path | None:
    """The checkpoint `_prepare_work_dir` will resume from (nothing changed here)."""
    if isinstance(job.resume, (str, Path)) and not isinstance(job.resume, bool):
        return Path(job.resume)
    if not job.resume:
        return None
    whole, _ = scan_checkpoints(work_dir / "checkpoints")
    return whole[-1] if whole else None


def _checkpoint_labels(checkpoint: Path, job: TrainJob, config) -> dict[int, str]:
    """The label set of the checkpoint to resume from, which must be a checkpoint of this run's family and task
    (the data's classes are matched to it by name next, so resuming after the class folders changed is an
    error, not a silent relabelling)."""
    try:
        saved = json.loads((checkpoint / "config.json").read_text())
    except (OSError, ValueError) as err:
        raise TrainError(f"resume: expected a checkpoint with a readable config.json, got {str(checkpoint)!r} "
                         f"({err})") from None
    shown = f"resume: the checkpoint {str(checkpoint)!r}"
    if saved.get("model_type") != config.model_type:
        raise TrainError(f"{shown} holds a model of type {saved.get('model_type')!r}; this run trains "
                         f"{config.model_type!r} ({_described(config)})")
    family = auto.family_of(config)
    tasks = {cls.__name__: task for task, cls in family.model_classes.items()}
    saved_tasks = {tasks.get(name) for name in saved.get("architectures") or []}
    if job.task not in saved_tasks:
        held = ", ".join(sorted(filter(None, saved_tasks))) or "headless"
        raise TrainError(f"{shown} holds {a_task(held)} model; this run trains {job.task}")
    try:
        return {int(key): str(name) for key, name in (saved.get("id2label") or {}).items()}
    except (TypeError, ValueError):
        raise TrainError(f"{shown} has an unreadable id2label") from None


def _check_checkpoint_shapes(checkpoint: Path, model) -> None:
    """The checkpoint's weights have this run's shapes (another variant, output stride or head is an error)."""
    from safetensors import safe_open

    weights = checkpoint / "model.safetensors"
    if not weights.is_file():
        return
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    with safe_open(str(weights), "pt") as stored:
        for key in stored.keys():
            shape = tuple(stored.get_slice(key).get_shape())
            if key in expected and expected[key] != shape:
                raise TrainError(f"resume: the checkpoint {str(checkpoint)!r} does not fit this run's model: {key} is "
                                 f"{list(shape)} there, {list(expected[key])} here (another variant or label count?)")
        missing = [key for key in expected if key not in set(stored.keys())]
    if missing:
        raise TrainError(f"resume: the checkpoint {str(checkpoint)!r} lacks {len(missing)} of this run's weights "
                         f"(e.g. {missing[0]}): it is another kind of model")


def work_dir_for(output_dir: Path) -> Path:
    """Where checkpoints live while training: next to the output, so a killed run leaves the output alone."""
    return output_dir.with_name(output_dir.name + ".partial")


def build_model(job: TrainJob, id2label: dict[int, str]):
    """A new `job.variant` model, or `job.model` loaded with a head for `id2label` (kept when `id2label` is the
    folder's own label set, made afresh otherwise, and said so in one line)."""
    labels = {"id2label": dict(id2label), "label2id": {v: k for k, v in id2label.items()}}
    if job.model is not None:
        config = auto.load_config(job.model)
        model = auto.load_model(job.model, job.task, new_head={**labels, **job.config_overrides})
        if model.new_tensors:
            before = f"{config.num_labels} classes" if _task_of_folder(job.model) == job.task else \
                f"a {_task_of_folder(job.model)} head"
            _note(f"model: the {job.task} head is new, for the data's {len(id2label)} classes (the folder's model "
                  f"has {before}); {len(model.new_tensors)} tensors start from fresh weights, the rest from "
                  f"{str(job.model)!r}")
        return model
    config = auto.new_config(job.variant, job.task, **labels, **job.config_overrides)
    return auto.new_model(config, job.task)


def _settle_problem_type(model, task: str) -> None:
    """Class indices as labels: say so before the first step. transformers' classification loss writes it into
    the config at its first call otherwise, and a compiled model then compiles its first graph again."""
    if task == CLASSIFICATION and model.config.problem_type is None:
        model.config.problem_type = "single_label_classification"


def _task_of_folder(folder) -> str | None:
    try:
        return auto.task_of(auto.load_config(folder), folder)
    except UserError:
        return None


def _folder_labels(job: TrainJob) -> dict[int, str] | None:
    """The label set of the folder fine-tuned from, when it holds a head of this run's task."""
    if job.model is None or _task_of_folder(job.model) != job.task:
        return None
    return dict(auto.load_config(job.model).id2label)


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
    # one run per output: the claim covers the output and its checkpoint folder until the run ends (rank 0 writes)
    claim = (claim_output([output_dir, work_dir], "output_dir", replaces=True, error=TrainError) if _is_rank_zero()
             else nullcontext())
    with claim:
        _check_output(job)  # again, now that no other run can change it
        try:
            return _train_and_save(job, output_dir, work_dir)
        except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM (`errors.Terminated`)
            kept = (f"; the checkpoints of finished epochs are in {str(work_dir)!r}: the same command with --resume "
                    "continues from the last one") if scan_checkpoints(work_dir / "checkpoints")[0] else ""
            how, code = (("terminated (SIGTERM)", EXIT_TERMINATED) if isinstance(stop, Terminated) else
                         ("interrupted (Ctrl-C)", EXIT_INTERRUPTED))
            raise Interrupted(f"{how}; {str(output_dir)!r} was not written{kept}", exit_code=code) from None
        finally:
            if _is_rank_zero():
                _remove_if_empty(work_dir)


def _remove_if_empty(work_dir: Path) -> None:
    """A checkpoint folder that holds no checkpoint (a run stopped before its first) is not left behind."""
    if work_dir.is_dir() and not any(p.is_file() for p in work_dir.rglob("*")):
        shutil.rmtree(work_dir, ignore_errors=True)


@dataclass
class _RunParts:
    """What a task brings to the common run: the model, its processor, the datasets and metrics, and the
    picture of held-out predictions written beside the curves (detection)."""

    model: object
    processor: object
    train_set: object
    val_set: object
    test_set: object | None
    compute_metrics: object
    train_metrics: object | None
    collator: object
    eval_resize: int | None
    picture: object | None = None  # picture(model, path): held-out predictions


def _classification_or_segmentation_parts(job: TrainJob, data, image_size: int) -> _RunParts:
    model = build_model(job, data.id2label)
    _settle_problem_type(model, job.task)
    family = auto.family_of(model)
    default_resize = image_size if job.task == SEGMENTATION else int(round(image_size * 288 / 256))
    eval_resize = job.eval_resize or default_resize
    model.config.image_size = image_size  # the config says what the saved processor feeds it
    processor = build_processor(image_size, eval_resize, family)
    augment = TrainAugmentation(image_size, job.crop_scale, job.crop_ratio, job.flip_prob)
    # pixels in the channel order the family's checkpoints were trained on (v1 BGR, v2 RGB)
    order = family.preprocessing.channel_order
    train_set = data.dataset("train", augment, order)
    eval_transform = EvalTransform(eval_resize, image_size)
    val_set = data.dataset("validation", eval_transform, order)
    test_set = data.dataset("test", eval_transform, order) if data.test is not None else None
    return _RunParts(model, processor, train_set, val_set, test_set, _metrics_for(job.task, data.id2label, family),
                     _metrics_for(job.task, data.id2label, family), None, eval_resize)


def _detection_parts(job: TrainJob, data, image_size: int) -> _RunParts:
    start = detection_job.build_detector(job, data, image_size)
    if start.note:
        _note(start.note)
    model = start.model
    processor = detection_job.detection_processor(model)
    train_set, val_set, test_set = detection_job.datasets_for(data, start, processor, image_size, job.flip_prob)
    held_out = data.test if data.test is not None else data.validation

    def picture(trained, path):
        detection_job.save_predictions_picture(
            trained, processor, held_out, start.model_ids, path,
            f"{auto.family_of(trained).title} {trained.config.variant or 'custom'} SSDLite on held-out images")

    return _RunParts(model, processor, train_set, val_set, test_set, detection_job.metrics_for(model, processor),
                     None, collate_detection, None, picture)


def _train_and_save(job: TrainJob, output_dir: Path, work_dir: Path) -> TrainResult:
    config = _check_model(job)
    image_size = _image_size(job, config)  # detection: the recipe's, filled in by `validate_job`
    detection = job.task == OBJECT_DETECTION
    # the batches are sized for the model that trains: for detection the SSDLite `build_detector` makes of `config`
    trained_config = detection_job.trained_config(job, config) if detection else config

    def check_sizes(num_train: int) -> None:  # before every example is read
        check_batch_sizes(job, trained_config, num_train, image_size)

    if detection:
        data = detection_job.load_data(job, check_size=check_sizes)
        _note(data.summary())
    else:
        data = prepare_task_data(job.data, job.task, labels=job.labels, seed=job.seed, skip_bad=job.skip_bad_images,
                                 check_size=check_sizes)
    if data.skipped:
        _note(f"data: left out {len(data.skipped)} examples that cannot be used (--skip-bad-images; listed in "
              "metrics.json under skipped_examples)")
    resume = _resume_checkpoint(job, work_dir)
    if resume is not None:  # the data's classes must be the checkpoint's, matched by name
        data.use_label_set(_checkpoint_labels(resume, job, config), f"the checkpoint {str(resume)!r}")
    elif not detection:  # (detection: `build_detector` matches the data's classes to a detector folder's by name)
        folder_labels = _folder_labels(job)
        if folder_labels is not None and sorted(folder_labels.values()) == sorted(data.id2label.values()):
            data.use_label_set(folder_labels, f"the model {str(job.model)!r}")  # the same classes: keep the head
    if job.threads is not None:
        torch.set_num_threads(job.threads)
    keep_freed_memory()  # a training step's large maps are reused, not page-faulted in again (fast_training.py)
    set_seed(job.seed)  # the new weights (and a new head) depend on the seed only, like Trainer's model_init
    parts = (_detection_parts if detection else _classification_or_segmentation_parts)(job, data, image_size)
    model, processor = parts.model, parts.processor
    if resume is not None:
        _check_checkpoint_shapes(resume, model)
    # nothing was written up to here; from here on this run owns the output's surroundings
    resume_from = _prepare_work_dir(job, work_dir)

    multi_scale = MULTI_SCALE_DEFAULT[job.task] if job.multi_scale is None else job.multi_scale
    low, high = job.multi_scale_range or (None, None)
    collator = {"data_collator": parts.collator} if parts.collator is not None else {}
    trainer = MobileViTTrainer(
        model=model, args=_training_arguments(job, work_dir / "checkpoints"), train_dataset=parts.train_set,
        eval_dataset=parts.val_set, compute_metrics=parts.compute_metrics, train_metrics=parts.train_metrics,
        callbacks=list(job.callbacks), multi_scale=MultiScaleOptions(enabled=multi_scale, min_size=low, max_size=high),
        bf16=job.bf16, error=TrainError, **collator)
    if job.compile:
        shapes = len(trainer.build_train_sampler(parts.train_set).table)
        _note(f"compile: the first step at each of the {shapes} training input size(s) compiles a graph "
              f"({job.compile_backend}; minutes each on a small CPU); evaluation runs uncompiled (the fast path)")
    started, cpu_started, steps_before = time.perf_counter(), time.process_time(), dict(POLICY.counts)
    trainer.train(resume_from_checkpoint=resume_from)
    train_seconds, train_cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started

    metrics = {"task": job.task, "main_metric": MAIN_METRIC[job.task],
               "validation": _strip(trainer.evaluate(parts.val_set, metric_key_prefix="eval"), "eval_")}
    if parts.test_set is not None:
        metrics["test"] = _strip(trainer.evaluate(parts.test_set, metric_key_prefix="test"), "test_")
    metrics["history"] = epoch_history(trainer.state.log_history)
    metrics["train_seconds"] = round(train_seconds, 1)
    metrics["train_cpu_seconds"] = round(train_cpu_seconds, 1)  # all threads; wall time x threads when idle
    metrics["training"] = {"epochs": job.epochs, "batch_size": job.batch_size, "learning_rate": job.learning_rate,
                           "weight_decay": job.weight_decay, "image_size": image_size, "multi_scale": multi_scale,
                           "seed": job.seed, "world_size": trainer.args.world_size, "compile": job.compile,
                           "base_model": str(job.model) if job.model else None,
                           "bf16": job.bf16, "threads": torch.get_num_threads(),
                           "steps_by_threads": _steps_by_threads(steps_before),
                           "variant": model.config.variant, "num_train_examples": len(parts.train_set)}
    if parts.eval_resize is not None:
        metrics["eval_resize"] = parts.eval_resize
    if detection:
        metrics["data"] = {"classes": data.categories, "fixed": asdict(data.fixes)}
    metrics["skipped_examples"] = [asdict(bad) for bad in data.skipped]
    if isinstance(job.data, (str, Path)):
        metrics["dataset"] = Path(job.data).name

    trainer.accelerator.wait_for_everyone()
    if trainer.is_world_process_zero():
        _write_output(model, processor, metrics, job, output_dir, work_dir, parts.picture)
    trainer.accelerator.wait_for_everyone()
    return TrainResult(output_dir, metrics, model, processor, trainer)


def _steps_by_threads(before: dict) -> dict[str, int]:
    """How many training steps of this run the thread policy ran on how many threads ({} where it stayed out:
    one thread asked for, or not on CPU)."""
    return {str(threads): count - before.get((unit, threads), 0) for (unit, threads), count in sorted(POLICY.counts.items())
            if unit == "training step" and count > before.get((unit, threads), 0)}


def _as_int(value) -> int:
    return int(value[0] if isinstance(value, (list, tuple)) else value)


def _strip(values: dict, prefix: str) -> dict:
    return {key[len(prefix):] if key.startswith(prefix) else key: value for key, value in values.items()
            if not key.endswith(("_runtime", "_samples_per_second", "_steps_per_second")) and key != "epoch"}


def _write_output(model, processor, metrics: dict, job: TrainJob, output_dir: Path, work_dir: Path,
                  picture=None) -> None:
    """Write the Hub folder into a temporary sibling, then swap it into place whole."""
    # an existing output_dir is only replaced with overwrite (checked before training, and again at the move)
    with staged_directory(output_dir, overwrite=job.overwrite, argument="output_dir", error=TrainError) as staging:
        with auto.quiet_transformers():
            model.save_pretrained(staging)
        processor.save_pretrained(staging)
        (staging / "metrics.json").write_text(json_text(metrics) + "\n")
        plot_history(metrics["history"], MAIN_METRIC[job.task], staging / "training_history.png",
                     title=f"{auto.family_of(model).title} {model.config.variant or 'custom'} {job.task}")
        if picture is not None:
            picture(model, staging / "predictions.png")
        _write_card(model, metrics, job, staging)
    if not job.keep_checkpoints:
        shutil.rmtree(work_dir, ignore_errors=True)


def _write_card(model, metrics: dict, job: TrainJob, folder: Path) -> None:
    split = "test" if "test" in metrics else "validation"
    shown = {f"{split} {name}": value for name, value in metrics[split].items()
             if isinstance(value, float) and math.isfinite(value) and not name.startswith("iou_")}
    training = metrics["training"]
    if job.task == OBJECT_DETECTION:
        how = (f"SSD augmentation (ml-cvnets' IoU-constrained crop, photometric changes, flip) at "
               f"{training['image_size']}x{training['image_size']}. The processor saved here stretches the whole "
               f"image to {training['image_size']}x{training['image_size']} and keeps the post-processing rule "
               f"(`detection_postprocessing`); mAP is COCO's (pycocotools). Predictions on held-out images: "
               f"`predictions.png`.")
    else:
        how = (f"{training['image_size']}x{training['image_size']} crops"
               f"{' with the multi-scale sampler' if training['multi_scale'] else ''}. The processor saved here "
               f"resizes the shortest edge to {metrics['eval_resize']} before the centre crop.")
    notes = (f"Trained with `mobilevit train` ({'fine-tuned from ' + str(job.model) if job.model else 'from scratch'}"
             f"): {training['epochs']} epochs on {training['num_train_examples']} images, batch size "
             f"{job.batch_size} x {training['world_size']} process(es), AdamW with peak learning rate "
             f"{job.learning_rate} on a cosine schedule{' (bfloat16 autocast)' if job.bf16 else ''}, {how} "
             f"Per-epoch curves: `training_history.png`; all numbers: `metrics.json`.")
    write_model_card(folder, task=job.task, variant=model.config.variant, num_parameters=model.num_parameters(),
                     image_size=training["image_size"], num_labels=len(model.config.id2label),
                     dataset=metrics.get("dataset"), metrics=shown, notes=notes)
