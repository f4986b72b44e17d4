"""Convert an ml-cvnets MobileViT v1 checkpoint into a Hub-ready folder.

    mobilevit convert --checkpoint mobilevit_s.pt --output-dir mobilevit-small

The path: load safely (`torch.load(weights_only=True)` or safetensors) -> unwrap the forms a checkpoint
comes in -> detect the task and the variant from the tensors -> rename every key by `RENAME_TABLE` ->
check that every checkpoint key went somewhere and every model key was filled, with the right shape ->
write `config.json`, `model.safetensors`, `preprocessor_config.json` and `README.md` into a temporary
folder -> reload that folder and run it -> move it into place.

The checkpoint layout is the one of ml-cvnets `cvnets-v0.1` (the code the released v1 checkpoints were
trained with): see `shared/fixtures/mlcvnets/README.md`, "Checkpoint layout".
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .configuration_mobilevit import (
    VARIANTS,
    MobileViTConfig,
    canonical_task,
    canonical_variant,
)
from .file_utils import staged_directory
from .hub import push_folder_to_hub, write_model_card
from .image_processing_mobilevit import MobileViTImageProcessor
from .labels import imagenet_1k_id2label, label2id, pascal_voc_id2label
from .modeling_mobilevit import (
    MobileViTForImageClassification,
    MobileViTForSemanticSegmentation,
)

MODEL_CLASSES = {
    "image-classification": MobileViTForImageClassification,
    "semantic-segmentation": MobileViTForSemanticSegmentation,
}


class ConversionError(ValueError):
    """The checkpoint cannot be converted; the message says which keys, shapes or options are at fault."""


# ---------------------------------------------------------------------------------------------------------
# The rename table: ml-cvnets key (a regular expression matched against the whole key) -> transformers key.
# Named groups are copied into the template, translated through VOCABULARY where it has an entry.
# Segmentation checkpoints carry the backbone under `encoder.`, classification ones at the top level.
# ---------------------------------------------------------------------------------------------------------
_ENC = r"(?:encoder\.)?"
# ml-cvnets' ConvLayer holds `block.conv` and `block.norm`; transformers' holds `convolution` and `normalization`.
_CONV_LAYER = r"\.block\.(?P<conv_or_norm>conv|norm)\.(?P<leaf>\w+)"
_VIT_BLOCK = _ENC + r"layer_(?P<stage>[345])\.1\."  # the MobileViT block of stages 3-5 (index 0 downsamples)
_TRANSFORMER_LAYER = _VIT_BLOCK + r"global_rep\.(?P<i>\d+)\."
_HF_VIT_BLOCK = "mobilevit.encoder.layer.{stage}."
_HF_TRANSFORMER_LAYER = _HF_VIT_BLOCK + "transformer.layer.{i}."
QKV = "{qkv}"  # a template holding this gets the packed (3d, d) projection split into query / key / value

RENAME_TABLE: list[tuple[str, str]] = [
    # stem and the two MobileNetV2 stages (inverted residuals: expand 1x1 -> depthwise 3x3 -> reduce 1x1)
    (_ENC + r"conv_1" + _CONV_LAYER, "mobilevit.conv_stem.{conv_or_norm}.{leaf}"),
    (_ENC + r"layer_(?P<stage>[12])\.(?P<block>\d+)\.block\.(?P<op>exp_1x1|conv_3x3|red_1x1)" + _CONV_LAYER,
     "mobilevit.encoder.layer.{stage}.layer.{block}.{op}.{conv_or_norm}.{leaf}"),
    # stages 3-5: the downsampling inverted residual, then the MobileViT block
    (_ENC + r"layer_(?P<stage>[345])\.0\.block\.(?P<op>exp_1x1|conv_3x3|red_1x1)" + _CONV_LAYER,
     "mobilevit.encoder.layer.{stage}.downsampling_layer.{op}.{conv_or_norm}.{leaf}"),
    (_VIT_BLOCK + r"local_rep\.conv_3x3" + _CONV_LAYER, _HF_VIT_BLOCK + "conv_kxk.{conv_or_norm}.{leaf}"),
    (_VIT_BLOCK + r"local_rep\.conv_1x1" + _CONV_LAYER, _HF_VIT_BLOCK + "conv_1x1.{conv_or_norm}.{leaf}"),
    (_TRANSFORMER_LAYER + r"pre_norm_mha\.0\.(?P<leaf>weight|bias)", _HF_TRANSFORMER_LAYER + "layernorm_before.{leaf}"),
    (_TRANSFORMER_LAYER + r"pre_norm_mha\.1\.qkv_proj\.(?P<leaf>weight|bias)",
     _HF_TRANSFORMER_LAYER + "attention.attention." + QKV + ".{leaf}"),
    (_TRANSFORMER_LAYER + r"pre_norm_mha\.1\.out_proj\.(?P<leaf>weight|bias)",
     _HF_TRANSFORMER_LAYER + "attention.output.dense.{leaf}"),
    (_TRANSFORMER_LAYER + r"pre_norm_ffn\.0\.(?P<leaf>weight|bias)", _HF_TRANSFORMER_LAYER + "layernorm_after.{leaf}"),
    (_TRANSFORMER_LAYER + r"pre_norm_ffn\.1\.(?P<leaf>weight|bias)",
     _HF_TRANSFORMER_LAYER + "intermediate.dense.{leaf}"),
    (_TRANSFORMER_LAYER + r"pre_norm_ffn\.4\.(?P<leaf>weight|bias)", _HF_TRANSFORMER_LAYER + "output.dense.{leaf}"),
    # the LayerNorm closing the transformer stack is global_rep.<number of layers>, without a sub-name
    (_VIT_BLOCK + r"global_rep\.\d+\.(?P<leaf>weight|bias)", _HF_VIT_BLOCK + "layernorm.{leaf}"),
    (_VIT_BLOCK + r"conv_proj" + _CONV_LAYER, _HF_VIT_BLOCK + "conv_projection.{conv_or_norm}.{leaf}"),
    (_VIT_BLOCK + r"fusion" + _CONV_LAYER, _HF_VIT_BLOCK + "fusion.{conv_or_norm}.{leaf}"),
    # classification head: 1x1 expansion, global pooling, linear classifier
    (r"conv_1x1_exp" + _CONV_LAYER, "mobilevit.conv_1x1_exp.{conv_or_norm}.{leaf}"),
    (r"classifier\.fc\.(?P<leaf>weight|bias)", "classifier.{leaf}"),
    # DeepLabV3 head: ASPP (a 1x1 branch, three atrous 3x3 branches, image pooling), projection, classifier
    (r"seg_head\.aspp\.aspp_layer\.convs\.(?P<branch>[0-3])" + _CONV_LAYER,
     "segmentation_head.aspp.convs.{branch}.{conv_or_norm}.{leaf}"),
    (r"seg_head\.aspp\.aspp_layer\.convs\.4\.aspp_pool\.conv_1x1" + _CONV_LAYER,
     "segmentation_head.aspp.convs.4.conv_1x1.{conv_or_norm}.{leaf}"),
    (r"seg_head\.aspp\.aspp_layer\.project" + _CONV_LAYER, "segmentation_head.aspp.project.{conv_or_norm}.{leaf}"),
    # cvnets-v0.1 names it seg_head.classifier.classifier; later versions seg_head.classifier (same tensors)
    (r"seg_head\.classifier(?:\.classifier)?" + _CONV_LAYER, "segmentation_head.classifier.{conv_or_norm}.{leaf}"),
]

# Group values that change name on the way (stage numbers are 1-based in ml-cvnets, 0-based in transformers).
VOCABULARY: dict[str, dict[str, str]] = {
    "conv_or_norm": {"conv": "convolution", "norm": "normalization"},
    "op": {"exp_1x1": "expand_1x1", "conv_3x3": "conv_3x3", "red_1x1": "reduce_1x1"},
    "stage": {"1": "0", "2": "1", "3": "2", "4": "3", "5": "4"},
}

# Keys the Hub format has no place for, dropped on purpose (and reported): the auxiliary segmentation head
# that ml-cvnets trains on layer_4 when `model.segmentation.use_aux_head` is on; it is unused at inference.
DROPPED_ON_PURPOSE = [(r"seg_head\.aux_head\..+", "auxiliary segmentation head (training only)")]

_COMPILED_TABLE = [(re.compile(pattern), template) for pattern, template in RENAME_TABLE]
_COMPILED_DROPPED = [(re.compile(pattern), why) for pattern, why in DROPPED_ON_PURPOSE]

# Where a checkpoint keeps its weights when it is a wrapper dict (ml-cvnets training checkpoints use
# model_state_dict / ema_state_dict; other trainers use the others).
MODEL_WRAPPER_KEYS = ("model_state_dict", "state_dict", "model")
EMA_WRAPPER_KEYS = ("ema_state_dict", "model_ema", "state_dict_ema", "ema")
DDP_PREFIX = "module."

# What each task's released checkpoints were trained on.
TASK_DATASETS = {
    "image-classification": ("imagenet-1k", imagenet_1k_id2label),
    "semantic-segmentation": ("pascal-voc", pascal_voc_id2label),
}


def rename_key(key: str) -> str | None:
    """The transformers key (or the query/key/value template) for one ml-cvnets key; None if no rule matches."""
    for pattern, template in _COMPILED_TABLE:
        match = pattern.fullmatch(key)
        if match:
            groups = {name: VOCABULARY.get(name, {}).get(value, value) for name, value in match.groupdict().items()}
            return template.format(qkv=QKV, **groups)
    return None


# ---------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------
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
    """The raw object stored in a `.pt`/`.pth`/`.bin` pickle (read with weights_only=True) or `.safetensors`."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"checkpoint: expected an existing file, got {str(path)!r}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated files, other formats, pickles holding code
        fmt = "safetensors" if path.suffix == ".safetensors" else "a PyTorch checkpoint (torch.load, weights_only=True)"
        raise ConversionError(
            f"checkpoint: {str(path)!r} ({path.stat().st_size:,} bytes) could not be read as {fmt}: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
            "-- is the file complete, and is it a checkpoint rather than a pickled model object? (ml-cvnets also "
            "writes bare state dicts next to its training checkpoints: checkpoint_best.pt, checkpoint_ema_best.pt)"
        ) from exc


