"""`mobilevit predict IMAGE_OR_FOLDER... --model DIR`: classify, segment or detect objects in image files with a saved
model, from a few photos to folders of any size.

Inputs: files (whatever their extension) and folders (searched recursively; files without an image extension
are left out and counted in one line). Images stream through `mobilevit.inference`: decoded and preprocessed
by worker threads, batched (`--batch-size`), run by the chosen runtime (`--runtime`, `mobilevit.runtimes`),
and their results written as they come, so memory does not grow with the number of images.

What each task writes is data (`TaskWriter` in `WRITERS`; a task is one more entry):

- classification prints the top-k labels with their probabilities, and with `--output-dir` writes one JSON
  line per image to `predictions.jsonl`;
- segmentation writes, per image, a palette PNG whose pixel values are the class ids (`<name>_mask.png`) and a
  picture of the photo beside the mask overlaid on it with a legend (`<name>_segmentation.png`), prints the
  share of pixels of every class present and writes its JSON line. Images keep their own size: the
  processor's resize (shortest edge), no centre crop, and the logits resized back onto the whole image;
- detection writes, per image, the photo with a labelled box per detection (`<name>_detections.png`) and its JSON
  line (label, score, box in the photo's pixels), and prints them. The whole image is squashed to the model's
  size (ml-cvnets' evaluation) and the boxes map back onto the photo; `--threshold` (default 0.5, as
  transformers' pipeline) keeps the confident ones, `--max-detections` caps their number.

`--json` prints one JSON document (a list, streamed) instead of text.

Results are appended to `predictions.jsonl.partial` (one per process: `.rank<N>.partial`) as they come and
moved into `predictions.jsonl`, in input order, when every image is done. A run that is killed keeps every
finished line (and its masks); `--resume` continues it, skipping the images it finished, and the merged file
equals an uninterrupted run's. Under `torchrun` / `accelerate launch` each process predicts its own share of
the images and the first one merges the shares into the one file.

Everything is checked before the model runs (`check_arguments`, then the model folder, the inputs, every
image's header and the outputs); a mistake ends with one line on stderr, `mobilevit predict: error: ...`, and
nothing is written. A file whose data is truncated (only a full decode finds that) stops the run with one
line naming it, or with `--skip-bad-images` is left out and listed. Arguments are read and checked before
torch and transformers are imported.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

from . import limits  # light: no torch (arguments are checked before the heavy imports)
from .errors import UserError
from .tasks import CLASSIFICATION, OBJECT_DETECTION, SEGMENTATION, canonical_task

DEFAULT_OUTPUT_DIR = "predictions"  # where pictures go when --output-dir is not given
RESULTS_FILE = "predictions.jsonl"
MAX_PALETTE_CLASSES = 256
DEFAULT_DETECTION_THRESHOLD = 0.5  # transformers' object-detection pipeline's
MAX_THREADS = 1024
DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")  # what predict runs on
# torch's other device types (`torch.device` takes them; predict does not run there)
OTHER_TORCH_DEVICE_TYPES = ("meta", "hip", "hpu", "ipu", "xla", "lazy", "maia", "mtia", "ve", "fpga", "vulkan",
                            "mkldnn", "opengl", "opencl", "ideep", "privateuseone")


class PredictError(UserError):
    """A `predict` argument or input that cannot be used; the message is the one line shown to the user."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER",
                        help="image files (JPEG, PNG, ...; any mode) and folders of them (searched recursively)")
    parser.add_argument("--model", required=True, metavar="DIR",
                        help="a folder saved by mobilevit (train, convert, save_pretrained) or a Hub repository id")
    parser.add_argument("--task", default="auto",
                        help="auto (from the config's architectures), image-classification, semantic-segmentation or "
                             "object-detection")
    parser.add_argument("--top-k", type=int, default=5, metavar="K", help="classification: labels to show")
    parser.add_argument("--threshold", type=float, default=DEFAULT_DETECTION_THRESHOLD, metavar="SCORE",
                        help="detection: keep detections scoring above this, in [0, 1] (transformers' object-detection "
                             "pipeline's default)")
    parser.add_argument("--max-detections", type=int, default=None, metavar="N",
                        help="detection: at most N boxes per image, the best (default: the model's post-processing "
                             "rule's cap, if any)")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON document")
    parser.add_argument("--output-dir", metavar="DIR", default=None,
                        help=f"where {RESULTS_FILE} (and segmentation masks, pictures) go; default "
                             f"./{DEFAULT_OUTPUT_DIR} for segmentation and detection, nothing written for "
                             "classification")
    parser.add_argument("--overwrite", action="store_true", help="replace output files that already exist")
    parser.add_argument("--resume", action="store_true",
                        help="continue a run that was killed or stopped: images with a result in --output-dir are "
                             "skipped")
    parser.add_argument("--skip-bad-images", action="store_true",
                        help="leave out images that cannot be read (truncated files, ...) and list them, instead of "
                             "stopping")
    parser.add_argument("--batch-size", type=int, default=None, metavar="N",
                        help="images per forward (default: 8 for classification and detection, 1 for segmentation)")
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="threads that decode and preprocess images beside the model (default: one per CPU, "
                             "at most 8; 0: in the main thread)")
    parser.add_argument("--runtime", default="pytorch", choices=("pytorch", "onnxruntime", "openvino"),
                        help="what runs the model: PyTorch, or its exported artefact (exported once, cached, checked "
                             "against PyTorch on the first batch)")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="CPU threads of the model's runtime (default: torch's, one per CPU)")
    parser.add_argument("--device", default="cpu", help="torch device to run on: cpu, cuda, cuda:1, mps, ...")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


