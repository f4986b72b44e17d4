"""Streaming inference: images in, one model output per image out, in memory that does not grow with their number.

What `mobilevit predict` and `mobilevit.pipeline` share:

    files or images -> read (decode + preprocess, worker threads) -> batches of one pixel shape -> a runtime
                    -> per-image outputs, in input order

- **Finding images** (`find_images`): files and folders (recursive, sorted); files in folders without an
  image extension are left out and counted; `check_headers` identifies every file (missing, unreadable, not
  an image Pillow can read, over the decompression-bomb limit) before any work, by reading its header only.
- **Reading** (`prepare_image`): a file decoded whole by the rules of `image_reading`, preprocessed by the
  model's processor, one image at a time. A file whose data turns out truncated or corrupt (only a full
  decode finds that) comes out as an item with an `error` instead of pixels; the caller decides whether that
  stops the run or is skipped.
- **Workers** (`WorkerPool`): threads, each with one torch thread (Pillow and torch release the GIL while
  they decode and resize). A sliding window keeps a bounded number of images in flight. PyTorch's CPU
  kernels wait for every thread of their team at each operator's barrier, so a worker that holds a CPU the
  model's team needs stalls every operator (a 12 ms forward took 0.5-2 s on a busy 2-core machine,
  `thread_policy.py`). When workers and model threads together want more CPUs than the process has, the
  workers therefore pause while a forward runs (each finishes the image in its hands) and decode between
  forwards, with all the CPUs; with enough CPUs they run beside the model.
- **Batching** (`batches`): images of one pixel shape share a batch (the processor's size rules decide the
  shapes: a centre crop gives one shape; segmentation keeps each image's own aspect ratio, so photos of one
  size and orientation batch together). A bounded number of images waits for company; then the fullest
  group goes as it is.
- **Order**: outputs come back in input order (a small reorder buffer, bounded like the rest).

Nothing here names a model family: the runtime (`runtimes.py`) holds the model, the caller's `prepare`
decides what travels with the pixels; tasks appear only in the default batch sizes.
"""

from __future__ import annotations

import heapq
import os
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserError
from .limits import usable_cpus
from .tasks import CLASSIFICATION, OBJECT_DETECTION, SEGMENTATION

MAX_BATCH_SIZE = 4096  # the exported graphs' batch limit too
# images per forward by task, measured end to end on 1024x768 JPEGs (docs/inference.md, "Speed"). Classification
# crops are small: the model's own throughput is flat from batch 8 to 64 on an idle machine (146-148 images/s,
# xx-small, 2 threads), and on a busy one a batch of 8 kept 1.4x the images/s of a batch of 32. Segmentation
# keeps whole photos, whose batches gain nothing measurable (batch 1, 4, 8: 0.6, 0.5, 0.5 images/s on a busy
# machine) and take memory per image; only photos of one shape share one anyway. Detection squashes every image to
# one size (320x320), like classification's crops: 8 by that likeness, not measured.
DEFAULT_BATCH_SIZE = {CLASSIFICATION: 8, SEGMENTATION: 1, OBJECT_DETECTION: 8}
MAX_WORKERS = 64
PENDING_BATCHES = 2  # images waiting for a batch of their shape: this many batches' worth at most


# ---------------------------------------------------------------------------------------------------------
# Finding images
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImageFile:
    """An image file to predict: its path as the user will read it, and its name relative to the argument it
    came from (a folder's files keep their sub-folders; a file given by itself is its own name)."""

    path: str
    relative: str


@dataclass
class FoundImages:
    files: list[ImageFile]
    skipped: Counter = field(default_factory=Counter)  # extension -> files in folders left out for it

    def skipped_line(self) -> str | None:
        """One line naming what the folders held besides images, or None."""
        if not self.skipped:
            return None
        total = sum(self.skipped.values())
        kinds = ", ".join(f"{count} {ext or '(no extension)'}"
                          for ext, count in sorted(self.skipped.items(), key=lambda pair: (-pair[1], pair[0])))
        return f"skipped {total} file{'s' * (total != 1)} without an image extension in the folders ({kinds})"


def find_images(arguments: Iterable[str | os.PathLike], error: type[UserError] = UserError,
                argument: str = "images") -> FoundImages:
    """Every image file named by `arguments`: files as given (whatever their extension: a file named on the
    command line is meant), folders searched recursively in sorted order for files with an image extension
    (`image_reading.IMAGE_EXTENSIONS`; hidden files and folders are left out). A missing path is an `error`
    naming it; an image found twice (a file and its folder, or two overlapping folders) is kept once."""
    from .image_reading import IMAGE_EXTENSIONS

    found, skipped, seen = [], Counter(), set()

    def add(path: Path, relative: str) -> None:
        key = os.path.realpath(path)
        if key not in seen:
            seen.add(key)
            found.append(ImageFile(str(path), relative))

    for given in arguments:
        path = Path(given)
        if path.is_dir():
            for folder, subfolders, names in os.walk(path):
                subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
                for name in sorted(names):
                    if name.startswith("."):
                        continue
                    file = Path(folder) / name
                    if file.suffix.lower() in IMAGE_EXTENSIONS:
                        add(file, file.relative_to(path).as_posix())
                    else:
                        skipped[file.suffix.lower()] += 1
        elif path.exists() or path.is_symlink():
            add(path, path.name)
        else:
            raise error(f"{argument}: no such file or folder {str(given)!r}")
    return FoundImages(found, skipped)


