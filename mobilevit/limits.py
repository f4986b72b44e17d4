"""The limits of every number a user gives, in one place.

Each tool's one check of its arguments (train's `validate_job`, convert's `check_options`, export's `validate`,
benchmark's `check_settings`, predict's `check_arguments`, the model-folder loader in `mobilevit.auto`) calls
these before any work, so a value that cannot run on this machine ends as one line that names the argument,
the limit and where the limit comes from, instead of an out-of-memory kill minutes later.

| value | limit | from |
|---|---|---|
| image sides: --image-size, --eval-resize, --multi-scale-range, a processor's crop | 32 ... 8192 | the model: it downsamples 32x; a config states at most 8192 (`configuration_utils.MAX_IMAGE_SIZE`) |
| a processor's resize target (shortest_edge, height, width) | 1 ... 9216 | 8192 x 288/256, the evaluation recipe's resize before its crop |
| threads (--threads) | 1 ... the CPUs this process may use | the machine (`os.sched_getaffinity`) |
| worker processes (--num-workers), busy processes (--background-load) | 0 ... the CPUs | the machine |
| batch sizes, calibration images | 1 ... what fits in memory at that resolution | the model's activations per image (a forward pass on the meta device, nothing allocated) against the memory this process may still use |
| a training batch | also at most the training examples | the data (larger values are lowered to the data's size) |
| epochs | finite, above 0, at most 10,000 | |
| seeds | 0 ... 2**32 - 1 | NumPy's seeding |
| rates, fractions, probabilities | finite | |
| benchmark --repeats / --warmup | 1 ... 10,000 / 0 ... 1,000 | |
| results per image: predict --top-k and --max-detections, a detection rule's caps and candidates per class | 1 ... 100,000 | what a picture and a JSON file can usefully hold (the released rules keep 200, consider 400) |

"The memory this process may still use" is the least of: the kernel's MemAvailable, the cgroup's limit less
its usage, and the address-space limit (`ulimit -v`, RLIMIT_AS) less what the process has mapped; on a CUDA
device, its free memory. A plan may take `MEMORY_SHARE` of it.
"""

from __future__ import annotations

import math
import os
import resource

from .configuration_utils import MAX_IMAGE_SIZE
from .errors import UserError

MIN_IMAGE_SIDE = 32  # every family downsamples 32x (a model's own `min_input_size` says so too)
MAX_IMAGE_SIDE = MAX_IMAGE_SIZE
MAX_RESIZE_SIDE = MAX_IMAGE_SIDE * 288 // 256
MAX_EPOCHS = 10_000
MAX_SEED = 2**32 - 1
MAX_REPEATS = 10_000
MAX_WARMUP = 1_000
MAX_RESULTS_PER_IMAGE = 100_000  # labels listed, boxes kept, candidates considered per image or class
MEMORY_SHARE = 0.8  # of the memory still available: the rest is for the data, the allocator's slack, other work
# measured (`python -c` on xx-small, small and v2-1.0 at 256x256): training keeps 1.2-1.4x the sum of every
# layer's output per image, inference peaks at 1-5x the largest layer output
TRAINING_FACTOR = 1.5
INFERENCE_FACTOR = 5.0


# ---------------------------------------------------------------------------------------------------------
# What the machine has
# ---------------------------------------------------------------------------------------------------------
def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask; a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _read_int(path: str) -> int | None:
    try:
        with open(path) as file:
            text = file.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as file:
            for line in file:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _mapped_bytes() -> int:
    """The address space this process has mapped (what RLIMIT_AS counts)."""
    try:
        with open("/proc/self/status") as file:
            for line in file:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def available_memory(device=None) -> int:
    """Bytes this process may still allocate (see the module doc); on a CUDA `device`, its free memory."""
    if device is not None and getattr(device, "type", str(device)).startswith("cuda"):
        import torch

        return int(torch.cuda.mem_get_info(device)[0])
    candidates = [_meminfo_available()]
    limit, usage = _read_int("/sys/fs/cgroup/memory.max"), _read_int("/sys/fs/cgroup/memory.current")
    if limit is not None and usage is not None:
        candidates.append(max(0, limit - usage))
    address_space = resource.getrlimit(resource.RLIMIT_AS)[0]
    if address_space != resource.RLIM_INFINITY:
        candidates.append(max(0, address_space - _mapped_bytes()))
    known = [c for c in candidates if c is not None]
    return min(known) if known else 2**40


