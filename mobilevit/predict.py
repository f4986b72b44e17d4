"""`mobilevit predict IMAGE... --model DIR`: classify or segment image files with a saved model.

Classification prints the top-k labels with their probabilities. Segmentation writes, per image, a
palette PNG whose pixel values are the class ids (`<name>_mask.png`, colour-coded, exact) and a picture
of the photo beside the mask overlaid on it with a legend (`<name>_segmentation.png`), and prints the share
of pixels of every class present. `--json` prints one JSON document instead of text.

Bad input (a missing or unreadable file, a file that is not an image, a folder that is not a model) ends
with exit code 1 and one line on stderr naming the path; nothing is written in that case.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

EXIT_BAD_INPUT = 1


class PredictInputError(ValueError):
    """An input the command cannot use; its message is the one line shown to the user."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files (JPEG, PNG, ...; any mode)")
    parser.add_argument("--model", required=True, metavar="DIR",
                        help="a folder saved by mobilevit (train, convert, save_pretrained) or a Hub repository id")
    parser.add_argument("--top-k", type=int, default=5, metavar="K", help="classification: labels to show (default 5)")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON document")
    parser.add_argument("--output-dir", metavar="DIR", default=None,
                        help="where segmentation masks (and predictions.json) go; default ./predictions for "
                             "segmentation, nothing written for classification")
    parser.add_argument("--overwrite", action="store_true", help="replace output files that already exist")
    parser.add_argument("--device", default="cpu", help="torch device to run on (default cpu)")


