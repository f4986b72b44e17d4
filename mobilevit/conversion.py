"""`mobilevit convert`: an original (ml-cvnets) checkpoint of any registered family -> a Hub-ready folder.

    mobilevit convert --checkpoint mobilevit_s.pt --output-dir mobilevit-small
    mobilevit convert --checkpoint deeplabv3-mobilevitv2-1.0.pt --output-dir deeplabv3-mobilevitv2-1.0-voc

The path: load safely (`torch.load(weights_only=True)` or safetensors) -> unwrap the forms a checkpoint
comes in -> find the family whose layout the keys have (`auto.family_for_checkpoint`) -> detect the task,
the variant and the class count from the tensors (the family's converter) -> rename every key by the
family's table -> check that every checkpoint key went somewhere and every model key was filled, with the
right shape -> write `config.json`, `model.safetensors`, `preprocessor_config.json` and `README.md` into a
temporary folder -> reload that folder and run it -> move it into place.

What the tensors cannot say comes from the release recipe: the resolution (`image_size`: 256 for
classification, 512 for segmentation, 320 for detection; `--image-size 384` for the 384x384 fine-tuned
classifiers), and for DeepLabV3 the output stride and ASPP rates, which the family's converter takes from the
data set the class count points to (MobileViTv2: ADE20k output stride 8, PASCAL VOC 16); `--output-stride`
overrides it. SSDLite detectors (`encoder.`, `extra_layers.os_*`, `ssd_heads.*`) get their levels and head
widths from the tensors, the default anchors (checked against the heads' widths), COCO's classes with a
background class, and the post-processing rule of their family's release in `preprocessor_config.json`.

The generic steps live in `conversion_utils.py`; each family's layout in `models/<family>/conversion_*.py`.

Before the checkpoint is read, the options and the output folder are checked (`check_options`): the output
may not be a file, nor the checkpoint's own folder or one holding it (`--overwrite` would delete the
checkpoint), nor hold files unless `--overwrite`. Every failure is a one-line `ConversionError`; a killed
conversion's hidden staging folder is removed by the next conversion into the same place.

`preprocessor_config.json` is the family's own preprocessing (`ModelFamily.preprocessing`: MobileViT v1 BGR
and OpenCV bilinear, MobileViTv2 RGB and Pillow bicubic). A folder converted elsewhere whose processor reads
pixels otherwise than its family's release (stock transformers' MobileViTv2 folders flip to BGR) is set
right with

    mobilevit convert --fix-preprocessing apple-mobilevitv2-1.0-imagenet1k-256

which rewrites only the channel order and the resampling of its `preprocessor_config.json` (sizes and every
other setting stay), through a temporary file moved over the old one, and prints each change.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import auto, limits
from .conversion_utils import (
    ConversionError,
    convert_state_dict,
    read_checkpoint_file,
    resolve,
    sha256_of_file,
    strip_ddp_prefix,
    unwrap_state_dict,
)
from .cli import OneLineParser
from .errors import run_reporting
from .file_utils import check_output_dir, claim_output, staged_directory, write_file_atomically
from .hub import push_folder_to_hub, write_model_card
from .image_processing_mobilevit import MobileViTImageProcessor
from .labels import label2id, label_set_for
from .tasks import CLASSIFICATION, OBJECT_DETECTION, SEGMENTATION, canonical_task

CHECK_SIZE = 256  # the reloaded folder runs on this input: any multiple of 32 exercises every layer
CONVERTIBLE_TASKS = (CLASSIFICATION, SEGMENTATION, OBJECT_DETECTION)


def check_folder_runs(folder: Path, task: str, expected: dict[str, torch.Tensor]) -> None:
    """Reload the written folder with this package and run it: same tensors, finite outputs, right shape."""
    model = auto.load_model(folder, task).eval()
    reloaded = model.state_dict()
    changed = [k for k, v in expected.items() if not torch.equal(reloaded[k], v)]
    if changed:
        raise ConversionError(f"written folder: {len(changed)} tensors differ after reloading, e.g. {changed[:3]}")
    size = CHECK_SIZE
    pixel_values = torch.rand(1, model.config.num_channels, size, size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        outputs = model(pixel_values=pixel_values)
    logits = outputs.logits
    num_labels, stride = model.config.num_labels, model.config.output_stride
    finite = bool(torch.isfinite(logits).all())
    if task == OBJECT_DETECTION:  # one row per anchor (ceil(size / stride) cells a level), each with a decoded box
        levels = [(-(-size // s), -(-size // s)) if s > 0 else (1, 1) for s in model.config.ssd_output_strides]
        want = (1, model.ssd.anchor_generator.num_anchors(levels), num_labels)
        finite = finite and bool(torch.isfinite(outputs.pred_boxes).all())
    else:
        want = (1, num_labels) if task == CLASSIFICATION else (1, num_labels, size // stride, size // stride)
    if tuple(logits.shape) != want or not finite:
        raise ConversionError(f"written folder: the reloaded model gives logits of shape {tuple(logits.shape)} "
                              f"(finite: {finite}); expected {want}, all finite")


def check_finite(state_dict: dict[str, torch.Tensor]) -> None:
    """Every floating-point tensor of the checkpoint is finite: NaN or infinity would make a model that outputs
    nothing meaningful (and a NaN never equals itself, so it cannot even be checked after reloading)."""
    bad = [key for key, tensor in state_dict.items()
           if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]
    if bad:
        raise ConversionError(f"checkpoint: {len(bad)} tensors hold NaN or infinity (e.g. {bad[0]}); a model "
                              "converted from them could not give meaningful outputs (was the training run diverging?)")


def check_options(checkpoint: Path, output_dir: Path, *, variant: str, task: str, weights: str,
                  image_size: int | None, output_stride: int | None, overwrite: bool) -> None:
    """The one check of a conversion's arguments, before the checkpoint is read or anything is written."""
    if task not in (None, "auto"):
        try:
            canonical_task(task, allowed=CONVERTIBLE_TASKS)
        except ValueError as err:
            raise ConversionError(str(err), usage=True) from None
    if variant not in (None, "auto"):
        try:
            auto.resolve_variant(variant)
        except ValueError as err:
            raise ConversionError(str(err), usage=True) from None
    if weights not in ("auto", "model", "ema"):
        raise ConversionError(f"weights: expected 'auto', 'model' or 'ema', got {weights!r}", usage=True)
    if image_size is not None:  # the resolution the checkpoint was trained at
        limits.check_image_side("image_size", image_size, ConversionError)
    if output_stride not in (None, 8, 16, 32):
        raise ConversionError(f"output_stride: expected 8, 16 or 32, got {output_stride!r}", usage=True)
    if not checkpoint.is_file():
        raise ConversionError(f"checkpoint: expected an existing file, got {str(checkpoint)!r}"
                              + (", which is a folder" if checkpoint.is_dir() else ""))
    check_output_dir(output_dir, "output_dir", [("checkpoint", checkpoint)], overwrite=overwrite, error=ConversionError)