def unwrap_state_dict(obj, weights: str = "auto") -> tuple[dict[str, torch.Tensor], str]:
    """Find the state dict inside a checkpoint object; returns it and a description of where it was.

    `weights` picks between the raw weights ("model") and an exponential-moving-average copy ("ema") when the
    checkpoint holds both (an ml-cvnets training checkpoint does); "auto" takes the only one present.
    ml-cvnets also saves EMA weights as separate bare state dicts (`checkpoint_ema_best.pt`, ...): those
    are plain state dicts and need no option.
    """
    if weights not in ("auto", "model", "ema"):
        raise ConversionError(f"weights: expected 'auto', 'model' or 'ema', got {weights!r}")
    where = []
    for _ in range(3):  # a wrapper may be nested once or twice ({"model": {"state_dict": ...}})
        if _is_state_dict(obj):
            if weights == "ema" and not where:
                raise ConversionError(
                    "weights: 'ema' asked for, but the checkpoint is a bare state dict without an EMA copy "
                    "(ml-cvnets' *_ema*.pt files are bare state dicts: convert them with --weights auto)")
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
                f"({ema_keys[0]!r}); choose one with --weights model or --weights ema")
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
# Detection: task and variant come from the tensors
# ---------------------------------------------------------------------------------------------------------
def detect_task(state_dict: dict[str, torch.Tensor]) -> str:
    has_seg_head = any(k.startswith("seg_head.") for k in state_dict)
    has_classifier = "classifier.fc.weight" in state_dict
    if has_seg_head and has_classifier:
        raise ConversionError("checkpoint: holds both a classifier (classifier.fc.*) and a segmentation head "
                              "(seg_head.*); expected one of them")
    if has_seg_head:
        return "semantic-segmentation"
    if has_classifier:
        return "image-classification"
    raise ConversionError(
        "checkpoint: does not look like an ml-cvnets MobileViT v1 checkpoint: expected 'classifier.fc.weight' "
        f"(classification) or 'seg_head.*' keys (DeepLabV3 segmentation); its first keys are {list(state_dict)[:6]}")


