"""`mobilevit benchmark`: one command, one module per mode, so that no mode's module imports another's.

- `--mode inference` (default): the models' forward against stock transformers and the runtimes
  (`mobilevit/benchmark.py`, which also holds the options of every mode);
- `--mode train`: a training step against stock transformers' Trainer-style step (`mobilevit/benchmark_train.py`,
  which reuses the inference module's model builders and timing loop);
- `--mode predict`: `mobilevit predict` end to end against the model alone and stock transformers.pipeline
  (`benchmark.run_predict_mode` checks its arguments, `mobilevit/benchmark_predict.py` times it).

Each mode's module is imported only when that mode runs: `--help` and usage errors answer without torch.
"""

from __future__ import annotations

import argparse
import importlib

from . import benchmark

# mode -> (module, function)
RUNNERS = {"inference": ("benchmark", "run"), "train": ("benchmark_train", "run_train_mode"),
           "predict": ("benchmark", "run_predict_mode")}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    benchmark.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    module, function = RUNNERS[args.mode]
    return getattr(importlib.import_module(f".{module}", __package__), function)(args)
