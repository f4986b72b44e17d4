"""The multi-scale batch sampler of the MobileViT paper (§4, "multi-scale sampler"; ml-cvnets'
`variable_batch_sampler`).

Each training step draws one resolution from a small table around the base size (ml-cvnets: 160-320 for
256, five steps, snapped to multiples of 32) and a batch size that keeps the number of pixels per batch
about constant: small images come in big batches, big images in small ones. The network thus sees many
scales without costing more per step, which the paper credits for better accuracy and faster convergence.

This sampler yields, per step, a list of `SampleKey`s: the example index, the resolution of the batch and
a seed for that example's augmentation. `MobileViTDataset` turns a key into a crop at exactly that
resolution. With `multi_scale=False` the table has a single entry, so the same class is ml-cvnets'
fixed-size `batch_sampler`.

Distributed training: every rank builds the same plan (shuffle seeded by seed + epoch, resolution seeded
by seed + epoch + step, never by rank), takes its own slice of each global batch, so all ranks run the
same resolution at the same step and no example is on two ranks in the same step.

An epoch is `ceil(num_samples / (num_replicas * mean_batch_size))` steps, a fixed number that covers the
data about once (exactly once without multi-scale, apart from the last batch, which wraps around).
"""

from __future__ import annotations

import math
from typing import Iterator, NamedTuple

import numpy as np
from torch.utils.data import Sampler


class SampleKey(NamedTuple):
    """What the sampler hands the dataset: which example, at which resolution, with which augmentation seed."""

    index: int
    height: int
    width: int
    seed: int


def _snap(value: float, divisor: int) -> int:
    """Nearest multiple of `divisor`, at least `divisor` (ml-cvnets' `make_divisible` for crop sizes)."""
    snapped = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if snapped < 0.9 * value:  # rounding down must not lose more than 10%
        snapped += divisor
    return snapped


def multiscale_batch_table(image_size: int, batch_size: int, min_size: int | None = None,
                           max_size: int | None = None, num_scales: int = 5, divisor: int = 32,
                           ) -> list[tuple[int, int, int]]:
    """Sorted (height, width, batch_size) entries of equal pixel budget around (image_size, batch_size).

    The resolutions are `num_scales` evenly spaced values in [min_size, max_size] (defaults: 0.625x and 1.25x
    the base size, i.e. ml-cvnets' 160-320 for 256) plus the base size, each snapped to a multiple of
    `divisor`; the batch size of each is round(batch_size * image_size^2 / size^2), at least 1.
    """
    for name, value in (("image_size", image_size), ("batch_size", batch_size), ("num_scales", num_scales),
                        ("divisor", divisor)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    min_size = int(round(image_size * 0.625)) if min_size is None else min_size
    max_size = int(round(image_size * 1.25)) if max_size is None else max_size
    if not 0 < min_size <= max_size:
        raise ValueError(f"min_size/max_size: expected 0 < min_size <= max_size, got {min_size!r}/{max_size!r}")
    sizes = {_snap(v, divisor) for v in np.linspace(min_size, max_size, num_scales)} | {_snap(image_size, divisor)}
    pixels = batch_size * image_size * image_size
    return sorted((s, s, max(1, int(round(pixels / (s * s))))) for s in sizes)


class MultiScaleBatchSampler(Sampler[list[SampleKey]]):
    """Batches of `SampleKey`s with a resolution (and matching batch size) drawn per step.

    Args:
        num_samples: length of the dataset.
        batch_size: per-process batch size at the base resolution.
        image_size: base resolution (square).
        multi_scale: draw resolutions from `multiscale_batch_table`; False keeps (image_size, batch_size).
        min_size, max_size, num_scales, divisor: the table, see `multiscale_batch_table`.
        num_replicas, rank: data-parallel world size and this process's rank.
        seed: shared by all ranks; the plan of an epoch depends on (seed, epoch) only.
        shuffle: draw a new permutation per epoch (False: 0..N-1 in order).
    """

    def __init__(self, num_samples: int, batch_size: int, image_size: int, *, multi_scale: bool = True,
                 min_size: int | None = None, max_size: int | None = None, num_scales: int = 5, divisor: int = 32,
                 num_replicas: int = 1, rank: int = 0, seed: int = 0, shuffle: bool = True):
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples: expected a positive integer (a non-empty dataset), got {num_samples!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
        if not (isinstance(num_replicas, int) and num_replicas >= 1 and isinstance(rank, int)
                and 0 <= rank < num_replicas):
            raise ValueError(f"num_replicas/rank: expected num_replicas >= 1 and 0 <= rank < num_replicas, got "
                             f"{num_replicas!r}/{rank!r}")
        self.num_samples, self.num_replicas, self.rank = num_samples, num_replicas, rank
        self.seed, self.shuffle, self.epoch = int(seed), shuffle, 0
        if multi_scale:
            self.table = multiscale_batch_table(image_size, batch_size, min_size, max_size, num_scales, divisor)
        else:
            self.table = [(image_size, image_size, batch_size)]
        # a batch never holds more than the data has (small resolutions get bigger batches)
        most = max(1, num_samples // num_replicas)
        self.table = [(height, width, min(batch, most)) for height, width, batch in self.table]
        mean_batch = float(np.mean([b for _, _, b in self.table]))
        self.steps_per_epoch = max(1, math.ceil(num_samples / (num_replicas * mean_batch)))

    def set_epoch(self, epoch: int) -> None:
        """Called by Trainer at the start of every epoch (also when resuming), like DistributedSampler's."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.steps_per_epoch

    def _index_stream(self) -> Iterator[int]:
        """This epoch's permutation, followed by further ones if the epoch needs more examples."""
        rng = np.random.default_rng([self.seed, self.epoch])
        while True:
            yield from (rng.permutation(self.num_samples) if self.shuffle else range(self.num_samples))

    def __iter__(self) -> Iterator[list[SampleKey]]:
        stream = self._index_stream()
        for step in range(self.steps_per_epoch):
            step_seq = np.random.SeedSequence([self.seed, self.epoch, step])
            height, width, batch = self.table[int(np.random.default_rng(step_seq).integers(len(self.table)))]
            global_batch = [int(next(stream)) for _ in range(batch * self.num_replicas)]
            # one augmentation seed per slot of the global batch: independent of rank count for a given slot
            seeds = step_seq.spawn(1)[0].generate_state(len(global_batch), dtype=np.uint64)
            mine = slice(self.rank * batch, (self.rank + 1) * batch)
            yield [SampleKey(i, height, width, int(s) & 0x7FFF_FFFF_FFFF_FFFF)
                   for i, s in zip(global_batch[mine], seeds[mine])]