# -- checks before any work: the arguments alone (torch is not imported yet) ------------------------------------
def check_arguments(args: argparse.Namespace) -> None:
    """The one place where predict's arguments are checked on their own, before anything heavy is imported."""
    from .inference import check_batch_size, check_workers
    from .runtimes import check_runtime_name

    limits.check_results_per_image("--top-k", args.top_k, PredictError)
    limits.check_number("--threshold", args.threshold, 0.0, 1.0, error=PredictError)  # a score; NaN fails too
    if args.max_detections is not None:
        limits.check_results_per_image("--max-detections", args.max_detections, PredictError)
    if args.task != "auto":
        try:
            args.task = canonical_task(args.task, allowed=tuple(WRITERS))
        except ValueError as err:
            raise PredictError(f"--{err}", usage=True) from None
    if args.batch_size is not None:
        check_batch_size(args.batch_size, PredictError)
    if args.workers is not None:
        check_workers(args.workers, PredictError)
    if args.threads is not None and not 1 <= args.threads <= MAX_THREADS:
        raise PredictError(f"--threads: expected an integer from 1 to {MAX_THREADS}, got {args.threads}", usage=True)
    check_runtime_name(args.runtime)
    check_device_name(args.device)
    if args.resume and args.overwrite:
        raise PredictError("--resume: continues the results in --output-dir, --overwrite replaces them; pass one",
                           usage=True)
    if args.resume and args.output_dir is None and args.task == CLASSIFICATION:
        raise PredictError("--resume: expected --output-dir, where the results of the run to continue are",
                           usage=True)


def check_device_name(name: str) -> None:
    """A device written the way torch writes one, of a type predict runs on (whether this machine has it is
    checked once torch is loaded, `check_device`)."""
    if not re.fullmatch(r"[a-z_]+(:\d+)?", name) or name.split(":")[0] not in DEVICE_TYPES + OTHER_TORCH_DEVICE_TYPES:
        raise PredictError(f"--device: expected a torch device such as cpu, cuda, cuda:1 or mps, got {name!r}",
                           usage=True)
    if name.split(":")[0] not in DEVICE_TYPES:
        raise PredictError(f"--device: expected one of {', '.join(DEVICE_TYPES)} (with an index), got {name!r}",
                           usage=True)