@dataclass
class ConversionResult:
    output_dir: Path
    family: str
    task: str
    variant: str
    image_size: int
    output_stride: int
    num_parameters: int
    num_source_keys: int
    num_model_keys: int
    split_note: str
    weights_from: str
    stripped_ddp_prefix: bool
    dropped: dict[str, list[str]]
    filled_defaults: list[str]
    source_sha256: str
    labels: str
    seconds: float
    pushed_to: str | None = None

    def summary(self) -> str:
        lines = [
            f"converted   {self.output_dir}",
            f"family      {self.family}",
            f"task        {self.task}",
            f"variant     {self.variant}",
            f"resolution  {self.image_size}x{self.image_size}"
            + (f", output stride {self.output_stride}" if self.task == SEGMENTATION else ""),
            f"parameters  {self.num_parameters:,}",
            f"keys        {self.num_source_keys} checkpoint keys -> {self.num_model_keys} model keys{self.split_note}",
            f"weights     {self.weights_from}" + (", 'module.' prefix removed" if self.stripped_ddp_prefix else ""),
            f"labels      {self.labels}",
            f"sha256      {self.source_sha256}",
        ]
        for reason, keys in self.dropped.items():
            lines.append(f"dropped     {len(keys)} keys on purpose: {reason} ({keys[0]}, ...)")
        if self.filled_defaults:
            lines.append(f"filled      {len(self.filled_defaults)} BatchNorm num_batches_tracked counters with 0 "
                         "(absent from the checkpoint; unused at inference)")
        if self.pushed_to:
            lines.append(f"pushed      {self.pushed_to}")
        lines.append(f"time        {self.seconds:.1f} s")
        return "\n".join(lines)


