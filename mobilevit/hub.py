"""Hub helpers: the model card every saved folder gets, and pushing model, config and processor.

`write_model_card` is used by the checkpoint converter and by training; it describes what the folder holds
(family, task, variant, size, metrics when known, where the weights came from, training curves) and how to
use it, including the one thing MobileViT users trip over: the model takes pixels in [0, 1] with no mean/std
normalisation, in its family's channel order (MobileViT v1 BGR, MobileViTv2 RGB). `model_card_for_folder`
reads those facts from a saved folder. What differs between families (their description, citation, class
names and preprocessing) comes from the family registry, `mobilevit.auto`.

`push_to_hub` uploads a saved folder (or a model and its processor) as one commit: config, safetensors
weights, `preprocessor_config.json`, the model card and, for folders that come from training, the curves.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from . import auto
from .image_processing_mobilevit import MobileViTImageProcessor
from .tasks import CLASSIFICATION, FEATURE_EXTRACTION, OBJECT_DETECTION, PIPELINE_TASKS, SEGMENTATION

# task -> what the model outputs
TASK_OUTPUTS = {
    CLASSIFICATION: "class logits",
    SEGMENTATION: "per-pixel class logits at 1/{output_stride} of the input resolution",
    OBJECT_DETECTION: "SSDLite: per anchor, class logits (background first) and a box",
}

# What a card written before the folder had a Hub name says to load (a push puts the repository id in its place).
LOCAL_FOLDER_PLACEHOLDER = "path/to/this/folder"
# What training leaves in its output folder that the card shows or quotes.
TRAINING_CURVES_FILE = "training_history.png"
METRICS_FILES = ("metrics.json", "all_results.json", "test_results.json", "eval_results.json")

def _format_metric(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def model_card_text(
    *,
    task: str,
    variant: str | None,
    num_parameters: int,
    image_size: int,
    num_labels: int,
    dataset: str | None = None,
    metrics: dict | None = None,
    source: str | None = None,
    source_sha256: str | None = None,
    repo_id: str | None = None,
    notes: str | None = None,
    preprocessing: dict | None = None,
    training_curves: str | None = None,
    output_stride: int = 16,
    model_type: str = "mobilevit",
) -> str:
    """The README.md of a model folder (YAML front matter for the Hub, then the card).

    `model_type` names the family (its description, citation and classes); `preprocessing` is the folder's
    `preprocessor_config.json` (its resize and crop sizes are quoted; the checkpoints' defaults for
    `image_size` otherwise); `training_curves` names an image file in the folder that the card shows under
    "Training"."""
    if task not in TASK_OUTPUTS:
        raise ValueError(f"task: expected one of {sorted(TASK_OUTPUTS)}, got {task!r}")
    family = auto.family(model_type)
    pipeline_tag, model_class = PIPELINE_TASKS[task], family.model_class(task).__name__
    output_text = TASK_OUTPUTS[task].format(output_stride=output_stride)
    variant_text = variant or "custom widths"
    load_from = repo_id or LOCAL_FOLDER_PLACEHOLDER

    front = ["---", "library_name: transformers", f"pipeline_tag: {pipeline_tag}", "tags:", "- vision",
             f"- {family.model_type}", f"- {pipeline_tag}"]
    if dataset:
        front += ["datasets:", f"- {dataset}"]
    front.append("---")

    lines = [
        *front,
        "",
        f"# {family.title} ({variant_text}) for {task.replace('-', ' ')}",
        "",
        family.description,
        "",
        "| | |",
        "|---|---|",
        f"| task | {task} ({output_text}) |",
        f"| variant | {variant_text} |",
        f"| parameters | {num_parameters:,} |",
        f"| classes | {num_labels}{f' ({dataset})' if dataset else ''} |",
        f"| resolution | {image_size}x{image_size} |",
    ]
    if source:
        lines.append(f"| converted from | `{Path(source).name}` |")
    if source_sha256:
        lines.append(f"| source sha256 | `{source_sha256}` |")

    lines += ["", "## Metrics", ""]
    if metrics:
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {name} | {_format_metric(value)} |" for name, value in metrics.items()]
    else:
        lines.append("Not measured for this folder.")

    if training_curves:
        lines += ["", "## Training", "", f"![training curves]({training_curves})"]

    preprocessing = preprocessing or family.preprocessing.image_processor(task, image_size).to_dict()
    lines += ["", "## Preprocessing", "", _preprocessing_text(preprocessing, family), ""]
    if task == OBJECT_DETECTION:
        lines += _detection_usage(family, model_class, load_from, preprocessing)
    else:
        lines += _usage(task, family, model_class, load_from, output_stride)
    if notes:
        lines += ["", "## Notes", "", notes]
    lines += ["", "## Citation", "", "```bibtex", family.citation, "```", ""]
    return "\n".join(lines)


def _usage(task: str, family, model_class: str, load_from: str, output_stride: int) -> list[str]:
    """How to use a classifier or segmenter, with stock transformers."""
    lines = [
        "## How to use",
        "",
        "```python",
        "from PIL import Image",
        f"from transformers import AutoImageProcessor, {model_class}",
        "",
        f'processor = AutoImageProcessor.from_pretrained("{load_from}")',
        f'model = {model_class}.from_pretrained("{load_from}").eval()',
        'inputs = processor(images=Image.open("image.jpg"), return_tensors="pt")',
        "logits = model(**inputs).logits",
    ]
    if task == CLASSIFICATION:
        lines.append("print(model.config.id2label[logits.argmax(-1).item()])")
    else:
        upsampling = (" (bilinear, align_corners=True, as the checkpoints were trained; "
                      "`processor.post_process_semantic_segmentation` does)" if family.segmentation_align_corners else "")
        lines.append(f"mask = logits.argmax(1)[0]  # (H/{output_stride}, W/{output_stride}) class indices; "
                     f"upsample logits first for full size{upsampling}")
    return lines + [
        "```",
        "",
        f"The `mobilevit` package loads the same folder with `mobilevit.{model_class}.from_pretrained(...)`.",
    ]


def _detection_usage(family, model_class: str, load_from: str, preprocessing: dict) -> list[str]:
    """A detector's post-processing rule and how to use it (with this package: stock transformers has no
    MobileViT detector)."""
    rule = preprocessing.get("detection_postprocessing") or family.detection_postprocessing.to_dict()
    per_class = rule.get("candidates_per_class")
    caps = [f"at most {rule['detections_per_class']} per class" if rule.get("detections_per_class") else None,
            f"at most {rule['detections_per_image']} per image" if rule.get("detections_per_image") else None]
    return [
        "## Post-processing",
        "",
        "The outputs are, per anchor, class logits (column 0: background; scores are the softmax over all "
        "columns) and a box, normalised (center x, center y, width, height). "
        "`processor.post_process_object_detection` turns them into pixel boxes (x1, y1, x2, y2) by the rule this "
        f"family's checkpoints were evaluated with (`detection_postprocessing`): scores above "
        f"{rule['score_threshold']}"
        + (f", the best {per_class} of each class" if per_class else "")
        + f", non-maximum suppression per class at IoU {rule['nms_iou_threshold']}, "
        + ", ".join(cap for cap in caps if cap) + ". Pass `threshold=` for a picture of confident boxes only.",
        "",
        "## How to use",
        "",
        "Stock transformers has no MobileViT detector; the `mobilevit` package runs this folder (stock "
        f"transformers loads its backbone: `{family.model_class(FEATURE_EXTRACTION).__name__}.from_pretrained(..., "
        "expand_output=False)`).",
        "",
        "```python",
        "from PIL import Image",
        "import mobilevit",
        "",
        f'detector = mobilevit.pipeline("object-detection", model="{load_from}")',
        'print(detector(Image.open("image.jpg"), threshold=0.3))  # [{"score", "label", "box"}, ...]',
        "",
        f"model = mobilevit.{model_class}.from_pretrained(\"{load_from}\").eval()",
        f'processor = mobilevit.MobileViTImageProcessor.from_pretrained("{load_from}")',
        'image = Image.open("image.jpg")',
        'outputs = model(**processor(images=image, return_tensors="pt"))',
        "detections = processor.post_process_object_detection(outputs, threshold=0.3, "
        "target_sizes=[(image.height, image.width)])[0]",
        "```",
    ]


def _preprocessing_text(preprocessing: dict, family) -> str:
    """What the folder's processor config (`preprocessing`) does to an image, in one paragraph."""
    processor = MobileViTImageProcessor.from_dict(dict(preprocessing))
    order = "BGR" if processor.setting("do_flip_channel_order") else "RGB"
    resample = {0: "nearest", 2: "bilinear", 3: "bicubic"}.get(int(processor.resample), str(processor.resample))
    resample += ", antialiased" if processor.setting("resize_antialias") else ""
    steps = []
    if processor.setting("do_resize") and processor.size:
        size = dict(processor.size)
        steps.append(f"resize the shortest edge to {size['shortest_edge']}" if size.get("shortest_edge")
                     else f"resize to {size['height']}x{size['width']} (height x width)")
    if processor.setting("do_center_crop") and processor.crop_size:
        steps.append(f"center-crop {processor.crop_size['height']}x{processor.crop_size['width']}")
    steps.append("rescale by 1/255" if processor.setting("do_rescale") else "no rescaling")
    steps.append("flip RGB to BGR" if order == "BGR" else "keep RGB")
    trained = family.preprocessing
    return (f"The model takes **{order}** images with values in **[0, 1]** and **no mean/std normalisation** "
            f"({trained.release} read images with {'Pillow' if trained.antialias else 'OpenCV'} in "
            f"{trained.channel_order} order and only divided by 255). `preprocessor_config.json` does this: "
            f"{', '.join(steps[:-1])} and {steps[-1]}; resizing is {resample}.")