def check_device(name: str):
    """The torch device `name`, if this machine has it, or a one-line error."""
    import torch

    device = torch.device(name)
    backends = {"cpu": None, "cuda": torch.cuda, "mps": torch.backends.mps, "xpu": getattr(torch, "xpu", None)}
    backend = backends[device.type]
    if backend is not None and not (backend.is_available() if hasattr(backend, "is_available") else False):
        raise PredictError(f"--device: expected a device this machine has, got {name!r} (torch sees no "
                           f"{device.type} device here)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise PredictError(f"--device: expected a device this machine has, got {name!r} (torch sees "
                           f"{torch.cuda.device_count()} cuda devices)")
    return device


# -- what each task writes --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TaskWriter:
    """How one task's predictions leave `predict`. `record(context, item, outputs, files)` turns one image's
    outputs (a dict of tensors, batch axis removed) into its JSON record, writing `files` (suffix -> path) on the
    way; `text(record)` is what is printed for it. Records are made on the worker threads."""

    whole_image: bool  # preprocess without the centre crop: outputs map back onto the whole image
    keeps_photo: bool  # the decoded image travels with its pixels (pictures need it)
    files: tuple[str, ...]  # per image, the suffixes of the files written into --output-dir
    default_output_dir: str | None  # where files go without --output-dir (None: results only printed)
    record: Callable
    text: Callable


@dataclass
class Context:
    """What records are made from besides an image's outputs."""

    config: object
    processor: object
    top_k: int
    threshold: float = DEFAULT_DETECTION_THRESHOLD
    max_detections: int | None = None
    palette: object = None
    replace: bool = False  # files already there may be replaced (--overwrite, --resume); else a clash is an error


def write_output(context: Context, path: Path, data: bytes) -> None:
    """One of an image's files, written whole; an existing file only replaced when `context.replace`."""
    from .file_utils import write_file_atomically

    write_file_atomically(path, data, overwrite=context.replace, argument="--output-dir", error=PredictError)


def check_finite(item, *tensors) -> None:
    """A model whose outputs hold NaN or infinity gives an error, never labels, masks or boxes."""
    if not all(bool(tensor.isfinite().all()) for tensor in tensors):
        raise PredictError(f"image {item.source.name!r}: the model's outputs hold NaN or infinity")


def classification_record(context: Context, item, outputs: dict, files: dict) -> dict:
    check_finite(item, outputs["logits"])
    probabilities = outputs["logits"].float().softmax(-1)
    scores, indices = probabilities.topk(min(context.top_k, probabilities.numel()))
    return {"image": item.source.name,
            "predictions": [{"label": context.config.id2label[int(i)], "score": float(s)}
                            for s, i in zip(scores, indices)]}


def classification_text(record: dict) -> list[str]:
    return [record["image"], *(f"  {p['score']:.4f}  {p['label']}" for p in record["predictions"])]


def segmentation_record(context: Context, item, outputs: dict, files: dict) -> dict:
    check_finite(item, outputs["logits"])
    class_map = context.processor.post_process_semantic_segmentation(
        outputs["logits"][None].float(), target_sizes=[item.size])[0].numpy()
    areas = class_areas(class_map, context.config.id2label)
    write_output(context, files["_mask.png"], palette_png(class_map, context.palette))
    write_output(context, files["_segmentation.png"],
                 segmentation_figure(_display_rgb(item.photo), class_map, context.palette, areas))
    return {"image": item.source.name, "mask": str(files["_mask.png"]), "figure": str(files["_segmentation.png"]),
            "areas": areas}


def segmentation_text(record: dict) -> list[str]:
    return [record["image"], *(f"  {a['percent']:6.2f}%  {a['label']}" for a in record["areas"]),
            f"  mask: {record['mask']}", f"  figure: {record['figure']}"]


def detection_record(context: Context, item, outputs: dict, files: dict) -> dict:
    check_finite(item, outputs["scores"], outputs["boxes"])
    found = context.processor.post_process_decoded_detections(
        outputs["scores"][None].float(), outputs["boxes"][None].float(), threshold=context.threshold,
        target_sizes=[item.size], top_k=context.max_detections)[0]
    order = found["scores"].argsort(descending=True, stable=True).tolist()
    detections = [{"label": context.config.id2label[int(found["labels"][i])], "class_id": int(found["labels"][i]),
                   "score": float(found["scores"][i]),
                   "box": dict(zip(("xmin", "ymin", "xmax", "ymax"), (round(float(v), 2) for v in found["boxes"][i])))}
                  for i in order]
    write_output(context, files["_detections.png"], detections_picture(_display_rgb(item.photo), detections,
                                                                       context.palette))
    return {"image": item.source.name, "figure": str(files["_detections.png"]), "detections": detections}


def detection_text(record: dict) -> list[str]:
    lines = [record["image"]]
    for found in record["detections"]:
        box = found["box"]
        lines.append(f"  {found['score']:.4f}  {found['label']}  ({box['xmin']:.1f}, {box['ymin']:.1f}, "
                     f"{box['xmax']:.1f}, {box['ymax']:.1f})")
    return [*lines, f"  figure: {record['figure']}"]


WRITERS: dict[str, TaskWriter] = {
    CLASSIFICATION: TaskWriter(whole_image=False, keeps_photo=False, files=(), default_output_dir=None,
                               record=classification_record, text=classification_text),
    SEGMENTATION: TaskWriter(whole_image=True, keeps_photo=True, files=("_mask.png", "_segmentation.png"),
                             default_output_dir=DEFAULT_OUTPUT_DIR, record=segmentation_record, text=segmentation_text),
    # the processor of a detector has no centre crop: the whole image is squashed to the model's size
    OBJECT_DETECTION: TaskWriter(whole_image=True, keeps_photo=True, files=("_detections.png",),
                                 default_output_dir=DEFAULT_OUTPUT_DIR, record=detection_record, text=detection_text),
}


# -- the command ------------------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    check_arguments(args)
    if args.output_dir is not None:
        from .file_utils import check_output_dir

        check_output_dir(args.output_dir, "--output-dir", _model_folder(args), replaces=False, error=PredictError)
    processes = Processes.from_environment()
    if processes.world > 1 and args.output_dir is None:
        raise PredictError(f"--output-dir: expected a folder when {processes.world} processes share the work (their "
                           "results are merged into one file there)", usage=True)
    device = processes.device(check_device(args.device))
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from . import auto

    with auto.quiet_transformers():
        model, processor, task = _load(args)
    writer = WRITERS[task]
    from .inference import DEFAULT_BATCH_SIZE

    args.batch_size = args.batch_size or DEFAULT_BATCH_SIZE[task]
    plan = plan_outputs(args, task, writer)
    job = PredictJob(args, model, processor, task, writer, plan, processes, device)
    try:
        with claim_output_dir(plan, processes):
            plan.refuse_existing(replacing=args.overwrite or args.resume)  # again, under the claim
            return job.run()
    finally:
        processes.close()


def claim_output_dir(plan: OutputPlan, processes: Processes):
    """This run's claim on its output folder (`file_utils.claim_output`), taken before anything is written there:
    no other run writes into it meanwhile (one that does already is named in a one-line error), and a run that
    starts later is refused. Under `torchrun` the first process claims it for all of them.

    The folder is claimed, not committed whole at the end as other commands' outputs are: its results stream
    in as they come (`predictions.jsonl.partial`, masks, pictures) so that a killed run keeps them and
    `--resume` continues it, which an output that appears only when the run ends could not offer. What remains
    of "written whole": the results file itself is merged and renamed into place whole, each picture and mask is
    written whole, and nothing already there is replaced unless --overwrite or --resume."""
    if plan.output_dir is None:
        return nullcontext()
    from .file_utils import claim_output

    processes.barrier()  # every process has checked the outputs (a check that would see the first one's claim)
    claim, failure = nullcontext(), None
    if processes.rank == 0:
        try:
            claim = claim_output(plan.output_dir, "--output-dir", error=PredictError)
        except PredictError as err:
            failure = str(err)
    failure = processes.from_first(failure)  # every process stops, not only the one that could not claim
    if failure is not None:
        raise PredictError(failure)
    return claim


def _model_folder(args) -> list[tuple[str, str]]:
    return [("--model", args.model)] if Path(args.model).is_dir() else []


def _load(args):
    """The model, processor and task of --model. --task fills in a task the config does not name; it may not
    contradict one it names (the head's weights would be missing, and the predictions random)."""
    from . import auto

    config = auto.load_config(args.model)
    try:
        named = auto.task_of(config, args.model)
    except auto.NotAModelError:
        if args.task == "auto":
            raise
        named = None
    if named is not None and args.task not in ("auto", named):
        raise PredictError(f"--task: expected {named} (what {str(args.model)!r} holds, its config's architectures "
                           f"{config.architectures}), got {args.task}", usage=True)
    model, processor, task = auto.load_model_and_processor(args.model, named or args.task)
    if task not in WRITERS:
        raise PredictError(f"--model: expected a model with one of the heads {sorted(WRITERS)}, got "
                           f"{str(args.model)!r}, a {task} model (a backbone without a head)")
    if task == SEGMENTATION and model.config.num_labels > MAX_PALETTE_CLASSES:
        raise PredictError(f"--model: expected at most {MAX_PALETTE_CLASSES} classes (the masks are palette PNGs), "
                           f"got {model.config.num_labels}")
    return model, processor, task


# -- outputs ------------------------------------------------------------------------------------------------------
@dataclass
class OutputPlan:
    """The inputs and the files predict will write, checked before any work."""

    images: list  # inference.ImageFile, in input order
    skipped_line: str | None  # what the folders held besides images
    output_dir: Path | None
    files: dict  # image path -> {suffix: output path}

    @property
    def results(self) -> Path | None:
        return self.output_dir / RESULTS_FILE if self.output_dir is not None else None

    def refuse_existing(self, replacing: bool) -> None:
        """Unless `replacing` (--overwrite, or --resume, which continues the results and replaces the files of
        the images it redoes), none of the outputs may exist: checked while planning, and again once the output
        folder is claimed."""
        if self.output_dir is None or replacing:
            return
        planned = [*(path for outputs in self.files.values() for path in outputs.values()), self.results]
        existing = next((p for p in (*planned, *partial_results(self.output_dir)) if p.exists()), None)
        if existing is not None:
            raise PredictError(f"output {str(existing)!r} already exists (pass --resume to continue the run that wrote "
                               "it, or --overwrite to replace it)")


def plan_outputs(args, task: str, writer: TaskWriter) -> OutputPlan:
    """The images and their output files: for each image the task's files, named after the image (its path below
    the folder argument it came from, so images of the same name in different sub-folders stay apart), and the
    results file. No two images may share an output, no output may be an input, and none may exist unless
    --overwrite or --resume (which continues the results, and replaces the files of the images it redoes)."""
    from .file_utils import check_name_fits, check_output_dir, check_output_files
    from .inference import find_images

    found = find_images(args.images, PredictError)
    if not found.files:
        raise PredictError(f"images: expected image files, found none in {', '.join(map(repr, args.images))}"
                           + (f" ({found.skipped_line()})" if found.skipped else ""))
    if args.output_dir is None and writer.default_output_dir is not None:
        args.output_dir = writer.default_output_dir
        check_output_dir(args.output_dir, "--output-dir", _model_folder(args), replaces=False, error=PredictError)
    output_dir = Path(args.output_dir) if args.output_dir is not None else None
    inputs = {os.path.realpath(image.path) for image in found.files}
    files, owners = {}, {}
    for image in found.files:
        stem = str(Path(image.relative).with_suffix(""))
        files[image.path] = {suffix: output_dir / f"{stem}{suffix}" for suffix in writer.files}
        for path in files[image.path].values():
            if path in owners:
                raise PredictError(f"images: {owners[path]!r} and {image.path!r} would both write {str(path)!r} (their "
                                   "names differ only in the extension); predict them separately", usage=True)
            owners[path] = image.path
    planned = [*owners, *([output_dir / RESULTS_FILE] if output_dir is not None else [])]
    for path in planned:
        if os.path.realpath(path) in inputs:
            raise PredictError(f"--output-dir: expected outputs that are not inputs, but {str(path)!r} is one of the "
                               "images", usage=True)
        if path.is_dir():
            raise PredictError(f"output {str(path)!r} is a folder, expected a file (or nothing) there")
        check_name_fits(path, "--output-dir", PredictError)
    if output_dir is not None:  # no dangling link, a killed run's leftovers put right, no other run writing there
        check_output_files([output_dir / RESULTS_FILE], "--output-dir", overwrite=True, error=PredictError)
    plan = OutputPlan(found.files, found.skipped_line(), output_dir, files)
    plan.refuse_existing(replacing=args.overwrite or args.resume)
    return plan


def partial_results(output_dir: Path) -> list[Path]:
    """Results files of unfinished runs (one per process) in `output_dir`."""
    return sorted(output_dir.glob(RESULTS_FILE + "*.partial")) if output_dir.is_dir() else []


def partial_path(output_dir: Path, processes: Processes) -> Path:
    suffix = f".rank{processes.rank}" if processes.world > 1 else ""
    return output_dir / f"{RESULTS_FILE}{suffix}.partial"


def read_records(path: Path):
    """(image, offset, length) of every whole JSON line of a results file, in file order; a line cut off by a kill
    (the last one) is not a result. Only the names are kept: a results file can hold millions of lines."""
    offset = 0
    with open(path, "rb") as file:
        for line in file:
            if not line.endswith(b"\n"):
                break
            try:
                record = json.loads(line)
            except ValueError:
                break
            if isinstance(record, dict) and isinstance(record.get("image"), str):
                yield record["image"], offset, len(line)
            offset += len(line)


def image_key(name: str) -> str:
    return os.path.realpath(name)


# -- several processes ---------------------------------------------------------------------------------------------
class Processes:
    """This process's place among those `torchrun` / `accelerate launch` started (RANK, WORLD_SIZE, LOCAL_RANK in
    the environment), with a barrier through torch.distributed (gloo; initialised here when the launcher has
    not). One process: rank 0 of 1, and nothing to wait for."""

    def __init__(self, rank: int = 0, world: int = 1, local_rank: int = 0):
        self.rank, self.world, self.local_rank = rank, world, local_rank
        self._owns_group = False

    @classmethod
    def from_environment(cls) -> Processes:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        processes = cls(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))
        import datetime

        import torch.distributed as dist

        if not dist.is_initialized():
            # gloo carries the barriers, whatever device the model runs on; predictions can take hours
            dist.init_process_group("gloo", timeout=datetime.timedelta(hours=24))
            processes._owns_group = True
        return processes

    def device(self, device):
        """`cuda` without an index means this process's GPU (LOCAL_RANK)."""
        import torch

        if self.world > 1 and device.type == "cuda" and device.index is None:
            return torch.device("cuda", self.local_rank)
        return device

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def from_first(self, value):
        """`value` as the first process has it (each process passes its own; one process: its own)."""
        if self.world == 1:
            return value
        import torch.distributed as dist

        shared = [value]
        dist.broadcast_object_list(shared, src=0)
        return shared[0]

    def close(self) -> None:
        if self._owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()
            self._owns_group = False


