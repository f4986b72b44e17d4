"""What every checkpoint converter shares: reading a file safely, unwrapping the forms a checkpoint comes in,
and renaming its keys by a family's table with every key accounted for.

The families' own parts (their rename tables, and how their checkpoints are recognised and measured) live
in `models/<family>/conversion_<family>.py`; `mobilevit/conversion.py` is the tool on top (`mobilevit
convert`). Nothing here knows a family.
"""

from __future__ import annotations

import hashlib
import pickle
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from tqdm.auto import tqdm

from .errors import UserError


class ConversionError(UserError):
    """The checkpoint cannot be converted; the message says which keys, shapes or options are at fault."""


# ---------------------------------------------------------------------------------------------------------
# Reading and unwrapping
# ---------------------------------------------------------------------------------------------------------
# Where a checkpoint keeps its weights when it is a wrapper dict (ml-cvnets training checkpoints use
# model_state_dict / ema_state_dict; other trainers use the others).
MODEL_WRAPPER_KEYS = ("model_state_dict", "state_dict", "model")
EMA_WRAPPER_KEYS = ("ema_state_dict", "model_ema", "state_dict_ema", "ema")
DDP_PREFIX = "module."


def sha256_of_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def read_checkpoint_file(path: str | Path):
    """The raw object stored in a `.pt`/`.pth`/`.bin` pickle (read with weights_only=True) or `.safetensors`.

    A file that cannot be read is a one-line ConversionError saying what the file is (empty, a cut-off zip
    archive, a pickle holding more than tensors, not a checkpoint at all). Code stored in a pickle is never run,
    and the message never suggests reading the file in a way that would run it."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"checkpoint: expected an existing file, got {str(path)!r}")
    size = path.stat().st_size
    shown = f"checkpoint: {str(path)!r} ({size:,} bytes)"
    if size == 0:
        raise ConversionError(f"{shown} is empty")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except SafetensorError as exc:
            raise ConversionError(f"{shown} cannot be read as safetensors: the file is truncated or corrupt ({exc})"
                                  ) from None
    with open(path, "rb") as file:
        head = file.read(4)
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols it may not read, then says so again
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if head[:1] != b"\x80" and head != b"PK\x03\x04":  # neither a pickle nor a zip: arbitrary bytes
            raise ConversionError(f"{shown} is not a PyTorch checkpoint (neither a zip archive nor a pickle)") from None
        detail = unpickler_reason(exc)
        what = ("holds Python objects other than tensors and plain containers" if "global" in detail.lower()
                else "is a pickle that torch's safe loader cannot read")
        raise ConversionError(
            f"{shown} {what} ({detail}); checkpoints are read with torch.load(weights_only=True), which never runs "
            "code stored in a file. Convert a bare state dict or a .safetensors file instead (ml-cvnets writes "
            "checkpoint_best.pt / checkpoint_ema_best.pt next to its training checkpoints)") from None
    except Exception as exc:  # torch's zip reader, unpickling of truncated data, ...
        kind = "a PyTorch zip checkpoint" if head == b"PK\x03\x04" else "a pickle" if head[:1] == b"\x80" else None
        if kind is None:
            raise ConversionError(f"{shown} is not a PyTorch checkpoint (neither a zip archive nor a pickle)") from None
        reason = str(exc).splitlines()[0].split(". ")[0] if str(exc) else type(exc).__name__
        raise ConversionError(f"{shown} is {kind} that cannot be read: the file is truncated or corrupt ({reason})"
                              ) from None


def unpickler_reason(exc: Exception) -> str:
    """What torch's safe unpickler objected to, without torch's surrounding advice (it suggests loading the file
    with weights_only=False, which would run its code, or allow-listing the offending class)."""
    text = str(exc)
    lines = text.split("WeightsUnpickler error:", 1)[1].splitlines() if "WeightsUnpickler error:" in text else \
        text.splitlines()[1:]
    for line in map(str.strip, lines):
        if line and "weights_only" not in line and not line.startswith(("Please file", "Check the documentation", "(")):
            return line.split(" was not an allowed global")[0].split(". ")[0].rstrip(".")
    return "not a plain state dict"


def unwrap_state_dict(obj, weights: str = "auto") -> tuple[dict[str, torch.Tensor], str]:
    """Find the state dict inside a checkpoint object; returns it and a description of where it was.

    `weights` picks between the raw weights ("model") and an exponential-moving-average copy ("ema") when the
    checkpoint holds both (an ml-cvnets training checkpoint does); "auto" takes the only one present.
    ml-cvnets also saves EMA weights as separate bare state dicts (`checkpoint_ema_best.pt`, ...): those
    are plain state dicts and need no option.
    """
    if weights not in ("auto", "model", "ema"):
        raise ConversionError(f"weights: expected 'auto', 'model' or 'ema', got {weights!r}", usage=True)
    where = []
    for _ in range(3):  # a wrapper may be nested once or twice ({"model": {"state_dict": ...}})
        if _is_state_dict(obj):
            if weights == "ema" and not where:
                raise ConversionError(
                    "weights: 'ema' asked for, but the checkpoint is a bare state dict without an EMA copy "
                    "(ml-cvnets' *_ema*.pt files are bare state dicts: convert them with --weights auto)", usage=True)
            return dict(obj), " -> ".join(where) or "bare state dict"
        if not isinstance(obj, dict):
            break
        model_keys = [k for k in MODEL_WRAPPER_KEYS if k in obj]
        ema_keys = [k for k in EMA_WRAPPER_KEYS if k in obj and obj[k] is not None]
        if weights == "ema":
            chosen = ema_keys[:1]
        elif weights == "model":
            chosen = model_keys[:1]
        elif model_keys and ema_keys:
            raise ConversionError(
                f"weights: the checkpoint holds both raw weights ({model_keys[0]!r}) and an EMA copy "
                f"({ema_keys[0]!r}); choose one with --weights model or --weights ema", usage=True)
        else:
            chosen = (model_keys or ema_keys)[:1]
        if not chosen:
            raise ConversionError(
                f"checkpoint: expected a state dict or a dict holding one under {list(MODEL_WRAPPER_KEYS)} "
                f"(raw weights) or {list(EMA_WRAPPER_KEYS)} (EMA copy), got a dict with keys "
                f"{sorted(map(str, obj))[:12]}" + ("" if weights == "auto" else f" (with --weights {weights})"))
        where.append(f"[{chosen[0]!r}]")
        obj = obj[chosen[0]]
    raise ConversionError(f"checkpoint: expected a dict of tensors, got {type(obj).__name__}")


def strip_ddp_prefix(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], bool]:
    """Remove the `module.` that DistributedDataParallel puts in front of every key."""
    if not all(k.startswith(DDP_PREFIX) for k in state_dict):
        return state_dict, False
    return {k[len(DDP_PREFIX):]: v for k, v in state_dict.items()}, True


# ---------------------------------------------------------------------------------------------------------
# What a family provides to convert its checkpoints
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RenameTable:
    """Checkpoint key (a regular expression matched against the whole key) -> model key template.

    Named groups are copied into the template, translated through `vocabulary` where it has an entry. A
    template holding `{name}` for a name in `splits` takes a packed tensor apart along its first dimension,
    one equal piece per entry (in that order). Keys matching a `dropped` pattern are left out on purpose and
    reported with the reason given."""

    rules: Sequence[tuple[str, str]]
    vocabulary: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    dropped: Sequence[tuple[str, str]] = ()
    splits: Mapping[str, Sequence[str]] = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "_compiled", [(re.compile(p), t) for p, t in self.rules])
        object.__setattr__(self, "_compiled_dropped", [(re.compile(p), why) for p, why in self.dropped])

    def rename(self, key: str) -> str | None:
        """The model key (with any split placeholder left in) for one checkpoint key; None if no rule matches."""
        for pattern, template in self._compiled:
            match = pattern.fullmatch(key)
            if match:
                groups = {name: self.vocabulary.get(name, {}).get(value, value)
                          for name, value in match.groupdict().items()}
                return template.format(**{name: "{" + name + "}" for name in self.splits}, **groups)
        return None

    def drop_reason(self, key: str) -> str | None:
        return next((why for pattern, why in self._compiled_dropped if pattern.fullmatch(key)), None)

    def pieces(self, key: str, target: str, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
        """`target` -> tensor, with a packed tensor split into its named parts."""
        for name, parts in self.splits.items():
            placeholder = "{" + name + "}"
            if placeholder in target:
                if tensor.shape[0] % len(parts):
                    raise ConversionError(f"checkpoint: {key!r} has shape {tuple(tensor.shape)}; expected "
                                          f"{len(parts)} packed parts ({', '.join(parts)}) of equal size")
                return {target.replace(placeholder, part): piece
                        for part, piece in zip(parts, tensor.chunk(len(parts), dim=0))}
        return {target: tensor}


class CheckpointConverter(Protocol):
    """A family's knowledge of its original checkpoints (see `models/mobilevit/conversion_mobilevit.py`)."""

    source: str  # e.g. "ml-cvnets MobileViT v1", for messages and model cards
    rename_table: RenameTable

    def claims(self, state_dict: Mapping[str, torch.Tensor]) -> bool:
        """Whether the keys are this family's checkpoint layout (cheap: key names only)."""

    def detect_task(self, state_dict: Mapping[str, torch.Tensor]) -> str: ...

    def detect_variant(self, state_dict: Mapping[str, torch.Tensor], task: str) -> str: ...

    def num_labels(self, state_dict: Mapping[str, torch.Tensor], task: str) -> int: ...

    def config_overrides(self, state_dict: Mapping[str, torch.Tensor], task: str) -> dict:
        """Config fields the tensors imply beyond the variant and the task's defaults."""


