"""`MobileViTTrainer`: `transformers.Trainer` with the multi-scale sampler and per-epoch training metrics.

Two speed settings: on CPU each training step (forward and backward) runs under the thread policy
(`mobilevit/thread_policy.py`: every thread torch was given while the machine is idle, one while other
processes hold the CPUs), and `bf16=True` runs the training forward under bfloat16 autocast (CPU and CUDA;
evaluation stays float32, as the saved model runs). Everything else (optimizer, schedule, checkpoints, resume,
DDP via torchrun / accelerate, progress bars) is stock Trainer, with two guards: a loss or weight that stops
being finite ends training at once with a one-line error naming the step (stock Trainer logs the average of
earlier losses instead and trains on, saving NaN weights), and DataLoader worker processes end with the main
process, however it ends (Linux: the parent-death signal), rather than lingering. With
`TrainingArguments(torch_compile=True)` the model is compiled once per input shape (see `compiled_per_shape`):
one graph per resolution of the sampler's table. (Trainer evaluates `trainer.model`, the module itself, during
and after `train()`: evaluation runs uncompiled, on the eval fast path.) The sampler is a plug-in:
with a `MobileViTDataset` (or a detection `DetectionDataset`) as training set, batches come from
`MultiScaleBatchSampler` (multi-scale or fixed size); any other training set falls back to Trainer's own
loader. For detectors, evaluation hands `compute_metrics` only the logits and the decoded boxes
(`DETECTION_IGNORED_KEYS` leaves the rest out), which the COCO metric post-processes, and their labels (one dict
of boxes per image) are gathered across processes as objects. And `MultiScaleBatchSampler` + `MobileViTDataset`
also work with a plain `DataLoader`:

    loader = DataLoader(dataset, batch_sampler=MultiScaleBatchSampler(len(dataset), 32, 256), collate_fn=collate)
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
from dataclasses import dataclass
from functools import partial

import torch
from torch.utils.data import DataLoader
from transformers import Trainer, TrainerCallback

from ..errors import UserError
from ..thread_policy import POLICY
from .data import MobileViTDataset, collate
from .sampler import MultiScaleBatchSampler

# what a detector's evaluation keeps of its outputs: logits and pred_boxes (the loss parts, raw regressions and
# feature maps are left out; `loss_dict` holds an int, which Trainer could not gather)
DETECTION_IGNORED_KEYS = ["loss_dict", "box_regression", "feature_maps", "hidden_states"]

_PR_SET_PDEATHSIG = 1


def _end_with_parent(parent: int, then, worker_id: int) -> None:
    """A DataLoader worker's first step: the kernel kills it when the process that started it ends (Linux)."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):
            pass
        if os.getppid() != parent:  # the main process ended before the signal was set
            os._exit(0)
    if then is not None:
        then(worker_id)


def end_workers_with_parent(loader: DataLoader) -> DataLoader:
    """`loader`'s worker processes end with this process (see `_end_with_parent`)."""
    if loader.num_workers > 0 and getattr(loader.worker_init_fn, "func", None) is not _end_with_parent:
        loader.worker_init_fn = partial(_end_with_parent, os.getpid(), loader.worker_init_fn)
    return loader


class TrainingDiverged(UserError):
    """The loss or a weight stopped being finite: the model cannot learn from here."""


@dataclass
class MultiScaleOptions:
    """The sampler's table (see `multiscale_batch_table`); `enabled=False` trains at the base size only."""

    enabled: bool = True
    min_size: int | None = None
    max_size: int | None = None
    num_scales: int = 5
    divisor: int = 32


# Graphs a compiled run may need besides the training shapes: evaluation batches (full and last partial, validation
# and test split) where Trainer compiles for an evaluation called without training, and one to spare.
EVAL_GRAPHS = 5


def compiled_per_shape(training_shapes: int):
    """Dynamo settings for a compiled run: a graph per input shape (`automatic_dynamic_shapes=False`), and room
    for them all (`recompile_limit`, 8 by default, after which Dynamo quietly runs the model uncompiled).

    Why not one graph for every shape: after the first change of input size Dynamo recompiles with symbolic
    sizes, and Inductor (torch 2.13) then fails on the backward pass of MobileViT and MobileViTv2 alike (stock
    transformers too), ordering the strides of a view it saves ("cannot determine truth value of Relational",
    pytorch/pytorch#172204). The multi-scale sampler has a handful of shapes, so each gets its own graph."""
    from torch._dynamo import config

    needed = training_shapes + EVAL_GRAPHS
    return config.patch(automatic_dynamic_shapes=False, recompile_limit=max(config.recompile_limit, needed))