# -- the run ---------------------------------------------------------------------------------------------------------
class PredictJob:
    """One run of predict, its inputs and outputs planned and checked."""

    def __init__(self, args, model, processor, task, writer: TaskWriter, plan: OutputPlan, processes: Processes,
                 device):
        self.args, self.model, self.processor, self.task, self.writer = args, model, processor, task, writer
        self.plan, self.processes, self.device = plan, processes, device

    def note(self, line: str) -> None:
        """A line about the run (not a result) on stderr, from the first process only."""
        if self.processes.rank == 0:
            print(line, file=sys.stderr, flush=True)

    def run(self) -> int:
        from .inference import WorkerPool, default_workers

        args, plan = self.args, self.plan
        if plan.skipped_line:
            self.note(plan.skipped_line)
        done = self.finished_images()
        self.processes.barrier()  # every process has read what is done before anyone adds to it
        todo = [image for image in plan.images if image_key(image.path) not in done]
        if done:
            self.note(f"resuming: {len(plan.images) - len(todo)} of {len(plan.images)} images already have results")
        workers = args.workers if args.workers is not None else default_workers()
        import torch

        model_threads = 0 if self.device.type != "cpu" else torch.get_num_threads()  # the runtime's, on the CPU
        with WorkerPool(workers, model_threads=model_threads) as pool:
            todo, bad = self.check_headers(todo, pool)  # before the runtime, which may export for a minute
            runtime = self.load_runtime()
            mine = todo[self.processes.rank::self.processes.world]
            started = time.perf_counter()
            skipped = self.predict(mine, runtime, pool)
            seconds = time.perf_counter() - started
        for path, reason in (bad if self.processes.rank == 0 else []) + skipped:  # every process checked all headers
            print(f"skipped {path}: {reason}", file=sys.stderr)
        if bad or skipped:
            self.note(f"skipped {len(bad) + len(skipped)} images that cannot be read (--skip-bad-images)")
        self.processes.barrier()  # every share is done
        if plan.output_dir is not None and self.processes.rank == 0:
            count = self.merge_results()
            rate = f", {len(mine) / seconds:.1f} images/s" if seconds > 0 and mine else ""
            self.note(f"{count} results in {plan.results} (this process: {len(mine)} images in {seconds:.1f} s{rate}, "
                      f"{runtime.describe()}, batch {args.batch_size}, {workers} workers)")
        return 0

    # -- resuming ----------------------------------------------------------------------------------------------
    def finished_images(self) -> set[str]:
        """Images with a result in the output folder: from its results file and every process's partial file.
        Without --resume (the outputs were checked to be absent, or --overwrite replaces them) nothing is done."""
        plan = self.plan
        if plan.output_dir is None:
            return set()
        sources = [plan.results, *partial_results(plan.output_dir)]
        if not self.args.resume:
            if self.processes.rank == 0:
                for path in sources[1:]:  # --overwrite: an unfinished run's results go
                    path.unlink(missing_ok=True)
            return set()
        return {image_key(image) for path in sources if path.is_file() for image, _, _ in read_records(path)}

    def merge_results(self) -> int:
        """The results file and every partial file, merged into the results file in input order (an image once;
        results of images no longer among the inputs stay, after them), written whole; the partial files go. The
        results file of an earlier run takes part when this run continues it (--resume), not when it replaces it."""
        from .file_utils import claim_of, write_file_atomically

        plan = self.plan
        sources = [p for p in (*partial_results(plan.output_dir), *([plan.results] if self.args.resume else []))
                   if p.is_file()]
        order = {image_key(image.path): i for i, image in enumerate(plan.images)}
        lines, seen = [], set()  # (input order, file order, source, offset, length): the lines are copied, not held
        for source, path in enumerate(sources):
            for image, offset, length in read_records(path):
                key = image_key(image)
                if key not in seen:
                    seen.add(key)
                    lines.append((order.get(key, len(order)), len(lines), source, offset, length))
        lines.sort()
        files = [open(path, "rb") for path in sources]
        try:
            def merged():
                for *_, source, offset, length in lines:
                    files[source].seek(offset)
                    yield files[source].read(length)

            # the claim is still this run's (checked as other commands' commits check it); an earlier results
            # file is replaced only when this run continues it (--resume) or was told to (--overwrite)
            claim = claim_of(plan.output_dir)
            if claim is not None:
                claim.verify("--output-dir", PredictError)
            write_file_atomically(plan.results, merged(), overwrite=self.args.overwrite or self.args.resume,
                                  argument="--output-dir", error=PredictError)
        finally:
            for file in files:
                file.close()
        for path in sources:
            if path != plan.results:
                path.unlink()
        return len(lines)

    # -- the work -------------------------------------------------------------------------------------------------
    def load_runtime(self):
        from .runtimes import load_runtime

        def build():
            return load_runtime(self.args.runtime, self.model, self.processor, whole_image=self.writer.whole_image,
                                device=self.device, threads=self.args.threads, log=self.note)

        if self.processes.rank == 0:  # exports into the cache once; the others find it there
            runtime = build()
            self.processes.barrier()
        else:
            self.processes.barrier()
            runtime = build()
        return runtime

    def check_headers(self, images: list, pool) -> tuple[list, list[tuple[str, str]]]:
        """Every image's header read (missing, unreadable, not an image, too large): with --skip-bad-images the
        bad ones are left out and returned, else the first is a one-line error. Every process checks every image,
        so all agree on the shares."""
        from .inference import check_headers

        bad = {path: reason for path, reason in check_headers((image.path for image in images), pool) if reason}
        if bad and not self.args.skip_bad_images:
            first = next(image.path for image in images if image.path in bad)
            more = f" (and {len(bad) - 1} more; --skip-bad-images leaves them out)" if len(bad) > 1 else ""
            raise PredictError(bad[first] + more)
        return [image for image in images if image.path not in bad], list(bad.items())

    def predict(self, images: list, runtime, pool) -> list[tuple[str, str]]:
        """Predict `images` and write their results as they come; returns the images left out (--skip-bad-images)."""
        from collections import deque

        from tqdm.auto import tqdm

        from .inference import ImageInput, prepare_image, stream

        args, writer, plan = self.args, self.writer, self.plan
        context = Context(self.model.config, self.processor, args.top_k, args.threshold, args.max_detections,
                          color_palette(max(self.model.config.num_labels, 2)) if writer.files else None,
                          replace=args.overwrite or args.resume)
        printer = ResultPrinter(args.json, enabled=self.processes.world == 1)  # several: the merged file holds them
        partial = None
        if plan.output_dir is not None:
            plan.output_dir.mkdir(parents=True, exist_ok=True)
            partial = open(partial_path(plan.output_dir, self.processes), "ab")
            _drop_cut_off_line(partial)
        inputs = (ImageInput(image.path, image.path, plan.files.get(image.path, {})) for image in images)

        def prepare(source, position):
            return prepare_image(source, self.processor, whole_image=writer.whole_image,
                                 keep_photo=writer.keeps_photo, position=position)

        def make_record(item, outputs):
            return writer.record(context, item, outputs, item.source.tag)

        skipped, pending, written = [], deque(), [0]
        bar = tqdm(total=len(images), unit="img", desc="predict", dynamic_ncols=True,
                   disable=True if args.no_progress or self.processes.rank != 0 else None)

        def emit(future) -> None:
            record = future.result()
            if partial is not None:
                partial.write(_json_line(record))
                partial.flush()
            written[0] += 1
            printer.add(record, writer.text)
            bar.update(1)

        try:
            for item, outputs in stream(inputs, prepare, runtime, batch_size=args.batch_size, pool=pool):
                if item.error is not None:
                    while pending:
                        emit(pending.popleft())
                    if not args.skip_bad_images:
                        kept = f"; the {written[0]} results before it are kept in {partial.name}, --resume " \
                            "continues" if partial is not None and written[0] else ""
                        raise PredictError(f"{item.error}{kept} (--skip-bad-images leaves such images out)")
                    skipped.append((item.source.name, item.error))
                    bar.update(1)
                    continue
                pending.append(pool.submit(make_record, item, outputs))
                while pending and (pending[0].done() or len(pending) > 2 * args.batch_size):
                    emit(pending.popleft())
            while pending:
                emit(pending.popleft())
        finally:
            for future in pending:
                future.cancel()
            bar.close()
            printer.close()
            if partial is not None:
                partial.close()
        return skipped


