"""Hub helpers: the model card every saved MobileViT folder gets, and pushing a finished folder.

`write_model_card` is used by the checkpoint converter and by training; it describes what the folder holds
(task, variant, size, metrics when known, where the weights came from) and how to use it, including the
one thing MobileViT users trip over: the model takes BGR pixels in [0, 1] with no mean/std normalisation.
"""

from __future__ import annotations

from pathlib import Path

TASK_CARD_INFO = {
    # task -> (pipeline tag, what the model outputs, transformers class)
    "image-classification": ("image-classification", "class logits", "MobileViTForImageClassification"),
    "semantic-segmentation": (
        "image-segmentation",
        "per-pixel class logits at 1/16 of the input resolution",
        "MobileViTForSemanticSegmentation",
    ),
}

CITATION = """@inproceedings{mehta2022mobilevit,
  title     = {MobileViT: Light-weight, General-purpose, and Mobile-friendly Vision Transformer},
  author    = {Sachin Mehta and Mohammad Rastegari},
  booktitle = {International Conference on Learning Representations},
  year      = {2022},
  url       = {https://openreview.net/forum?id=vh-0sUt8HlG}
}"""


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
) -> str:
    """The README.md of a model folder (YAML front matter for the Hub, then the card)."""
    if task not in TASK_CARD_INFO:
        raise ValueError(f"task: expected one of {sorted(TASK_CARD_INFO)}, got {task!r}")
    pipeline_tag, output_text, model_class = TASK_CARD_INFO[task]
    variant_text = variant or "custom widths"
    load_from = repo_id or "path/to/this/folder"

    front = ["---", "library_name: transformers", f"pipeline_tag: {pipeline_tag}", "tags:", "- vision",
             "- mobilevit", f"- {pipeline_tag}"]
    if dataset:
        front += ["datasets:", f"- {dataset}"]
    front.append("---")

    lines = [
        *front,
        "",
        f"# MobileViT ({variant_text}) for {task.replace('-', ' ')}",
        "",
        "MobileViT v1 (Mehta & Rastegari, ICLR 2022): MobileNetV2 stages followed by MobileViT blocks that "
        "unfold the feature map into 2x2 patches, mix them with a small transformer and fold them back.",
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

    lines += [
        "",
        "## Preprocessing",
        "",
        "The model takes **BGR** images with values in **[0, 1]** and **no mean/std normalisation** "
        "(ml-cvnets reads images with OpenCV and only divides by 255). `preprocessor_config.json` does this: "
        f"resize the shortest edge to {image_size + 32}, center-crop {image_size}x{image_size}, rescale by "
        "1/255 and flip RGB to BGR.",
        "",
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
    if task == "image-classification":
        lines.append("print(model.config.id2label[logits.argmax(-1).item()])")
    else:
        lines.append("mask = logits.argmax(1)[0]  # (H/16, W/16) class indices; upsample logits first for full size")
    lines += [
        "```",
        "",
        f"The `mobilevit` package loads the same folder with `mobilevit.{model_class}.from_pretrained(...)`.",
    ]
    if notes:
        lines += ["", "## Notes", "", notes]
    lines += ["", "## Citation", "", "```bibtex", CITATION, "```", ""]
    return "\n".join(lines)


def write_model_card(folder: str | Path, **card) -> Path:
    """Write `README.md` into `folder` (see `model_card_text` for the fields) and return its path."""
    path = Path(folder) / "README.md"
    path.write_text(model_card_text(**card), encoding="utf-8")
    return path


def push_folder_to_hub(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str = "Upload MobileViT model",
) -> str:
    """Create `repo_id` (if needed) and upload every file of the finished `folder`; returns the commit URL."""
    from huggingface_hub import HfApi

    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"folder: expected an existing model folder, got {str(folder)!r}")
    if not isinstance(repo_id, str) or not repo_id.strip():
        raise ValueError(f"repo_id: expected a Hub repository name such as 'user/mobilevit-small', got {repo_id!r}")
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                             commit_message=commit_message)
    return str(getattr(info, "commit_url", info))


__all__ = ["write_model_card", "model_card_text", "push_folder_to_hub", "CITATION"]