@dataclass
class Architecture:
    """The widths read off the tensors, in `MobileViTConfig`'s terms."""

    hidden_sizes: list[int]
    neck_hidden_sizes: list[int]  # without the final expansion, which segmentation checkpoints lack
    expand_ratio: float
    num_labels: int


def read_architecture(state_dict: dict[str, torch.Tensor], task: str) -> Architecture:
    prefix = "encoder." if task == "semantic-segmentation" else ""

    def out_channels(key: str) -> int:
        tensor = state_dict.get(prefix + key)
        if tensor is None:
            raise ConversionError(
                f"checkpoint: does not look like an ml-cvnets MobileViT v1 {task} checkpoint: key "
                f"{prefix + key!r} is missing (its first keys are {list(state_dict)[:6]})")
        return int(tensor.shape[0])

    conv = "block.conv.weight"
    neck = [out_channels(f"conv_1.{conv}"), out_channels(f"layer_1.0.block.red_1x1.{conv}"),
            out_channels(f"layer_2.0.block.red_1x1.{conv}")]
    neck += [out_channels(f"layer_{stage}.1.fusion.{conv}") for stage in (3, 4, 5)]
    hidden = [out_channels(f"layer_{stage}.1.local_rep.conv_1x1.{conv}") for stage in (3, 4, 5)]
    expand_ratio = out_channels(f"layer_1.0.block.exp_1x1.{conv}") / neck[0]
    if task == "image-classification":
        num_labels = int(state_dict["classifier.fc.weight"].shape[0])
    else:
        classifier = [v for k, v in state_dict.items()
                      if re.fullmatch(r"seg_head\.classifier(?:\.classifier)?\.block\.conv\.weight", k)]
        if not classifier:
            raise ConversionError("checkpoint: the segmentation head has no classifier "
                                  "('seg_head.classifier.classifier.block.conv.weight' is missing)")
        num_labels = int(classifier[0].shape[0])
    return Architecture(hidden, neck, float(expand_ratio), num_labels)