class _EpochAwareLoader(DataLoader):
    """A DataLoader whose `set_epoch` reaches its batch sampler (Trainer calls it on the loader)."""

    def set_epoch(self, epoch: int) -> None:
        self.batch_sampler.set_epoch(epoch)


class _FiniteWeightsCallback(TrainerCallback):
    """After each optimizer step, every weight must still be finite."""

    def __init__(self, trainer: "MobileViTTrainer"):
        self.trainer = trainer

    def on_step_end(self, args, state, control, model=None, **kwargs):
        model = model if model is not None else self.trainer.model
        for name, parameter in model.named_parameters():
            if not bool(torch.isfinite(parameter).all()):
                self.trainer.diverged(f"the weight {name} became NaN or infinite at step {state.global_step}")


class _TrainMetricsCallback(TrainerCallback):
    """Logs the mean training loss and the training metric of each epoch (over the augmented batches)."""

    def __init__(self, trainer: "MobileViTTrainer"):
        self.trainer = trainer

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.trainer._reset_train_tracking()

    def on_epoch_end(self, args, state, control, **kwargs):
        logs = self.trainer._train_epoch_logs()
        if logs:
            self.trainer.log(logs)


class MobileViTTrainer(Trainer):
    """`Trainer` plus the multi-scale sampler and per-epoch training metrics.

    Args (beyond Trainer's):
        multi_scale: `MultiScaleOptions`, True (paper defaults) or False/None (fixed size, still with
            per-example seeded augmentation, so resumed runs repeat exactly).
        train_metrics: an object with `update(logits, labels)`, `compute()` and `reset()` (e.g. a
            `ClassificationMetrics`); its results are logged per epoch as "train_<name>".
        bf16: the training forward under `torch.autocast(dtype=torch.bfloat16)` (the backward follows it);
            weights, optimizer and evaluation stay float32. (TrainingArguments' own `bf16` would also run
            evaluation in bfloat16.)
    """

    def __init__(self, *args, multi_scale: MultiScaleOptions | bool | None = None, train_metrics=None,
                 bf16: bool = False, error: type[UserError] = TrainingDiverged, **kwargs):
        if isinstance(multi_scale, bool) or multi_scale is None:
            multi_scale = MultiScaleOptions(enabled=bool(multi_scale))
        if not isinstance(multi_scale, MultiScaleOptions):
            raise TypeError(f"multi_scale: expected MultiScaleOptions, bool or None, got {type(multi_scale).__name__}")
        kwargs.setdefault("data_collator", collate)
        super().__init__(*args, **kwargs)
        self.multi_scale = multi_scale
        self.train_metrics = train_metrics
        self.bf16 = bool(bf16)
        self._loss_sum = torch.zeros(2, dtype=torch.float64)  # (sum of losses, number of steps) this epoch
        self.error = error
        self.add_callback(_TrainMetricsCallback(self))
        self.add_callback(_FiniteWeightsCallback(self))

    def diverged(self, what: str):
        """Stop training: `what` became non-finite (one line, nothing saved from this step on)."""
        raise self.error(f"training: {what} (epoch {self.state.epoch or 0:.2f}); the model diverged and nothing from "
                         "this step on is saved (checkpoints of finished epochs are kept): lower --learning-rate or "
                         "--weight-decay, or check the data")

    # -- compiled runs --------------------------------------------------------------------------------------------
    def _compile_settings(self):
        """`compiled_per_shape` for the sampler's table when the model is compiled; nothing otherwise."""
        if not self.args.torch_compile:
            return contextlib.nullcontext()
        training_shapes = 1
        if isinstance(self.train_dataset, MobileViTDataset):
            training_shapes = len(self.build_train_sampler(self.train_dataset).table)
        return compiled_per_shape(training_shapes)

    def evaluate(self, *args, **kwargs):
        with self._compile_settings():
            return super().evaluate(*args, **kwargs)

    def predict(self, *args, **kwargs):
        with self._compile_settings():
            return super().predict(*args, **kwargs)

    # -- data -----------------------------------------------------------------------------------------------------
    def build_train_sampler(self, dataset: MobileViTDataset) -> MultiScaleBatchSampler:
        height, width = dataset.image_size
        if height != width:
            raise ValueError(f"image_size: the multi-scale sampler works on square crops, got {height}x{width}")
        options = self.multi_scale
        return MultiScaleBatchSampler(
            len(dataset), self._train_batch_size, height, multi_scale=options.enabled,
            min_size=options.min_size, max_size=options.max_size, num_scales=options.num_scales,
            divisor=options.divisor, num_replicas=self.args.world_size, rank=self.args.process_index,
            seed=self.args.data_seed if self.args.data_seed is not None else self.args.seed)

    def get_train_dataloader(self) -> DataLoader:
        if not (isinstance(self.train_dataset, MobileViTDataset) or getattr(self.train_dataset, "takes_sample_keys",
                                                                            False)):
            return super().get_train_dataloader()
        # Not passed through `accelerator.prepare`: the sampler already shards across ranks (accelerate's
        # shard wrapper would shard a second time), and Trainer moves each batch to the device itself.
        return end_workers_with_parent(_EpochAwareLoader(
            self.train_dataset, batch_sampler=self.build_train_sampler(self.train_dataset),
            collate_fn=self.data_collator, num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory,
            persistent_workers=self.args.dataloader_persistent_workers and self.args.dataloader_num_workers > 0))

    def _get_dataloader(self, *args, **kwargs) -> DataLoader:  # evaluation and Trainer's own training loader
        return end_workers_with_parent(super()._get_dataloader(*args, **kwargs))

    # -- speed ------------------------------------------------------------------------------------------------------
    def train(self, *args, **kwargs):
        # the threads asked for; the policy's choice for each step stays set until the next one (batches,
        # optimizer, evaluation run on it too), and the setting is put back at the end. The compile settings
        # (one graph per input shape) hold for the whole run.
        self._asked_threads = torch.get_num_threads()
        try:
            with self._compile_settings():
                return super().train(*args, **kwargs)
        finally:
            torch.set_num_threads(self._asked_threads)

    def training_step(self, model, inputs, num_items_in_batch=None):
        asked = getattr(self, "_asked_threads", None)
        if self.args.device.type != "cpu" or asked is None:
            return super().training_step(model, inputs, num_items_in_batch)
        with POLICY.work("training step", requested=asked, restore=False):
            return super().training_step(model, inputs, num_items_in_batch)

    def autocast_smart_context_manager(self, cache_enabled: bool | None = True):
        # Trainer enters this around compute_loss, in training and in evaluation; bfloat16 is for training only
        if self.bf16 and self.model.training:
            return torch.autocast(self.args.device.type, dtype=torch.bfloat16, cache_enabled=cache_enabled)
        return super().autocast_smart_context_manager(cache_enabled)

    def evaluation_loop(self, *args, **kwargs):
        self.gather_function = self._gather_for_metrics  # Trainer sets it back to accelerate's after the loop
        return super().evaluation_loop(*args, **kwargs)

    def _gather_for_metrics(self, data):
        """accelerate's `gather_for_metrics`, but a detector's labels (a list of dicts whose boxes vary in number
        from image to image) travel as objects: gathered as tensors they would need one shape on every rank."""
        if isinstance(data, list) and data and isinstance(data[0], dict):
            return self.accelerator.gather_for_metrics(data, use_gather_object=True)
        return self.accelerator.gather_for_metrics(data)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        if ignore_keys is None and isinstance(inputs.get("labels"), list):  # a detector's list of box dicts
            ignore_keys = DETECTION_IGNORED_KEYS
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)

    # -- per-epoch training metrics ----------------------------------------------------------------------------------
    def _reset_train_tracking(self) -> None:
        self._loss_sum.zero_()
        if self.train_metrics is not None:
            self.train_metrics.reset()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if model.training and not bool(torch.isfinite(loss.detach()).all()):
            self.diverged(f"the loss became {float(loss.detach())} at step {self.state.global_step + 1}")
        if model.training:
            self._loss_sum += torch.tensor([float(loss.detach()), 1.0], dtype=torch.float64)
            if self.train_metrics is not None and "labels" in inputs:
                logits = outputs["logits"] if isinstance(outputs, dict) else outputs[1]
                self.train_metrics.update(logits.detach(), inputs["labels"])
        return (loss, outputs) if return_outputs else loss

    def _train_epoch_logs(self) -> dict[str, float]:
        """Mean loss and metrics of the epoch, summed over all processes (every rank must call this)."""
        totals = self._loss_sum.clone()
        if self.args.world_size > 1:
            totals = self.accelerator.reduce(totals.to(self.args.device), reduction="sum").cpu()
            if self.train_metrics is not None:
                state = self.train_metrics.state.to(self.args.device)
                self.train_metrics.state = self.accelerator.reduce(state, reduction="sum").cpu()
        if totals[1] == 0:
            return {}
        logs = {"train_loss_epoch": float(totals[0] / totals[1])}
        if self.train_metrics is not None:
            logs.update({f"train_{name}": value for name, value in self.train_metrics.compute().items()
                         if value is not None and not name.startswith("iou_")})
        return logs