def write_model_card(folder: str | Path, **card) -> Path:
    """Write `README.md` into `folder` (see `model_card_text` for the fields) and return its path.

    Training curves saved in the folder (`training_history.png`) are shown unless `training_curves` says
    otherwise."""
    folder = Path(folder)
    if "training_curves" not in card and (folder / TRAINING_CURVES_FILE).is_file():
        card["training_curves"] = TRAINING_CURVES_FILE
    # the folder's own processor and config, when already written, say what the card quotes
    if "preprocessing" not in card and (folder / "preprocessor_config.json").is_file():
        card["preprocessing"] = json.loads((folder / "preprocessor_config.json").read_text(encoding="utf-8"))
    if (folder / "config.json").is_file():
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        card.setdefault("output_stride", config.get("output_stride", 16))
        card.setdefault("model_type", config.get("model_type", "mobilevit"))
    path = folder / "README.md"
    path.write_text(model_card_text(**card), encoding="utf-8")
    return path


# -- reading a saved folder ----------------------------------------------------------------------------------
# What a push uploads from a folder: top-level files of these kinds. Sub-folders (Trainer checkpoints, logs)
# and pickles (`training_args.bin`, optimizer states) stay local.
UPLOADED_SUFFIXES = (".json", ".safetensors", ".md", ".png", ".txt", ".csv")


