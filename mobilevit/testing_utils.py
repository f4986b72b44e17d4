"""Helpers shared by the tests, the benchmarks and the notebooks.

`fill_realistic_weights_` gives a model weights at the scale of a trained network. transformers' own random
init (and PyTorch's) shrinks activations layer after layer until they are denormal floats: a 1e-4
comparison then compares zeros, and the CPU slows down on denormals, which spoils timings. The recipe is
the one of the ml-cvnets fixtures (`shared/fixtures/mlcvnets/weights.py`): weights N(0, 1.3^2 / fan_in),
small biases, BatchNorm statistics and norm affine parameters far from (0, 1) (LayerNorm and GroupNorm
alike), and every 16th BatchNorm channel with a running variance of the order of eps, so that an eps
mistake moves the outputs visibly.

`colour_class_folders` writes a tiny image-folder data set (one colour per class, with noise) that a model
learns in one epoch: what the command-line tests and `tests/bad_input_cases.py` train on.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from torch import nn

WEIGHT_GAIN = 1.3
EPS_PROBE_STRIDE = 16
EPS_PROBE_VAR = 1e-5


@torch.no_grad()
def fill_realistic_weights_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Fill every parameter and BatchNorm buffer of `model` in place (deterministically from `seed`)."""
    gen = torch.Generator().manual_seed(seed)

    def randn(t):
        return torch.randn(t.shape, generator=gen).to(t.dtype)

    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            fan_in = math.prod(module.weight.shape[1:])
            module.weight.copy_(randn(module.weight) * (WEIGHT_GAIN / math.sqrt(fan_in)))
            if module.bias is not None:
                module.bias.copy_(0.05 * randn(module.bias))
        elif isinstance(module, (nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)):  # GroupNorm: MobileViTv2
            if module.weight is not None:
                module.weight.copy_(1.0 + 0.2 * randn(module.weight))
                module.bias.copy_(0.1 * randn(module.bias))
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.copy_(0.1 * randn(module.running_mean))
                module.running_var.copy_(0.5 + torch.rand(module.running_var.shape, generator=gen))
                probe = torch.arange(0, module.num_features, EPS_PROBE_STRIDE)
                module.running_var[probe] *= EPS_PROBE_VAR
                if module.weight is not None:
                    module.weight[probe] *= math.sqrt(EPS_PROBE_VAR)
    return model


def shared_fixtures_dir(name: str = "mlcvnets") -> Path | None:
    """`../shared/fixtures/<name>` next to the checkout, None when absent. $MOBILEVIT_FIXTURES, when set, is
    the path of the `mlcvnets` folder; the other fixture folders are looked for beside it."""
    env = os.environ.get("MOBILEVIT_FIXTURES")
    candidates = [Path(env) if name == "mlcvnets" else Path(env).parent / name] if env else []
    repo = Path(__file__).resolve().parent.parent
    candidates += [repo.parent / "shared" / "fixtures" / name, repo / "shared" / "fixtures" / name]
    for path in candidates:
        if (path / "weights.py").is_file():
            return path
    return None


def ssd_fixture_keys(prefix: str) -> list[str] | None:
    """The state-dict keys of the 320x320 SSD fixtures whose names start with `prefix` (e.g. "ssdlite_mobilevit_"),
    None when ../shared/fixtures/mlcvnets_ssd is absent."""
    import json

    folder = shared_fixtures_dir("mlcvnets_ssd")
    if folder is None:
        return None
    return [key for path in sorted(folder.glob(f"{prefix}*.json")) if "_320" in path.name
            for key, _, _ in json.loads(path.read_text())["state_dict"]]


def fixture_state_dict(folder: Path, name: str) -> dict[str, torch.Tensor]:
    """The deterministic ml-cvnets weights of the fixture `<folder>/<name>.json`, made by the folder's weights.py."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"weights_{Path(folder).name}", Path(folder) / "weights.py")
    weights = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(weights)
    return weights.state_dict(str(Path(folder) / f"{name}.json"))


def fixture_model_folder(folder: Path, name: str, output: Path) -> Path:
    """A model folder (config, weights, processor) converted from the ml-cvnets fixture weights of `name`
    (e.g. "mobilevit_xxs"): a released layout with known-good numbers, for benchmarks."""
    from .conversion import convert_checkpoint

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    checkpoint = output.parent / f"{name}.pt"
    torch.save(fixture_state_dict(folder, name), checkpoint)
    convert_checkpoint(checkpoint, output, progress=False, overwrite=True)
    return output


def colour_class_folders(root: str | os.PathLike, names, per_class: int = 6, seed: int = 0) -> Path:
    """`root/<name>/<i>.png` for each class name: 36x36 images of the class's own colour plus noise."""
    import numpy as np
    from PIL import Image

    root, rng = Path(root), np.random.default_rng(seed)
    for k, name in enumerate(names):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            colour = np.array([(70 * k) % 256, (40 * k + 90) % 256, (250 - 50 * k) % 256])
            pixels = np.clip(colour + rng.normal(0, 15, (36, 36, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root
