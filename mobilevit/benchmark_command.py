"""`mobilevit benchmark`: one command, one module per mode, so that neither mode's module imports the other.

- `--mode inference` (default): the models' forward against stock transformers and the runtimes
  (`mobilevit/benchmark.py`, which also holds the options of every mode);
- `--mode train`: a training step against stock transformers' Trainer-style step (`mobilevit/benchmark_train.py`,
  which reuses the inference module's model builders and timing loop).
"""

from __future__ import annotations

import argparse

from . import benchmark, benchmark_train

RUNNERS = {"inference": benchmark.run, "train": benchmark_train.run_train_mode}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    benchmark.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    return RUNNERS[args.mode](args)
