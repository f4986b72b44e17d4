"""Where a prediction's forward runs: the PyTorch model, or its exported artefact in ONNX Runtime or OpenVINO.

    runtime = load_runtime("openvino", model, processor)     # exported once, cached, checked on the first batch
    outputs = runtime(pixel_values)                          # {"logits": tensor (B, ...)}, whatever the runtime

`mobilevit predict --runtime` and `mobilevit.pipeline(..., runtime=)` take one of `RUNTIMES`:

- `pytorch`: the model itself (its eval fast path), on any torch device.
- `onnxruntime`, `openvino`: the artefact `mobilevit export` writes for the model (ONNX with free batch, height
  and width; OpenVINO IR with a free batch at the processor's size, or converted from the ONNX graph when every
  size is needed, as for segmentation of whole images), run on the CPU with as many threads as torch uses.

**The cache.** An artefact is exported once and kept in `cache_root()` (`$MOBILEVIT_CACHE`, else
`$HF_HOME/mobilevit`, by default `~/.cache/huggingface/mobilevit`), in `runtimes/<entry>/`. An entry's name
holds a hash of everything the artefact depends on (`CacheKey`): the weights (every tensor's name, dtype,
shape and bytes: changed weights make a new entry), the config, the format, the precision, the input size,
and the versions of this package, torch and the runtime. Its `manifest.json`, written last, lists every file
with its size and sha256; an entry whose manifest is missing, unreadable, of another key, or whose files
differ from it (a truncated file, a killed export) is rebuilt, never trusted. Entries are written beside
their final place and moved in whole (`file_utils.staged_directory`), so readers see no half-written entry.

**The check.** The first batch an artefact runs is also run by the PyTorch model, and the outputs must agree
within `export.common.FP32_ATOL` (1e-4, relative above magnitude 1), or the run stops with a one-line error.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import UserError, require

RUNTIMES = {"pytorch": None, "onnxruntime": "onnx", "openvino": "openvino"}  # runtime -> export format
CACHE_ENV = "MOBILEVIT_CACHE"
PRECISION = "fp32"  # what the runtime switch exports and checks
MANIFEST = "manifest.json"
ARTEFACT_STEM = "model"


class RuntimeChoiceError(UserError):
    """A runtime that cannot be used: unknown, its package missing, or its artefact disagreeing with PyTorch."""


def check_runtime_name(name: str, argument: str = "--runtime") -> str:
    if name not in RUNTIMES:
        raise RuntimeChoiceError(f"{argument}: expected one of {', '.join(RUNTIMES)}, got {name!r}", usage=True)
    return name


def require_runtime(name: str, every_size: bool = False, argument: str = "--runtime") -> None:
    """A one-line error naming the extra to install when the runtime's packages (and the exporter's) are missing.
    OpenVINO for every input size converts from the ONNX graph, so it needs the ONNX exporter too."""
    from .export import FORMATS

    formats = [RUNTIMES[check_runtime_name(name, argument)]]
    if name == "openvino" and every_size:
        formats.append("onnx")
    for fmt in filter(None, formats):
        for module in FORMATS[fmt].modules:
            require(module, FORMATS[fmt].extra, f"{argument} {name}")


def cache_root() -> Path:
    """`$MOBILEVIT_CACHE`, else `mobilevit/` in the Hugging Face cache folder (`$HF_HOME`, by default
    ~/.cache/huggingface)."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit).expanduser()
    from huggingface_hub import constants

    return Path(constants.HF_HOME) / "mobilevit"


def fixed_input_size(processor, whole_image: bool = False) -> tuple[int, int] | None:
    """The (height, width) every image has after `processor` (a centre crop, or a resize to a fixed size), or
    None when sizes vary (the shortest edge is resized and nothing cropped, as for whole-image segmentation)."""
    if not whole_image and processor.setting("do_center_crop") and processor.crop_size:
        return int(processor.crop_size["height"]), int(processor.crop_size["width"])
    size = processor.size if processor.setting("do_resize") else None
    if size and size.get("height") and size.get("width"):
        return int(size["height"]), int(size["width"])
    return None