def check_headers(paths: Iterable[str], pool: WorkerPool | None = None) -> Iterator[tuple[str, str | None]]:
    """(path, None) for a file Pillow identifies as an image it may decode, else (path, the one-line reason):
    missing, unreadable, not an image, over the decompression-bomb limit. Reads each file's header only (a
    truncated file passes here; decoding it fails later, in `prepare_image`)."""
    from .image_reading import check_image_file

    def check(path):
        try:
            check_image_file(path)
        except UserError as err:
            return path, str(err)
        return path, None

    yield from (pool.map(check, paths) if pool is not None else map(check, paths))


# ---------------------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------------------
@dataclass
class ImageInput:
    """One input as the caller hands it in: a path or an in-memory image, and the name messages use."""

    name: str
    image: object
    tag: object = None  # anything the caller wants back with the output (an output path, a record key, ...)


@dataclass
class Prepared:
    """One input after reading: model pixels (C x H x W) or the error that stopped its reading."""

    position: int  # order in the stream
    source: ImageInput
    pixel_values: object = None  # torch.Tensor
    size: tuple[int, int] | None = None  # the image's own (height, width)
    photo: object = None  # H x W x C pixels as read, when the caller keeps them (pictures)
    error: str | None = None


def prepare_image(source: ImageInput, processor, *, whole_image: bool = False, keep_photo: bool = False,
                  position: int = 0) -> Prepared:
    """Read one input by the rules of `image_reading` (a path is decoded whole and turned upright) and
    preprocess it with `processor`: its own settings, without the centre crop when `whole_image` (the logits
    then cover the whole image). A `UserError` (truncated file, unreadable mode, ...) becomes `error`."""
    from .image_reading import image_pixels, open_image

    try:
        image = source.image
        if isinstance(image, (str, os.PathLike)):
            image = open_image(image, repr(str(source.image)))
        pixels = image_pixels(image, source.name, convert_rgb=processor.setting("do_convert_rgb"),
                              quantise=processor.setting("do_rescale"))
        overrides = {"do_center_crop": False} if whole_image else {}
        pixel_values = processor(images=pixels, input_data_format="channels_last", return_tensors="pt",
                                 **overrides)["pixel_values"][0]
    except (UserError, ValueError) as err:  # ImageError is a UserError; the processor's own checks ValueErrors
        return Prepared(position, source, error=str(err).splitlines()[0])
    return Prepared(position, source, pixel_values, (pixels.shape[0], pixels.shape[1]),
                    pixels if keep_photo else None)


# ---------------------------------------------------------------------------------------------------------
# Workers
# ---------------------------------------------------------------------------------------------------------
def default_workers() -> int:
    """Enough threads to decode with every CPU between forwards (they pause while the model runs when there are
    not enough CPUs for both), at most 8."""
    return max(1, min(8, usable_cpus()))