def read_metrics(folder: str | Path) -> dict | None:
    """The scalar results training wrote into `folder` (the first of `METRICS_FILES` that exists).

    `mobilevit train` nests them by split (`{"validation": {...}, "test": {...}}`; the test split is quoted
    when there is one); transformers' `Trainer.save_metrics` writes them flat (`{"eval_accuracy": ...}`)."""

    def scalars(values: dict, prefix: str = "") -> dict:
        return {f"{prefix}{k}": v for k, v in values.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)}

    for name in METRICS_FILES:
        path = Path(folder) / name
        if not path.is_file():
            continue
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            continue
        for split in ("test", "validation"):
            if isinstance(data.get(split), dict):
                return scalars(data[split], prefix=f"{split} ") or None
        return scalars(data) or None
    return None


def model_card_for_folder(folder: str | Path, repo_id: str | None = None) -> str:
    """The model card of a saved folder: task and variant from `config.json`, the parameter count of the
    weights, metrics and training curves when training left them, preprocessing from the processor config."""
    folder = Path(folder)
    config = auto.load_config(folder)
    task = auto.task_of(config)
    model = auto.load_model(folder, task)
    processor_file = folder / "preprocessor_config.json"
    return model_card_text(
        task=task,
        model_type=config.model_type,
        variant=config.variant,
        num_parameters=model.num_parameters(),
        image_size=int(config.image_size),
        num_labels=config.num_labels,
        metrics=read_metrics(folder),
        repo_id=repo_id,
        preprocessing=json.loads(processor_file.read_text(encoding="utf-8")) if processor_file.is_file() else None,
        training_curves=TRAINING_CURVES_FILE if (folder / TRAINING_CURVES_FILE).is_file() else None,
        output_stride=int(config.output_stride),
    )


