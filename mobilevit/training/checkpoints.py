"""Which Trainer checkpoints can be resumed from, and which a killed run cut off while writing them.

Trainer writes `checkpoint-<step>/` file by file: config.json and the weights, then optimizer.pt,
scheduler.pt and rng_state.pth, and trainer_state.json last. A run killed in between (SIGKILL, power loss,
a full disk) leaves a folder that looks like a checkpoint but is not one: Trainer's own resume then fails
("Can't find a valid checkpoint") or tracebacks on the missing trainer_state.json. Here a checkpoint is whole
when every one of those files is there and complete: trainer_state.json parses, the safetensors header
accounts for the file's size exactly, and every torch file is a zip archive with its closing directory
(a cut-off zip has none).
"""

from __future__ import annotations

import json
import re
import struct
import zipfile
from pathlib import Path

_CHECKPOINT = re.compile(r"checkpoint-(\d+)")
TORCH_FILES = ("optimizer.pt", "scheduler.pt")
WEIGHTS_FILES = ("model.safetensors", "pytorch_model.bin")


def _safetensors_problem(path: Path) -> str | None:
    try:
        with open(path, "rb") as file:
            (length,) = struct.unpack("<Q", file.read(8))
            header = json.loads(file.read(length))
    except (OSError, struct.error, ValueError, MemoryError, OverflowError):
        return f"{path.name} is cut off (unreadable header)"
    ends = [entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"]
    expected = 8 + length + max(ends, default=0)
    size = path.stat().st_size
    return None if size == expected else f"{path.name} is cut off ({size:,} of {expected:,} bytes)"


def checkpoint_problem(folder: str | Path) -> str | None:
    """What makes `folder` unusable as a checkpoint to resume from, or None when it is whole."""
    folder = Path(folder)
    if not folder.is_dir():
        return "not a folder"
    state = folder / "trainer_state.json"
    if not state.is_file():
        return "no trainer_state.json (Trainer writes it last)"
    try:
        json.loads(state.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return "trainer_state.json is cut off"
    weights = next((folder / name for name in WEIGHTS_FILES if (folder / name).is_file()), None)
    if weights is None:
        return "no weights (model.safetensors)"
    rng = sorted(folder.glob("rng_state*.pth"))
    if not rng:
        return "no rng_state.pth"
    torch_files = [folder / name for name in TORCH_FILES] + rng
    if weights.suffix == ".safetensors":
        problem = _safetensors_problem(weights)
        if problem:
            return problem
    else:
        torch_files.append(weights)
    for path in torch_files:
        if not path.is_file():
            return f"no {path.name}"
        if not zipfile.is_zipfile(path):
            return f"{path.name} is cut off"
    return None


def scan_checkpoints(folder: str | Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """The `checkpoint-<step>` folders in `folder`, by step: (whole ones, [(incomplete one, its problem)])."""
    folder = Path(folder)
    if not folder.is_dir():
        return [], []
    found = sorted((int(match[1]), path) for path in folder.iterdir()
                   if path.is_dir() and (match := _CHECKPOINT.fullmatch(path.name)))
    whole, incomplete = [], []
    for _, path in found:
        problem = checkpoint_problem(path)
        if problem is None:
            whole.append(path)
        else:
            incomplete.append((path, problem))
    return whole, incomplete


__all__ = ["checkpoint_problem", "scan_checkpoints"]