def detect_variant(arch: Architecture) -> str:
    for name, fields in VARIANTS.items():
        if (arch.hidden_sizes == fields["hidden_sizes"] and arch.neck_hidden_sizes == fields["neck_hidden_sizes"][:6]
                and arch.expand_ratio == float(fields.get("expand_ratio", 4.0))):
            return name
    raise ConversionError(
        f"checkpoint: its widths match no released MobileViT v1 variant: transformer widths {arch.hidden_sizes}, "
        f"stage widths {arch.neck_hidden_sizes}, expansion {arch.expand_ratio:g}; known: "
        + "; ".join(f"{n}: {f['hidden_sizes']}, {f['neck_hidden_sizes'][:6]}" for n, f in VARIANTS.items()))


def resolve(detected: str, requested: str, what: str, canonical) -> str:
    """`requested` ("auto" or a name) checked against what the tensors say."""
    if requested in (None, "auto"):
        return detected
    requested = canonical(requested)
    if requested != detected:
        raise ConversionError(f"{what}: --{what} {requested} was given, but the checkpoint's tensors are those of "
                              f"a {detected} model")
    return requested


# ---------------------------------------------------------------------------------------------------------
# Renaming and checking
# ---------------------------------------------------------------------------------------------------------
@dataclass
class Mapping:
    tensors: dict[str, torch.Tensor]
    num_source_keys: int
    dropped: dict[str, list[str]] = field(default_factory=dict)  # reason -> keys
    filled_defaults: list[str] = field(default_factory=list)


def convert_state_dict(state_dict: dict[str, torch.Tensor], expected: dict[str, torch.Tensor],
                       progress: bool = False) -> Mapping:
    """Rename every ml-cvnets key into `expected`'s keys (a transformers model's state dict) and check the result.

    Raises ConversionError listing every key that maps nowhere, every model key nothing fills, every
    target filled twice and every shape that differs.
    """
    out: dict[str, torch.Tensor] = {}
    sources: dict[str, str] = {}
    unmatched, duplicated, dropped = [], [], {}
    for key, tensor in tqdm(state_dict.items(), desc="renaming", unit="key", disable=not progress, leave=False):
        reason = next((why for pattern, why in _COMPILED_DROPPED if pattern.fullmatch(key)), None)
        if reason:
            dropped.setdefault(reason, []).append(key)
            continue
        target = rename_key(key)
        if target is None:
            unmatched.append(key)
            continue
        if QKV in target:  # rows [0:d] query, [d:2d] key, [2d:3d] value
            if tensor.shape[0] % 3:
                raise ConversionError(f"checkpoint: {key!r} has shape {tuple(tensor.shape)}; expected a packed "
                                      "query/key/value projection with 3*d rows")
            pieces = dict(zip(("query", "key", "value"), tensor.chunk(3, dim=0)))
        else:
            pieces = {None: tensor}
        for part, piece in pieces.items():
            name = target.replace(QKV, part) if part else target
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
    return Mapping(tensors, len(state_dict), dropped, filled_defaults)