def _check_repo_id(repo_id) -> str:
    if not isinstance(repo_id, str) or not repo_id.strip() or repo_id.count("/") > 1:
        raise ValueError(f"repo_id: expected a Hub repository name such as 'user/mobilevit-small', got {repo_id!r}")
    return repo_id.strip()


# -- pushing ---------------------------------------------------------------------------------------------------
def push_folder_to_hub(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str = "Upload MobileViT model",
    regenerate_card: bool = False,
) -> str:
    """Upload a saved model folder to `repo_id` (created if needed) in one commit; returns the commit URL.

    The folder must hold `config.json` and safetensors weights. What goes up: its top-level config,
    weights, processor config, card, metrics and pictures (see `UPLOADED_SUFFIXES`). A folder without
    `preprocessor_config.json` gets the checkpoints' default preprocessing; one without `README.md` (or with
    `regenerate_card=True`) gets the card of `model_card_for_folder`; an existing card goes up with the
    repository id in its loading example. The folder itself is not modified.
    """
    from huggingface_hub import CommitOperationAdd, HfApi

    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"folder: expected an existing model folder, got {str(folder)!r}")
    repo_id = _check_repo_id(repo_id)
    config = auto.load_config(folder)  # a clear error for a folder that is not a model
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in UPLOADED_SUFFIXES)
    if not any(p.suffix == ".safetensors" for p in files):
        raise ValueError(f"folder: expected safetensors weights (model.safetensors) in {str(folder)!r}, found none")
    operations = [CommitOperationAdd(path_in_repo=p.name, path_or_fileobj=str(p)) for p in files
                  if p.name != "README.md"]
    names = {p.name for p in files}
    if "preprocessor_config.json" not in names:
        processor_json = auto.image_processor_for(config).to_json_string().encode("utf-8")
        operations.append(CommitOperationAdd(path_in_repo="preprocessor_config.json", path_or_fileobj=processor_json))
    if regenerate_card or "README.md" not in names:
        card = model_card_for_folder(folder, repo_id=repo_id)
    else:  # the card the converter or training wrote, now naming the repository in its loading example
        card = (folder / "README.md").read_text(encoding="utf-8").replace(f'"{LOCAL_FOLDER_PLACEHOLDER}"', f'"{repo_id}"')
    operations.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card.encode("utf-8")))

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    info = api.create_commit(repo_id=repo_id, repo_type="model", operations=operations,
                             commit_message=commit_message)
    return str(getattr(info, "commit_url", info))


def push_to_hub(
    model_or_folder,
    repo_id: str,
    *,
    image_processor=None,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str = "Upload MobileViT model",
    regenerate_card: bool = False,
) -> str:
    """Push model, config and image processor together, with a generated model card; returns the commit URL.

    `model_or_folder` is a folder saved by this package (`mobilevit train`, `mobilevit convert`,
    `save_pretrained`) or a model object of this package; for a model, `image_processor` is saved beside it
    (the family's evaluation preprocessing when None). Point `HF_ENDPOINT` elsewhere to use another Hub.
    """
    if isinstance(model_or_folder, (str, os.PathLike)):
        if image_processor is not None:
            raise ValueError("image_processor: pass it only with a model object; a folder brings its own "
                             "preprocessor_config.json")
        return push_folder_to_hub(model_or_folder, repo_id, private=private, token=token,
                                  commit_message=commit_message, regenerate_card=regenerate_card)
    try:
        auto.family_of(model_or_folder)
    except TypeError:
        raise TypeError(f"model_or_folder: expected a model folder or a model of this package, "
                        f"got {type(model_or_folder).__name__}") from None
    _check_repo_id(repo_id)
    with tempfile.TemporaryDirectory(prefix="mobilevit-push-") as staging:
        model_or_folder.save_pretrained(staging)
        processor = image_processor or auto.image_processor_for(model_or_folder.config,
                                                                auto.task_of_model(model_or_folder))
        processor.save_pretrained(staging)
        return push_folder_to_hub(staging, repo_id, private=private, token=token, commit_message=commit_message,
                                  regenerate_card=True)


__all__ = ["write_model_card", "model_card_text", "model_card_for_folder", "read_metrics", "push_folder_to_hub",
           "push_to_hub", "TRAINING_CURVES_FILE"]