def _labels_text(task: str, num_labels: int, dataset: str | None) -> str:
    if dataset is not None:
        return f"{dataset} ({num_labels} classes)"
    return f"{num_labels} classes, no known {task} data set has that many: generic names LABEL_0.. (edit config.json)"


def _split_note(table) -> str:
    notes = [f"packed {name} split into {'/'.join(parts)}" for name, parts in table.splits.items()]
    return f" ({'; '.join(notes)})" if notes else ""


def convert_checkpoint(
    checkpoint: str | Path,
    output_dir: str | Path,
    *,
    variant: str = "auto",
    task: str = "auto",
    weights: str = "auto",
    image_size: int | None = None,
    output_stride: int | None = None,
    overwrite: bool = False,
    push_to_hub: str | None = None,
    progress: bool = True,
) -> ConversionResult:
    """Convert one original checkpoint into a Hub folder at `output_dir` (see the module doc). `image_size`
    and `output_stride` (segmentation only) replace the release recipe's when given."""
    start = time.perf_counter()
    checkpoint, output_dir = Path(checkpoint), Path(output_dir)
    check_options(checkpoint, output_dir, variant=variant, task=task, weights=weights, image_size=image_size,
                  output_stride=output_stride, overwrite=overwrite)

    claim = claim_output(output_dir, "output_dir", replaces=True, error=ConversionError)
    steps = tqdm(total=6, desc="convert", unit="step", disable=not progress)

    def step(name):
        steps.set_postfix_str(name)
        steps.update(1)

    try:
        # under the claim, again: another run may have written the output since the check
        check_output_dir(output_dir, "output_dir", [("checkpoint", checkpoint)], overwrite=overwrite,
                         error=ConversionError)
        raw = read_checkpoint_file(checkpoint)
        source_sha256 = sha256_of_file(checkpoint)
        state_dict, weights_from = unwrap_state_dict(raw, weights)
        state_dict, stripped = strip_ddp_prefix(state_dict)
        check_finite(state_dict)
        step("loaded")

        family = auto.family_for_checkpoint(state_dict)
        converter = family.converter
        task = resolve(converter.detect_task(state_dict), task, "task",
                       lambda name: canonical_task(name, allowed=CONVERTIBLE_TASKS))
        variant = resolve(converter.detect_variant(state_dict, task), variant, "variant", family.canonical_variant)
        num_labels = converter.num_labels(state_dict, task)
        id2label, dataset = label_set_for(task, num_labels)
        overrides = converter.config_overrides(state_dict, task)
        if output_stride is not None:
            if task != SEGMENTATION:
                raise ConversionError(f"output_stride: only segmentation checkpoints have one; this one is {task}",
                                      usage=True)
            overrides["output_stride"] = output_stride
        if image_size is not None:
            overrides["image_size"] = image_size
        config = family.new_config(variant, task, id2label=id2label, label2id=label2id(id2label), **overrides)
        step("detected")

        model = family.model_class(task)(config).eval()
        mapping = convert_state_dict(state_dict, model.state_dict(), converter.rename_table, progress=progress)
        model.load_state_dict(mapping.tensors, strict=True)
        step("renamed and checked")

        with staged_directory(output_dir, overwrite=overwrite, error=ConversionError) as work:
            num_parameters = sum(p.numel() for p in model.parameters())
            with auto.quiet_transformers():
                model.save_pretrained(str(work))
            family.image_processor(config, task).save_pretrained(str(work))
            write_model_card(work, task=task, variant=variant, num_parameters=num_parameters,
                             image_size=config.image_size, num_labels=num_labels, dataset=dataset,
                             source=checkpoint.name, source_sha256=source_sha256, repo_id=push_to_hub,
                             notes=f"Converted from the {converter.source} checkpoint `{checkpoint.name}` "
                                   f"({weights_from}) with `mobilevit convert`.")
            step("written")
            check_folder_runs(work, task, mapping.tensors)
            step("reloaded and ran")
        # --overwrite: the old folder was swapped out only once the new one was whole
        step("moved into place")
    finally:
        steps.close()
        claim.release()

    result = ConversionResult(
        output_dir=output_dir, family=f"{family.title} ({family.model_type})", task=task, variant=variant,
        image_size=config.image_size, output_stride=config.output_stride,
        num_parameters=num_parameters, num_source_keys=mapping.num_source_keys, num_model_keys=len(mapping.tensors),
        split_note=_split_note(converter.rename_table), weights_from=weights_from, stripped_ddp_prefix=stripped,
        dropped=mapping.dropped, filled_defaults=mapping.filled_defaults, source_sha256=source_sha256,
        labels=_labels_text(task, num_labels, dataset), seconds=0.0)
    if push_to_hub:
        try:
            message = f"Add {family.title} {variant} ({task}) converted from {checkpoint.name}"
            result.pushed_to = push_folder_to_hub(output_dir, push_to_hub, commit_message=message)
        except Exception as exc:  # network, authentication, permissions: the folder itself is complete
            raise ConversionError(f"push_to_hub: {str(output_dir)!r} was written and checked, but uploading it to "
                                  f"{push_to_hub!r} failed: {type(exc).__name__}: {exc}") from exc
    result.seconds = time.perf_counter() - start
    return result