class WorkerPool:
    """Threads that run the work beside the model (decoding, preprocessing, writing results), each on one torch
    thread. `paused()` holds them back between tasks while a forward runs (`WorkerPool.__doc__` of the
    module: the model's CPU team must not wait for a worker at every operator). `workers=0`: everything runs
    in the calling thread."""

    def __init__(self, workers: int, model_threads: int = 1, name: str = "mobilevit-worker"):
        self.workers = workers
        # pause while the model runs when workers and the model's team would share CPUs
        self.pauses = workers > 0 and workers + model_threads > usable_cpus()
        self._tasks: deque = deque()
        self._condition = threading.Condition()
        self._paused = False
        self._closed = False
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True) for i in range(workers)]
        if workers:
            import torch

            requested = torch.get_num_threads()
            started = threading.Barrier(workers + 1)
            for thread in self._threads:
                thread.start()
            with self._condition:
                for _ in range(workers):
                    self._tasks.append((None, started.wait))
                self._condition.notify_all()
            started.wait()  # every worker has set its own torch threads (see _work)
            # torch.set_num_threads in a thread is that thread's (OpenMP and MKL keep it per thread), but it also
            # sets the default that threads started later begin with: give that back
            torch.set_num_threads(requested)

    def _work(self) -> None:
        import torch

        # this thread's kernels run on itself alone. torch initialises a thread's setting from the process default
        # on its first call, so that comes first: set before it, the 1 would be overwritten by the default
        torch.get_num_threads()
        torch.set_num_threads(1)
        while True:
            with self._condition:
                while not self._closed and (self._paused or not self._tasks):
                    self._condition.wait()
                if self._closed and not self._tasks:
                    return
                future, task = self._tasks.popleft()
            if future is None:
                task()
                continue
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(task())
            except BaseException as err:  # noqa: BLE001 handed to whoever waits for the result
                future.set_exception(err)

    def submit(self, task: Callable, *args) -> Future:
        future: Future = Future()
        if not self.workers:
            try:
                future.set_result(task(*args))
            except BaseException as err:  # noqa: BLE001
                future.set_exception(err)
            return future
        with self._condition:
            if self._closed:
                raise RuntimeError("the worker pool is closed")
            self._tasks.append((future, lambda: task(*args)))
            self._condition.notify()
        return future

    def map(self, task: Callable, items: Iterable, window: int | None = None) -> Iterator:
        """`task(item)` for each item, in order, with at most `window` (default: 4 per worker) submitted ahead."""
        window = window or max(1, 4 * self.workers)
        pending: deque[Future] = deque()
        try:
            for item in items:
                pending.append(self.submit(task, item))
                if len(pending) >= window:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()

    @contextmanager
    def paused(self):
        """Workers take no new task inside the block when they would compete with the model for CPUs."""
        if not self.pauses:
            yield
            return
        with self._condition:
            self._paused = True
        try:
            yield
        finally:
            with self._condition:
                self._paused = False
                self._condition.notify_all()

    def close(self) -> None:
        with self._condition:
            self._closed = True
            self._paused = False
            for future, _ in self._tasks:
                if future is not None:
                    future.cancel()
            self._tasks.clear()
            self._condition.notify_all()
        for thread in self._threads:
            thread.join()

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------------------
# Batching, running and putting back in order
# ---------------------------------------------------------------------------------------------------------
def batches(items: Iterable[Prepared], batch_size: int, max_pending: int | None = None) -> Iterator[list[Prepared]]:
    """Items of one pixel shape grouped into batches of up to `batch_size`; items with an error go alone. At most
    `max_pending` (default: PENDING_BATCHES batches' worth) wait for company; past that the fullest group goes."""
    max_pending = max_pending or PENDING_BATCHES * batch_size
    groups: dict[tuple, list[Prepared]] = {}
    pending = 0
    for item in items:
        if item.error is not None:
            yield [item]
            continue
        shape = tuple(item.pixel_values.shape)
        group = groups.setdefault(shape, [])
        group.append(item)
        pending += 1
        if len(group) == batch_size:
            pending -= len(groups.pop(shape))
            yield group
        elif pending >= max_pending:
            fullest = max(groups, key=lambda s: len(groups[s]))
            group = groups.pop(fullest)
            pending -= len(group)
            yield group
    for group in sorted(groups.values(), key=lambda g: g[0].position):
        yield group


def in_order(results: Iterable, position: Callable = lambda r: r[0].position) -> Iterator:
    """`results` (whose positions are 0, 1, 2, ... in some order) in position order."""
    waiting: list = []
    expected = 0
    for counter, result in enumerate(results):
        heapq.heappush(waiting, (position(result), counter, result))
        while waiting and waiting[0][0] == expected:
            yield heapq.heappop(waiting)[2]
            expected += 1
    while waiting:  # positions with gaps (never from `stream`): the rest in order
        yield heapq.heappop(waiting)[2]


def stream(inputs: Iterable[ImageInput], prepare: Callable[[ImageInput, int], Prepared], runtime, *,
           batch_size: int, pool: WorkerPool) -> Iterator[tuple[Prepared, dict | None]]:
    """(prepared input, its outputs) for every input, in input order: `prepare(input, position)` runs on the
    worker pool, `runtime(pixel_values)` (a batch, B x C x H x W) returns a dict of batched output tensors,
    which are split per image. Items whose reading failed come with None."""
    import torch

    def numbered():
        for position, source in enumerate(inputs):
            yield source, position

    prepared = pool.map(lambda pair: prepare(*pair), numbered(), window=max(batch_size, 4 * pool.workers))

    def run() -> Iterator[tuple[Prepared, dict | None]]:
        for group in batches(prepared, batch_size):
            if group[0].error is not None:
                yield group[0], None
                continue
            pixel_values = torch.stack([item.pixel_values for item in group]) if len(group) > 1 \
                else group[0].pixel_values[None]
            for item in group:
                item.pixel_values = None  # the batch holds them now; dropped with it
            with pool.paused():
                outputs = runtime(pixel_values)
            del pixel_values
            for i, item in enumerate(group):
                yield item, {name: value[i] for name, value in outputs.items()}

    yield from in_order(run())


def check_batch_size(value, error: type[UserError] = UserError, argument: str = "--batch-size") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_BATCH_SIZE:
        raise error(f"{argument}: expected an integer from 1 to {MAX_BATCH_SIZE}, got {value!r}", usage=True)
    return value


def check_workers(value, error: type[UserError] = UserError, argument: str = "--workers") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_WORKERS:
        raise error(f"{argument}: expected an integer from 0 (read in the main thread) to {MAX_WORKERS}, got "
                    f"{value!r}", usage=True)
    return value


__all__ = ["ImageFile", "FoundImages", "find_images", "check_headers", "ImageInput", "Prepared", "prepare_image",
           "WorkerPool", "default_workers", "batches", "in_order", "stream", "check_batch_size",
           "check_workers", "MAX_BATCH_SIZE", "MAX_WORKERS", "DEFAULT_BATCH_SIZE"]