def describe_bytes(count: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{int(count)} bytes"


# ---------------------------------------------------------------------------------------------------------
# Checks: each raises `error` (a UserError, exit 2) naming the argument, the limit, its reason and the value
# ---------------------------------------------------------------------------------------------------------
def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_int(name: str, value, minimum: int, maximum: int | None = None, why: str = "",
              error: type[UserError] = UserError) -> int:
    """An integer in [minimum, maximum]; `why` says where the maximum comes from."""
    if _is_int(value) and value >= minimum and (maximum is None or value <= maximum):
        return value
    if maximum is None:
        expected = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
    else:
        expected = f"an integer from {minimum} to {maximum}" + (f" ({why})" if why else "")
    raise error(f"{name}: expected {expected}, got {value!r}", usage=True)


def check_number(name: str, value, minimum: float | None = None, maximum: float | None = None, *,
                 above: bool = False, below: bool = False, error: type[UserError] = UserError) -> float:
    """A finite number in [minimum, maximum] (`above` / `below`: the bound itself excluded)."""
    ok = _is_finite_number(value)
    if ok and minimum is not None:
        ok = value > minimum if above else value >= minimum
    if ok and maximum is not None:
        ok = value < maximum if below else value <= maximum
    if ok:
        return value
    low = "" if minimum is None else f"{'(' if above else '['}{minimum:g}"
    high = "" if maximum is None else f"{maximum:g}{')' if below else ']'}"
    if minimum is not None and maximum is not None:
        expected = f"a finite number in {low}, {high}"
    elif minimum is not None:
        expected = f"a finite number {'>' if above else '>='} {minimum:g}"
    elif maximum is not None:
        expected = f"a finite number {'<' if below else '<='} {maximum:g}"
    else:
        expected = "a finite number"
    raise error(f"{name}: expected {expected}, got {value!r}", usage=True)


def check_image_side(name: str, value, error: type[UserError] = UserError, minimum: int = MIN_IMAGE_SIDE) -> int:
    return check_int(name, value, minimum, MAX_IMAGE_SIDE, f"the network downsamples {minimum}x, and "
                     f"{MAX_IMAGE_SIDE} is the largest side a config states", error)


def check_threads(name: str, value, error: type[UserError] = UserError) -> int:
    return check_int(name, value, 1, usable_cpus(), "the CPUs this process may use", error)


def check_processes(name: str, value, error: type[UserError] = UserError) -> int:
    """Worker or background processes: 0 up to one per CPU."""
    return check_int(name, value, 0, usable_cpus(), "one per CPU this process may use", error)


def check_seed(name: str, value, error: type[UserError] = UserError) -> int:
    return check_int(name, value, 0, MAX_SEED, "what NumPy seeds with", error)


def check_results_per_image(name: str, value, error: type[UserError] = UserError) -> int:
    return check_int(name, value, 1, MAX_RESULTS_PER_IMAGE, "more than a picture or a JSON file of results can "
                     "usefully hold", error)


def check_epochs(name: str, value, error: type[UserError] = UserError) -> float:
    return check_number(name, value, 0, MAX_EPOCHS, above=True, error=error)


def check_fits_in_memory(name: str, count: int, bytes_each: float, what: str, error: type[UserError] = UserError,
                         device=None, fixed_bytes: float = 0) -> None:
    """`count` items of `bytes_each` (plus `fixed_bytes`) must fit in `MEMORY_SHARE` of the available memory;
    `what` describes one item ("training xx-small at 256x256 keeps about")."""
    budget = MEMORY_SHARE * available_memory(device) - fixed_bytes
    most = int(budget // bytes_each) if bytes_each > 0 else count
    if count <= most:
        return
    where = "this GPU" if device is not None and str(device).startswith("cuda") else "this process"
    raise error(f"{name}: expected at most {max(most, 0)} ({what} {describe_bytes(bytes_each)} per image, and "
                f"{where} may use about {describe_bytes(max(budget, 0))}), got {count}", usage=True)


# ---------------------------------------------------------------------------------------------------------
# What a model needs per image
# ---------------------------------------------------------------------------------------------------------
def activation_bytes(model, channels: int, height: int, width: int, training: bool) -> int:
    """Bytes of activations one image of `height` x `width` takes through `model` (built on the meta device:
    nothing is allocated): training keeps every layer's output for the backward pass, inference the few
    largest at once (`TRAINING_FACTOR`, `INFERENCE_FACTOR`)."""
    import torch

    outputs = []

    def record(module, inputs, output):
        tensors = output if isinstance(output, (tuple, list)) else [output]
        outputs.append(sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor)))

    leaves = [m for m in model.modules() if not list(m.children())]
    hooks = [m.register_forward_hook(record) for m in leaves]
    was_training = model.training
    try:
        # training mode runs every layer (inference may take fused paths); batch-norm of a 1x1 map needs a batch
        # of 2 there, so two images go through and half of each output counts
        model.train()
        with torch.no_grad():
            model(torch.empty(2, channels, height, width, device="meta"))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    image = channels * height * width * 4
    if training:
        return int(TRAINING_FACTOR * sum(outputs) / 2) + image
    return int(INFERENCE_FACTOR * max(outputs, default=0) / 2) + image


_ESTIMATES: dict[tuple, int] = {}


def memory_per_image(key: str, build, channels: int, height: int, width: int, training: bool) -> int:
    """`activation_bytes` of the meta-device model `build()` returns, remembered under `key` (the config's JSON)."""
    cache_key = (key, channels, height, width, training)
    if cache_key not in _ESTIMATES:
        _ESTIMATES[cache_key] = activation_bytes(build(), channels, height, width, training)
    return _ESTIMATES[cache_key]


__all__ = ["MIN_IMAGE_SIDE", "MAX_IMAGE_SIDE", "MAX_RESIZE_SIDE", "MAX_EPOCHS", "MAX_SEED", "MAX_REPEATS",
           "MAX_WARMUP", "MAX_RESULTS_PER_IMAGE", "MEMORY_SHARE", "usable_cpus", "available_memory", "describe_bytes", "check_int",
           "check_number", "check_image_side", "check_threads", "check_processes", "check_seed", "check_results_per_image", "check_epochs",
           "check_fits_in_memory", "activation_bytes", "memory_per_image"]