# ---------------------------------------------------------------------------------------------------------
# Runtimes
# ---------------------------------------------------------------------------------------------------------
class TorchRuntime:
    """The model in PyTorch (its eval fast path): batch in, `{output name: batched tensor on the CPU}` out."""

    name = "pytorch"

    def __init__(self, model, device=None):
        import torch

        from .export.common import MainOutputs

        self.device = torch.device(device) if device is not None else model.device
        self.graph = MainOutputs(model.eval()).eval().to(self.device)
        self.output_names = self.graph.output_names()
        self.threads = torch.get_num_threads() if self.device.type == "cpu" else 0

    def __call__(self, pixel_values) -> dict:
        import torch

        if self.device.type == "cuda":
            pixel_values = pixel_values.pin_memory().to(self.device, non_blocking=True)
        else:
            pixel_values = pixel_values.to(self.device)
        with torch.inference_mode():
            outputs = self.graph(pixel_values)
        return {name: value.float().cpu() for name, value in zip(self.output_names, outputs)}

    def describe(self) -> str:
        return f"pytorch on {self.device}"


class ArtefactRuntime:
    """An exported artefact in its runtime. The first batch is also run by `reference` (the PyTorch model) and
    must agree within the fp32 bound (`comparison` keeps the result)."""

    def __init__(self, name: str, runner, output_names: list[str], reference: TorchRuntime, entry: Path,
                 sidecar: dict, threads: int):
        self.name, self.runner, self.output_names = name, runner, output_names
        self.reference, self.entry, self.sidecar, self.threads = reference, entry, sidecar, threads
        self.comparison = None

    def __call__(self, pixel_values) -> dict:
        import numpy as np
        import torch

        got = self.runner(pixel_values.numpy())
        if self.reference is not None:
            self._check(pixel_values, got)
        return {name: torch.from_numpy(np.asarray(value)) for name, value in zip(self.output_names, got)}

    def _check(self, pixel_values, got) -> None:
        from .export.common import compare, enforce_bound

        reference, self.reference = self.reference, None  # once; then the PyTorch model is not run again
        expected = reference(pixel_values)
        described = f"the first batch ({len(pixel_values)} images at {pixel_values.shape[-2]}x{pixel_values.shape[-1]})"
        try:
            self.comparison = compare([expected[n] for n in self.output_names], got, reference.graph.task, described)
            enforce_bound(self.comparison, PRECISION, self.name)
        except UserError as err:
            raise RuntimeChoiceError(f"--runtime {self.name}: {err} (artefact {str(self.entry)!r})") from None

    def describe(self) -> str:
        return f"{self.name} ({self.sidecar.get('format')} artefact in {self.entry})"


def load_runtime(name: str, model, processor=None, *, whole_image: bool = False, device=None,
                 threads: int | None = None, cache: str | os.PathLike | None = None, log=None):
    """The runtime `name` for `model` (see the module docstring). `processor` fixes the input size of a
    fixed-size artefact (its crop; None, or `whole_image`, means every size); `threads`: CPU threads of an
    artefact's runtime (default: torch's). `log(line)` hears about exports and cache rebuilds."""
    import torch

    check_runtime_name(name)
    reference = TorchRuntime(model, device)
    if name == "pytorch":
        return reference
    if reference.device.type != "cpu":
        raise RuntimeChoiceError(f"--runtime {name}: runs on the CPU; --device {reference.device} goes with "
                                 "--runtime pytorch", usage=True)
    fmt = RUNTIMES[name]
    size = None if fmt == "onnx" or processor is None else fixed_input_size(processor, whole_image)
    require_runtime(name, every_size=size is None)
    entry, sidecar = cached_artefact(model, fmt, size, processor=processor, cache=cache, log=log)
    from .export import FORMATS

    threads = threads or torch.get_num_threads()
    runner = FORMATS[fmt].load(entry / artefact_name(fmt), PRECISION, threads)
    return ArtefactRuntime(name, runner, reference.output_names, reference, entry, sidecar, threads)


# ---------------------------------------------------------------------------------------------------------
# The cache
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CacheKey:
    """Everything an exported artefact depends on."""

    format: str
    precision: str
    size: str  # "256x256", or "any" (every height and width)
    weights: str  # sha256 of the state dict
    config: str  # sha256 of the config
    model_type: str
    versions: str  # mobilevit, torch and the runtime

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()

    def entry_name(self) -> str:
        return f"{self.model_type}-{self.format}-{self.precision}-{self.size}-{self.digest()[:16]}"