# ---------------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------------
def image_processor_for(image_size: int) -> MobileViTImageProcessor:
    """ml-cvnets' evaluation preprocessing for a checkpoint trained at `image_size`: shortest edge to
    size + 32, centre crop to size, divide by 255, RGB -> BGR, no mean/std."""
    return MobileViTImageProcessor(
        size={"shortest_edge": image_size + 32}, crop_size={"height": image_size, "width": image_size}
    )


def check_folder_runs(folder: Path, task: str, expected: dict[str, torch.Tensor]) -> None:
    """Reload the written folder with this package and run it: same tensors, finite outputs, right shape."""
    model = MODEL_CLASSES[task].from_pretrained(str(folder)).eval()
    reloaded = model.state_dict()
    changed = [k for k, v in expected.items() if not torch.equal(reloaded[k], v)]
    if changed:
        raise ConversionError(f"written folder: {len(changed)} tensors differ after reloading, e.g. {changed[:3]}")
    size = 256  # any multiple of 32 exercises every layer; the released 512 would only make this slower
    pixel_values = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        logits = model(pixel_values=pixel_values).logits
    num_labels = model.config.num_labels
    want = (1, num_labels) if task == "image-classification" else (1, num_labels, size // 16, size // 16)
    if tuple(logits.shape) != want or not torch.isfinite(logits).all():
        raise ConversionError(f"written folder: the reloaded model gives logits of shape {tuple(logits.shape)} "
                              f"(finite: {bool(torch.isfinite(logits).all())}); expected {want}, all finite")


@dataclass
class ConversionResult:
    output_dir: Path
    task: str
    variant: str
    num_parameters: int
    num_source_keys: int
    num_model_keys: int
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
            f"task        {self.task}",
            f"variant     {self.variant}",
            f"parameters  {self.num_parameters:,}",
            f"keys        {self.num_source_keys} checkpoint keys -> {self.num_model_keys} model keys "
            "(packed qkv split into query/key/value)",
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


def _labels_for(task: str, num_labels: int) -> tuple[dict[int, str], str | None, str]:
    """id2label, the data set it comes from (None when the class count matches none) and a line for the summary."""
    dataset, id2label_fn = TASK_DATASETS[task]
    id2label = id2label_fn()
    if len(id2label) == num_labels:
        return id2label, dataset, f"{dataset} ({num_labels} classes)"
    return {i: f"LABEL_{i}" for i in range(num_labels)}, None, (
        f"{num_labels} classes, not the {len(id2label)} of {dataset}: generic names LABEL_0.. (edit config.json)")


def convert_checkpoint(
    checkpoint: str | Path,
    output_dir: str | Path,
    *,
    variant: str = "auto",
    task: str = "auto",
    weights: str = "auto",
    overwrite: bool = False,
    push_to_hub: str | None = None,
    progress: bool = True,
) -> ConversionResult:
    """Convert one ml-cvnets MobileViT v1 checkpoint into a Hub folder at `output_dir` (see the module doc)."""
    start = time.perf_counter()
    checkpoint, output_dir = Path(checkpoint), Path(output_dir)
    if output_dir.exists() and not overwrite:
        raise FileExistsError(f"output_dir: {str(output_dir)!r} already exists; pass --overwrite to replace it")
    if output_dir.exists() and not output_dir.is_dir():
        raise ConversionError(f"output_dir: {str(output_dir)!r} exists and is not a folder")

    steps = tqdm(total=6, desc="convert", unit="step", disable=not progress)

    def step(name):
        steps.set_postfix_str(name)
        steps.update(1)

    try:
        raw = read_checkpoint_file(checkpoint)
        source_sha256 = sha256_of_file(checkpoint)
        state_dict, weights_from = unwrap_state_dict(raw, weights)
        state_dict, stripped = strip_ddp_prefix(state_dict)
        step("loaded")

        task = resolve(detect_task(state_dict), task, "task", canonical_task)
        arch = read_architecture(state_dict, task)
        variant = resolve(detect_variant(arch), variant, "variant", canonical_variant)
        id2label, dataset, labels_text = _labels_for(task, arch.num_labels)
        config = MobileViTConfig.from_variant(variant, task, id2label=id2label, label2id=label2id(id2label))
        step("detected")

        model = MODEL_CLASSES[task](config).eval()
        mapping = convert_state_dict(state_dict, model.state_dict(), progress=progress)
        model.load_state_dict(mapping.tensors, strict=True)
        step("renamed and checked")

        with staged_directory(output_dir) as work:
            num_parameters = sum(p.numel() for p in model.parameters())
            model.save_pretrained(str(work))
            image_processor_for(config.image_size).save_pretrained(str(work))
            write_model_card(work, task=task, variant=variant, num_parameters=num_parameters,
                             image_size=config.image_size, num_labels=arch.num_labels, dataset=dataset,
                             source=checkpoint.name, source_sha256=source_sha256, repo_id=push_to_hub,
                             notes=f"Converted from the ml-cvnets checkpoint `{checkpoint.name}` ({weights_from}) "
                                   "with `mobilevit convert`.")
            step("written")
            check_folder_runs(work, task, mapping.tensors)
            step("reloaded and ran")
        # --overwrite: the old folder was swapped out only once the new one was whole
        step("moved into place")
    finally:
        steps.close()

    result = ConversionResult(
        output_dir=output_dir, task=task, variant=variant, num_parameters=num_parameters,
        num_source_keys=mapping.num_source_keys, num_model_keys=len(mapping.tensors), weights_from=weights_from,
        stripped_ddp_prefix=stripped, dropped=mapping.dropped, filled_defaults=mapping.filled_defaults,
        source_sha256=source_sha256, labels=labels_text, seconds=0.0)
    if push_to_hub:
        try:
            message = f"Add MobileViT {variant} ({task}) converted from {checkpoint.name}"
            result.pushed_to = push_folder_to_hub(output_dir, push_to_hub, commit_message=message)
        except Exception as exc:  # network, authentication, permissions: the folder itself is complete
            raise ConversionError(f"push_to_hub: {str(output_dir)!r} was written and checked, but uploading it to "
                                  f"{push_to_hub!r} failed: {type(exc).__name__}: {exc}") from exc
    result.seconds = time.perf_counter() - start
    return result


# ---------------------------------------------------------------------------------------------------------
# Command line (`mobilevit convert` and conversion_scripts/convert_mlcvnets_checkpoint.py)
# ---------------------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--checkpoint", required=True, help="ml-cvnets checkpoint (.pt/.pth or .safetensors)")
    parser.add_argument("--output-dir", required=True, help="folder to create (config, weights, processor, card)")
    parser.add_argument("--variant", default="auto",
                        help="auto (read from the tensors), xx-small, x-small or small; a contradiction is an error")
    parser.add_argument("--task", default="auto",
                        help="auto, image-classification or semantic-segmentation; a contradiction is an error")
    parser.add_argument("--weights", default="auto", choices=("auto", "model", "ema"),
                        help="for checkpoints holding both raw and EMA weights: which to convert")
    parser.add_argument("--overwrite", action="store_true", help="replace --output-dir if it exists")
    parser.add_argument("--push-to-hub", metavar="REPO", default=None,
                        help="after a successful conversion, upload the folder to this Hub repository")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def run(args: argparse.Namespace) -> int:
    try:
        result = convert_checkpoint(args.checkpoint, args.output_dir, variant=args.variant, task=args.task,
                                    weights=args.weights, overwrite=args.overwrite, push_to_hub=args.push_to_hub,
                                    progress=not args.no_progress)
    except (ValueError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        if not Path(args.output_dir).exists():
            print(f"nothing was written to {args.output_dir}", file=sys.stderr)
        return 2
    print(result.summary())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="convert_mlcvnets_checkpoint",
        description="Convert an ml-cvnets MobileViT v1 checkpoint (classification or DeepLabV3) into a Hub folder.")
    add_arguments(parser)
    return run(parser.parse_args(argv))


__all__ = ["convert_checkpoint", "convert_state_dict", "rename_key", "RENAME_TABLE", "ConversionError",
           "ConversionResult", "add_arguments", "run", "main"]