# ---------------------------------------------------------------------------------------------------------
# Renaming and checking
# ---------------------------------------------------------------------------------------------------------
@dataclass
class ConvertedStateDict:
    tensors: dict[str, torch.Tensor]
    num_source_keys: int
    dropped: dict[str, list[str]] = field(default_factory=dict)  # reason -> keys
    filled_defaults: list[str] = field(default_factory=list)


def convert_state_dict(state_dict: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], table: RenameTable,
                       progress: bool = False) -> ConvertedStateDict:
    """Rename every checkpoint key into `expected`'s keys (a model's state dict) by `table` and check the result.

    Raises ConversionError listing every key that maps nowhere, every model key nothing fills, every
    target filled twice and every shape that differs.
    """
    out: dict[str, torch.Tensor] = {}
    sources: dict[str, str] = {}
    unmatched, duplicated, dropped = [], [], {}
    for key, tensor in tqdm(state_dict.items(), desc="renaming", unit="key", disable=not progress, leave=False):
        reason = table.drop_reason(key)
        if reason:
            dropped.setdefault(reason, []).append(key)
            continue
        target = table.rename(key)
        if target is None:
            unmatched.append(key)
            continue
        for name, piece in table.pieces(key, target, tensor).items():
            if name in out:
                duplicated.append(f"{sources[name]} and {key} -> {name}")
            out[name], sources[name] = piece.clone(), key

    missing = [k for k in expected if k not in out]
    filled_defaults = []
    for key in list(missing):  # BatchNorm's step counter is not used in eval; older exporters drop it
        if key.endswith(".num_batches_tracked"):
            out[key] = torch.zeros_like(expected[key])
            filled_defaults.append(key)
            missing.remove(key)
    unexpected = [f"{sources[k]} -> {k}" for k in out if k not in expected]
    mismatched = [f"{sources[k]} -> {k}: checkpoint {tuple(v.shape)}, model {tuple(expected[k].shape)}"
                  for k, v in out.items() if k in expected and v.shape != expected[k].shape]

    problems = []
    for title, items in (("keys that no rename rule matches", unmatched),
                         ("keys renamed to something the model does not have", unexpected),
                         ("model keys that nothing in the checkpoint fills", missing),
                         ("model keys filled twice", duplicated),
                         ("shapes that differ", mismatched)):
        if items:
            shown = "\n  ".join(items[:20]) + (f"\n  ... and {len(items) - 20} more" if len(items) > 20 else "")
            problems.append(f"{len(items)} {title}:\n  {shown}")
    if problems:
        raise ConversionError("checkpoint: does not convert cleanly:\n" + "\n".join(problems))

    # the model's own dtypes (float32 weights, int64 counters), whatever precision the checkpoint was saved in
    tensors = {k: out[k].to(expected[k].dtype).contiguous() for k in expected}
    return ConvertedStateDict(tensors, len(state_dict), dropped, filled_defaults)


def resolve(detected: str, requested: str | None, what: str, canonical) -> str:
    """`requested` ("auto" or a name) checked against what the tensors say."""
    if requested in (None, "auto"):
        return detected
    try:
        requested = canonical(requested)
    except ValueError as err:  # a name of another family's sizes, say
        raise ConversionError(str(err), usage=True) from None
    if requested != detected:
        raise ConversionError(f"{what}: --{what} {requested} was given, but the checkpoint's tensors are those of "
                              f"a {detected} model", usage=True)
    return requested


__all__ = ["ConversionError", "RenameTable", "unpickler_reason", "CheckpointConverter", "convert_state_dict",
           "read_checkpoint_file",
           "unwrap_state_dict", "strip_ddp_prefix", "sha256_of_file", "resolve"]