def weights_hash(model) -> str:
    """sha256 over every tensor of the state dict: its name, dtype, shape and bytes."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{flat.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    return digest.hexdigest()


def config_hash(config) -> str:
    content = config.to_dict()
    content.pop("transformers_version", None)  # who saved it, not what it builds
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()


def cache_key(model, fmt: str, size: tuple[int, int] | None, precision: str = PRECISION) -> CacheKey:
    from importlib.metadata import PackageNotFoundError, version

    import torch

    from . import __version__
    from .export import FORMATS

    runtime_versions = []
    for module in FORMATS[fmt].modules[:1]:  # the runtime package itself
        try:
            runtime_versions.append(f"{module} {version(module)}")
        except PackageNotFoundError:
            runtime_versions.append(f"{module} ?")
    return CacheKey(format=fmt, precision=precision, size=f"{size[0]}x{size[1]}" if size else "any",
                    weights=weights_hash(model), config=config_hash(model.config), model_type=model.config.model_type,
                    versions=f"mobilevit {__version__}, torch {torch.__version__}, " + ", ".join(runtime_versions))


def artefact_name(fmt: str) -> str:
    from .export import FORMATS

    return ARTEFACT_STEM + FORMATS[fmt].suffix


def entry_problem(entry: Path, key: CacheKey) -> str | None:
    """Why the cache entry cannot be trusted, or None: no manifest, an unreadable one, another key, a file
    missing or of another size or sha256 than the manifest says."""
    try:
        manifest = json.loads((entry / MANIFEST).read_text())
    except FileNotFoundError:
        return "has no manifest (an export that did not finish)"
    except (OSError, ValueError) as err:
        return f"has an unreadable manifest ({err})"
    if not isinstance(manifest, dict) or manifest.get("key") != asdict(key) \
            or not isinstance(manifest.get("files"), dict):
        return "was made for another model, size or version"
    for name, expected in manifest["files"].items():
        path = entry / name
        if not path.is_file():
            return f"lacks {name}"
        if path.stat().st_size != expected.get("size") or _sha256(path) != expected.get("sha256"):
            return f"holds a {name} that differs from its manifest (truncated or changed)"
    return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cached_artefact(model, fmt: str, size: tuple[int, int] | None, *, processor=None,
                    cache: str | os.PathLike | None = None, log=None) -> tuple[Path, dict]:
    """(entry folder, sidecar) of the model's artefact in `fmt` at `size` (None: every size): from the cache when
    its entry is whole and of this key, else exported (and checked against PyTorch) into a new entry."""
    from .export import FORMATS, export_model
    from .export.common import sidecar_path
    from .file_utils import staged_directory

    log = log or (lambda line: None)
    key = cache_key(model, fmt, size)
    root = Path(cache) if cache is not None else cache_root()
    entry = root / "runtimes" / key.entry_name()
    artefact = artefact_name(fmt)
    if entry.exists():
        problem = entry_problem(entry, key)
        if problem is None:
            return entry, json.loads((entry / (artefact + ".json")).read_text())
        log(f"runtime cache: {entry} {problem}; exporting it again")
        shutil.rmtree(entry, ignore_errors=True)
    sizes = "every size" if size is None else f"{size[0]}x{size[1]}"
    log(f"runtime cache: exporting the model to {FORMATS[fmt].title} ({sizes}) into {entry} ...")
    try:
        # overwrite: an entry another run exported meanwhile holds the same key's artefact; replacing it is harmless
        with staged_directory(entry, overwrite=True, argument="runtime cache", error=RuntimeChoiceError) as staging:
            sidecar = export_model(model, fmt, staging / artefact, PRECISION, size=size, dynamic_size=size is None,
                                   processor=processor)
            files = [staging / artefact, *FORMATS[fmt].companion_paths(staging / artefact),
                     sidecar_path(staging / artefact)]
            manifest = {"key": asdict(key), "files": {f.name: {"size": f.stat().st_size, "sha256": _sha256(f)}
                                                      for f in files}}
            (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    except PermissionError as err:
        raise RuntimeChoiceError(f"runtime cache: cannot write in {str(root)!r} ({err.strerror}); set "
                                 f"{CACHE_ENV} to a folder you can write") from None
    return entry, sidecar


__all__ = ["RUNTIMES", "CACHE_ENV", "RuntimeChoiceError", "check_runtime_name", "require_runtime", "cache_root",
           "fixed_input_size", "TorchRuntime", "ArtefactRuntime", "load_runtime", "CacheKey", "cache_key",
           "weights_hash", "entry_problem", "cached_artefact"]