# ---------------------------------------------------------------------------------------------------------
# Setting a folder's preprocessing right (`mobilevit convert --fix-preprocessing FOLDER`)
# ---------------------------------------------------------------------------------------------------------
PROCESSOR_FILE = "preprocessor_config.json"
# 2022 feature-extractor keys that stand for a setting the fix writes (the current key wins when both are there)
_LEGACY_PIXEL_KEYS = {"do_flip_channels": "do_flip_channel_order"}


def fix_preprocessing(folder: str | Path) -> dict[str, tuple]:
    """Give a model folder its family's channel order and resampling (`Preprocessing.pixel_settings`) in
    `preprocessor_config.json`, keeping every other key as it is; a folder without the file gets the family's
    whole evaluation preprocessing. Returns {setting: (old, new)} for what changed ({} when nothing had to:
    the file is then left untouched). The new file replaces the old one whole (temporary file, then rename)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConversionError(f"fix_preprocessing: expected a model folder, got {str(folder)!r}"
                              + (", which is a file" if folder.exists() else ", which does not exist"))
    try:
        config = auto.load_config(folder)
    except auto.NotAModelError as err:
        raise ConversionError(f"fix_preprocessing: {err}") from None
    family = auto.family_of(config)
    path = folder / PROCESSOR_FILE
    with claim_output(path, "--fix-preprocessing", error=ConversionError):  # not while a run writes the folder
        return _fix_processor_file(path, config, family)


def _fix_processor_file(path: Path, config, family) -> dict[str, tuple]:
    if not path.is_file():
        try:
            write_file_atomically(path, auto.image_processor_for(config).to_json_string().encode("utf-8"))
        except OSError as err:
            raise ConversionError(f"fix_preprocessing: {str(path)!r} could not be written ({err})") from None
        return {PROCESSOR_FILE: ("absent", "written whole")}
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(settings, dict):
            raise ValueError(f"expected a JSON object, got {type(settings).__name__}")
        current = MobileViTImageProcessor.from_dict(dict(settings))
    except (OSError, ValueError, TypeError) as err:
        raise ConversionError(f"fix_preprocessing: {str(path)!r} cannot be read ({str(err).splitlines()[0]}); "
                              "nothing was changed") from None
    changes = {name: (current.setting(name), wanted) for name, wanted in family.preprocessing.pixel_settings.items()
               if current.setting(name) != wanted}
    if not changes:
        return {}
    for legacy, name in _LEGACY_PIXEL_KEYS.items():
        if name in changes:
            settings.pop(legacy, None)
    settings.update({name: new for name, (_, new) in changes.items()})
    MobileViTImageProcessor.from_dict(dict(settings))  # the new file loads (it cannot fail where the old loaded)
    try:
        write_file_atomically(path, (json.dumps(settings, indent=2, sort_keys=True) + "\n").encode("utf-8"))
    except OSError as err:
        raise ConversionError(f"fix_preprocessing: {str(path)!r} could not be written ({err}); the old file is "
                              "unchanged") from None
    return changes


def _fix_preprocessing_summary(folder: Path, changes: dict, family_text: str) -> str:
    if not changes:
        return f"{folder}: {PROCESSOR_FILE} already reads pixels as {family_text}; nothing changed"
    lines = [f"{folder}: {PROCESSOR_FILE} now reads pixels as {family_text}"]
    lines += [f"  {name}: {old!r} -> {new!r}" for name, (old, new) in changes.items()]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------
# Command line (`mobilevit convert` and conversion_scripts/convert_mlcvnets_checkpoint.py)
# ---------------------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--checkpoint", help="ml-cvnets checkpoint (.pt/.pth or .safetensors)")
    parser.add_argument("--output-dir", help="folder to create (config, weights, processor, card)")
    parser.add_argument("--fix-preprocessing", metavar="FOLDER", default=None,
                        help="instead of converting: give an existing model folder its family's channel order and "
                             "resampling in preprocessor_config.json (a MobileViTv2 folder converted by stock "
                             "transformers flips to BGR; ml-cvnets trained MobileViTv2 on RGB); other settings stay")
    parser.add_argument("--variant", default="auto",
                        help="auto (read from the tensors) or a released size (v1: xx-small, x-small, small; "
                             "v2: mobilevitv2-0.5 ... mobilevitv2-2.0); a contradiction is an error")
    parser.add_argument("--task", default="auto",
                        help="auto, image-classification, semantic-segmentation or object-detection; a contradiction "
                             "is an error")
    parser.add_argument("--weights", default="auto", choices=("auto", "model", "ema"),
                        help="for checkpoints holding both raw and EMA weights: which to convert")
    parser.add_argument("--image-size", type=int, default=None,
                        help="the resolution the checkpoint was trained at (default: the release's, 256 for "
                             "classification, 512 for segmentation, 320 for detection; 384 for the 384x384 "
                             "fine-tuned classifiers)")
    parser.add_argument("--output-stride", type=int, default=None, choices=(8, 16, 32),
                        help="segmentation: the output stride the checkpoint was trained with (default: the "
                             "release recipe of its data set; MobileViTv2: ADE20k 8, PASCAL VOC 16)")
    parser.add_argument("--overwrite", action="store_true", help="replace --output-dir if it exists")
    parser.add_argument("--push-to-hub", metavar="REPO", default=None,
                        help="after a successful conversion, upload the folder to this Hub repository")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def run(args: argparse.Namespace) -> int:
    """`mobilevit convert`: a ConversionError reaches `mobilevit.cli`, which prints it as one line."""
    if args.fix_preprocessing is not None:
        if args.checkpoint is not None or args.output_dir is not None:
            raise ConversionError("--fix-preprocessing: expected a model folder alone, got --checkpoint/--output-dir "
                                  "too (convert and fix separately)", usage=True)
        changes = fix_preprocessing(args.fix_preprocessing)
        family = auto.family_of(auto.load_config(args.fix_preprocessing))
        print(_fix_preprocessing_summary(Path(args.fix_preprocessing), changes, family.preprocessing.describe()))
        return 0
    for option, value in (("--checkpoint", args.checkpoint), ("--output-dir", args.output_dir)):
        if value is None:
            raise ConversionError(f"{option}: expected a value (or --fix-preprocessing FOLDER alone)", usage=True)
    result = convert_checkpoint(args.checkpoint, args.output_dir, variant=args.variant, task=args.task,
                                weights=args.weights, image_size=args.image_size, output_stride=args.output_stride,
                                overwrite=args.overwrite, push_to_hub=args.push_to_hub, progress=not args.no_progress)
    print(result.summary())
    return 0


def main(argv: list[str] | None = None) -> int:
    """conversion_scripts/convert_mlcvnets_checkpoint.py: the same command, reporting errors as `mobilevit` does."""
    prog = "convert_mlcvnets_checkpoint"
    parser = OneLineParser(
        prog=prog, description="Convert an ml-cvnets checkpoint (classification or DeepLabV3) into a Hub folder.")
    add_arguments(parser)
    return run_reporting(prog, lambda: run(parser.parse_args(argv)))


__all__ = ["convert_checkpoint", "check_folder_runs", "fix_preprocessing", "ConversionError", "ConversionResult",
           "add_arguments", "run", "main"]