def _json_line(record: dict) -> bytes:
    return (json.dumps(record, ensure_ascii=False) + "\n").encode()


def _drop_cut_off_line(file) -> None:
    """A results file open for appending loses a last line that a kill cut off, so new lines start whole."""
    path = file.name
    size = os.path.getsize(path)
    if not size:
        return
    with open(path, "rb") as reader:
        reader.seek(max(0, size - (1 << 16)))
        tail = reader.read()
    if tail.endswith(b"\n"):
        return
    keep = size - len(tail) + tail.rfind(b"\n") + 1 if b"\n" in tail else 0
    if keep == 0 and size > len(tail):  # a line longer than the tail looked at: find its start
        with open(path, "rb") as reader:
            content = reader.read()
        keep = content.rfind(b"\n") + 1
    os.truncate(path, keep)


class ResultPrinter:
    """Results on stdout as they come: text lines, or one JSON document (a list) written item by item. The
    progress bar (stderr) is cleared around each write."""

    def __init__(self, as_json: bool, enabled: bool = True):
        self.as_json, self.enabled, self.count = as_json, enabled, 0

    def _write(self, text: str) -> None:
        from tqdm.auto import tqdm

        tqdm.write(text, file=sys.stdout, end="")

    def add(self, record: dict, text: Callable) -> None:
        if not self.enabled:
            return
        if self.as_json:
            body = "\n".join("  " + line for line in json.dumps(record, indent=2).splitlines())
            self._write(("[\n" if self.count == 0 else ",\n") + body)
        else:
            self._write("\n".join(text(record)) + "\n")
        self.count += 1

    def close(self) -> None:
        if self.enabled and self.as_json:
            self._write("\n]\n" if self.count else "[]\n")
        sys.stdout.flush()