def run(args: argparse.Namespace) -> int:
    try:
        if args.top_k < 1:
            raise PredictInputError(f"--top-k: expected a positive integer, got {args.top_k}")
        images = [read_image(path) for path in args.images]  # every input is checked before any work
        results = predict(images, args)
    except PredictInputError as err:
        print(f"mobilevit predict: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print_results(results)
    return 0


# -- inputs ----------------------------------------------------------------------------------------------------
def read_image(path: str):
    """Open an image file fully (so a truncated file fails here) as RGB; one-line errors naming the path."""
    from PIL import Image, UnidentifiedImageError

    file = Path(path)
    if not file.exists():
        raise PredictInputError(f"image {path!r} does not exist")
    if file.is_dir():
        raise PredictInputError(f"image {path!r} is a folder, expected an image file")
    try:
        with Image.open(file) as image:
            image.load()
            return to_rgb(image)
    except UnidentifiedImageError:
        raise PredictInputError(f"image {path!r} is not an image file Pillow can read") from None
    except PermissionError:
        raise PredictInputError(f"image {path!r} cannot be read (permission denied)") from None
    except (OSError, SyntaxError, ValueError) as err:  # truncated or corrupt data
        raise PredictInputError(f"image {path!r} cannot be decoded ({err})") from None


def to_rgb(image):
    """Any PIL mode -> upright RGB, as transformers' pipelines read images (EXIF orientation applied, alpha
    dropped), except that 16-bit grey is scaled to 8 bits instead of being clipped."""
    from PIL import Image, ImageOps

    image = ImageOps.exif_transpose(image)
    if image.mode in ("I", "I;16", "I;16B", "I;16L"):
        array = np.asarray(image, dtype=np.float64)
        return Image.fromarray(np.clip(array / 257.0, 0, 255).round().astype(np.uint8)).convert("RGB")
    return image.convert("RGB")


# -- prediction ------------------------------------------------------------------------------------------------
def predict(images: list, args: argparse.Namespace) -> list[dict]:
    import torch

    from . import auto
    from .tasks import CLASSIFICATION

    try:
        model, processor, task = auto.load_model_and_processor(args.model)
    except auto.NotAModelError as err:
        raise PredictInputError(str(err)) from None
    model.to(args.device)
    if task == CLASSIFICATION:
        json_path = Path(args.output_dir) / "predictions.json" if args.output_dir else None
        check_outputs_free([json_path] if json_path else [], args.overwrite)
        results = classify(model, processor, images, args)
        if json_path is not None:
            write_atomically(json_path, json.dumps(results, indent=2).encode())
        return results
    outputs = segmentation_outputs(args.images, Path(args.output_dir or "predictions"))
    check_outputs_free([path for pair in outputs for path in pair], args.overwrite)
    with torch.inference_mode():
        return [segment_and_save(model, processor, image, path, *pair)
                for image, path, pair in zip(images, args.images, outputs)]


def segmentation_outputs(image_paths: list[str], output_dir: Path) -> list[tuple[Path, Path]]:
    """(mask PNG, figure PNG) per image, named after the image; two images of the same name would collide."""
    stems = [Path(path).stem for path in image_paths]
    duplicates = sorted({stem for stem in stems if stems.count(stem) > 1})
    if duplicates:
        raise PredictInputError(f"images: several files are named {duplicates[0]!r}; their masks would overwrite "
                                "each other in the output folder (run them separately)")
    return [(output_dir / f"{stem}_mask.png", output_dir / f"{stem}_segmentation.png") for stem in stems]


def check_outputs_free(paths: list[Path], overwrite: bool) -> None:
    """Refuse before any work when an output exists and --overwrite was not given."""
    for path in paths:
        if path.exists() and not overwrite:
            raise PredictInputError(f"output {str(path)!r} already exists (pass --overwrite to replace it)")


def classify(model, processor, images: list, args) -> list[dict]:
    import torch

    k = min(args.top_k, model.config.num_labels)
    results = []
    with torch.inference_mode():
        for image, path in zip(images, args.images):
            pixels = processor(images=image, return_tensors="pt")["pixel_values"].to(args.device)
            probabilities = model(pixel_values=pixels).logits.softmax(-1)[0]
            scores, indices = probabilities.topk(k)
            results.append({
                "image": path,
                "predictions": [{"label": model.config.id2label[int(i)], "score": float(s)}
                                for s, i in zip(scores, indices)],
            })
    return results


def segment(model, processor, image) -> np.ndarray:
    """(height, width) class ids at the image's own size, as the image-segmentation pipeline computes them."""
    inputs = processor(images=image, return_tensors="pt").to(model.device)
    outputs = model(**inputs)
    return processor.post_process_semantic_segmentation(outputs, target_sizes=[(image.height, image.width)])[0].cpu().numpy()


def class_areas(class_map: np.ndarray, id2label: dict) -> list[dict]:
    """Share of the pixels of every class present, largest first."""
    ids, counts = np.unique(class_map, return_counts=True)
    order = np.argsort(-counts, kind="stable")
    return [{"label": id2label[int(ids[i])], "class_id": int(ids[i]), "percent": 100.0 * counts[i] / class_map.size}
            for i in order]


def segment_and_save(model, processor, image, path: str, mask_path: Path, figure_path: Path) -> dict:
    class_map = segment(model, processor, image)
    areas = class_areas(class_map, model.config.id2label)
    palette = color_palette(model.config.num_labels)
    write_atomically(mask_path, palette_png(class_map, palette))
    write_atomically(figure_path, segmentation_figure(image, class_map, palette, areas))
    return {"image": path, "mask": str(mask_path), "figure": str(figure_path), "areas": areas}


# -- pictures --------------------------------------------------------------------------------------------------
def color_palette(num_classes: int) -> np.ndarray:
    """(num_classes, 3) uint8 colours: the PASCAL VOC colour map (class 0 black, then distinct colours),
    which segmentation users recognise; it spreads the bits of the class id over the three channels."""
    palette = np.zeros((num_classes, 3), dtype=np.uint8)
    for class_id in range(num_classes):
        value, shift = class_id, 7
        while value:
            for channel in range(3):
                palette[class_id, channel] |= ((value >> channel) & 1) << shift
            value >>= 3
            shift -= 1
    return palette


def palette_png(class_map: np.ndarray, palette: np.ndarray) -> bytes:
    """A mode-P PNG: each pixel's value is its class id, shown in the palette's colour."""
    import io

    from PIL import Image

    if palette.shape[0] > 256:
        raise ValueError(f"num_labels: a palette PNG holds at most 256 classes, got {palette.shape[0]}")
    mask = Image.fromarray(class_map.astype(np.uint8), mode="P")
    mask.putpalette(palette.reshape(-1).tolist())
    buffer = io.BytesIO()
    mask.save(buffer, format="PNG")
    return buffer.getvalue()


def segmentation_figure(image, class_map: np.ndarray, palette: np.ndarray, areas: list[dict]) -> bytes:
    """PNG: the photo, then the colour mask blended over it, then a legend with each class's share."""
    import io

    # matplotlib's object API renders without pyplot, so the caller's backend (a notebook's inline plots) is
    # left alone
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    photo = np.asarray(image, dtype=np.float32) / 255.0
    overlay = 0.45 * photo + 0.55 * palette[class_map].astype(np.float32) / 255.0
    figure = Figure(figsize=(10, 3.6 * image.height / max(image.width, 1) + 0.8))
    axes = figure.subplots(1, 2)
    for axis, picture, title in zip(axes, (photo, overlay), ("photo", "predicted classes")):
        axis.imshow(picture)
        axis.set_title(title)
        axis.axis("off")
    handles = [Patch(color=palette[a["class_id"]] / 255.0, label=f"{a['label']} ({a['percent']:.1f}%)") for a in areas]
    figure.legend(handles=handles, loc="center right", frameon=False)
    figure.tight_layout(rect=(0, 0, 0.8, 1))
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


# -- output ----------------------------------------------------------------------------------------------------
def write_atomically(path: Path, data: bytes) -> None:
    """Write to a temporary file next to `path`, then move it into place whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def print_results(results: list[dict]) -> None:
    for result in results:
        print(result["image"])
        if "predictions" in result:
            for prediction in result["predictions"]:
                print(f"  {prediction['score']:.4f}  {prediction['label']}")
        else:
            for area in result["areas"]:
                print(f"  {area['percent']:6.2f}%  {area['label']}")
            print(f"  mask: {result['mask']}\n  figure: {result['figure']}")