# -- pictures ------------------------------------------------------------------------------------------------------
def class_areas(class_map, id2label: dict) -> list[dict]:
    """Share of the pixels of every class present, largest first."""
    import numpy as np

    ids, counts = np.unique(class_map, return_counts=True)
    order = np.argsort(-counts, kind="stable")
    return [{"label": id2label[int(ids[i])], "class_id": int(ids[i]), "percent": 100.0 * counts[i] / class_map.size}
            for i in order]


def _display_rgb(pixels):
    """H x W x 3 uint8 RGB for showing the image (grey repeated, a fourth channel left out; float pixels of
    do_rescale=False stretched to their range)."""
    import numpy as np

    values = pixels.numpy()
    values = np.repeat(values, 3, axis=2) if values.shape[2] == 1 else values[:, :, :3]
    if pixels.dtype.is_floating_point:
        low, high = float(values.min()), float(values.max())
        values = (values - low) / (high - low) * 255 if high > low else np.zeros_like(values)
        return np.rint(values).astype(np.uint8)
    return np.ascontiguousarray(values, dtype=np.uint8)


def color_palette(num_classes: int):
    """(num_classes, 3) uint8 colours: the PASCAL VOC colour map (class 0 black, then distinct colours),
    which segmentation users recognise; it spreads the bits of the class id over the three channels."""
    import numpy as np

    palette = np.zeros((num_classes, 3), dtype=np.uint8)
    for class_id in range(num_classes):
        value, shift = class_id, 7
        while value:
            for channel in range(3):
                palette[class_id, channel] |= ((value >> channel) & 1) << shift
            value >>= 3
            shift -= 1
    return palette


def palette_png(class_map, palette) -> bytes:
    """A mode-P PNG: each pixel's value is its class id, shown in the palette's colour."""
    import io

    import numpy as np
    from PIL import Image

    if palette.shape[0] > MAX_PALETTE_CLASSES:
        raise ValueError(f"num_labels: a palette PNG holds at most {MAX_PALETTE_CLASSES} classes, got "
                         f"{palette.shape[0]}")
    mask = Image.fromarray(class_map.astype(np.uint8), mode="P")
    mask.putpalette(palette.reshape(-1).tolist())
    buffer = io.BytesIO()
    mask.save(buffer, format="PNG")
    return buffer.getvalue()


FIGURE_MAX_SIDE = 512  # each panel's longest side: larger photos are shown smaller (the mask keeps every pixel)
OVERLAY_WEIGHT = 141  # of 256: the class colour's share in the overlay (0.55), the photo's the rest


def segmentation_figure(photo, class_map, palette, areas: list[dict]) -> bytes:
    """PNG: the photo (H x W x 3 uint8), then the colour mask blended over it, then a legend with each class's
    share. Drawn with Pillow at the panels' size, in 8-bit integers (it is made for every image: a matplotlib
    figure took 0.5 s for a 1024x768 photo)."""
    import io

    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    height, width = class_map.shape
    scale = min(1.0, FIGURE_MAX_SIDE / max(height, width))
    panel = (max(1, round(width * scale)), max(1, round(height * scale)))
    shown = np.asarray(Image.fromarray(photo).resize(panel, Image.BILINEAR)) if scale < 1 else photo
    classes = np.asarray(Image.fromarray(class_map.astype(np.uint8)).resize(panel, Image.NEAREST)) if scale < 1 \
        else class_map
    overlay = ((shown.astype(np.uint16) * (256 - OVERLAY_WEIGHT)
                + palette[classes].astype(np.uint16) * OVERLAY_WEIGHT) >> 8).astype(np.uint8)
    try:
        font = ImageFont.load_default(size=14)
    except TypeError:  # Pillow without FreeType: its fixed bitmap font
        font = ImageFont.load_default()
    margin, title, row = 10, 24, 22
    legend_width = 40 + max((int(font.getlength(_legend_text(a))) for a in areas), default=0)
    canvas = Image.new("RGB", (3 * margin + 2 * panel[0] + legend_width + margin,
                               max(title + panel[1], title + row * len(areas)) + 2 * margin), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (picture, caption) in enumerate(((shown, "photo"), (overlay, "predicted classes"))):
        left = margin + i * (panel[0] + margin)
        canvas.paste(Image.fromarray(np.ascontiguousarray(picture)), (left, margin + title))
        draw.text((left, margin), caption, fill="black", font=font)
    left = 3 * margin + 2 * panel[0]
    for i, area in enumerate(areas):
        top = margin + title + i * row
        draw.rectangle((left, top + 2, left + 16, top + 18), fill=tuple(int(c) for c in palette[area["class_id"]]),
                       outline="black")
        draw.text((left + 24, top + 2), _legend_text(area), fill="black", font=font)
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def box_line_width(height: int, width: int) -> int:
    """Outline width of a drawn box: 2 pixels, more on large photos (a 0.3 % of the longer side)."""
    return max(2, round(max(height, width) / 300))


def detections_picture(photo, detections: list[dict], palette, scores: bool = True) -> bytes:
    """PNG: the photo (H x W x 3, uint8, or floats in [0, 1]) at its own size, each detection's box outlined in its
    class's colour (the PASCAL VOC palette; the box's pixel edges are the outline's outer edges) and labelled with
    its class and score (`scores=False`: the class only, for true boxes) on a filled tag above it (inside when
    there is no room)."""
    import io

    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    if photo.dtype != np.uint8:
        photo = np.clip(np.round(photo * 255), 0, 255).astype(np.uint8)
    picture = Image.fromarray(photo)
    draw = ImageDraw.Draw(picture)
    height, width = photo.shape[:2]
    line = box_line_width(height, width)
    try:
        font = ImageFont.load_default(size=max(10, line * 6))
    except TypeError:  # Pillow < 10.1: one bitmap size
        font = ImageFont.load_default()
    for detection in reversed(detections):  # the best drawn last, on top
        box = detection["box"]
        colour = tuple(int(c) for c in palette[detection["class_id"] % len(palette)])
        left, top = int(round(box["xmin"])), int(round(box["ymin"]))
        right, bottom = int(round(box["xmax"])) - 1, int(round(box["ymax"])) - 1
        if right < left or bottom < top:
            continue
        draw.rectangle((left, top, right, bottom), outline=colour, width=line)
        text = f"{detection['label']} {detection['score']:.2f}" if scores else str(detection["label"])
        text_left, text_top, text_right, text_bottom = draw.textbbox((0, 0), text, font=font)
        tag_height = text_bottom - text_top + 2 * line
        tag_top = top - tag_height if top - tag_height >= 0 else top
        draw.rectangle((left, tag_top, left + text_right - text_left + 2 * line, tag_top + tag_height), fill=colour)
        luminance = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
        draw.text((left + line - text_left, tag_top + line - text_top), text, font=font,
                  fill=(0, 0, 0) if luminance > 140 else (255, 255, 255))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _legend_text(area: dict) -> str:
    return f"{area['label']} ({area['percent']:.1f}%)"


def segment(model, processor, image):
    """(height, width) class ids of a H x W x C image at its own size: the whole image, resized (shortest edge)
    but not cropped, and the logits resized back onto it (what predict does for each image)."""
    import torch

    height, width = image.shape[:2]
    with torch.inference_mode():
        inputs = processor(images=image, input_data_format="channels_last", do_center_crop=False,
                           return_tensors="pt").to(model.device)
        outputs = model(**inputs)
        return processor.post_process_semantic_segmentation(outputs, target_sizes=[(height, width)])[0].cpu().numpy()


__all__ = ["add_arguments", "run", "PredictError", "TaskWriter", "WRITERS", "check_arguments", "class_areas",
           "color_palette", "palette_png", "segmentation_figure", "detections_picture", "box_line_width", "segment"]
