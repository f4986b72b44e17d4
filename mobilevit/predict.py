"""`mobilevit predict IMAGE... --model DIR`: classify, segment or detect objects in image files with a saved model.

Classification prints the top-k labels with their probabilities. Segmentation writes, per image, a
palette PNG whose pixel values are the class ids (`<name>_mask.png`, colour-coded, exact) and a picture
of the photo beside the mask overlaid on it with a legend (`<name>_segmentation.png`), and prints the share
of pixels of every class present. Detection writes, per image, the photo at its own size with a labelled box
per detection (`<name>_detections.png`), and all detections (label, score, box in the photo's pixels) in
`detections.json`; it prints them. `--json` prints one JSON document instead of text.

Segmentation runs on the whole image: the processor's resize (shortest edge), no centre crop, so that the
logits cover every pixel and the mask maps back onto the photo exactly (a centre crop stretched over the
whole photo would misplace everything outside the crop). Detection squashes the whole image to the model's
size (ml-cvnets' evaluation) and maps the boxes back onto the photo's pixels; `--threshold` (default 0.5, as
transformers' pipeline) keeps the confident ones, `--max-detections` caps their number.

Everything is checked before the model runs (`check_arguments`, then the model folder, the outputs and every
image); a mistake ends with one line on stderr, `mobilevit predict: error: ...`, and nothing is written.
"""

from __future__ import annotations

import argparse
from contextlib import nullcontext
from pathlib import Path

import numpy as np

from . import limits
from .errors import UserError
from .file_utils import (
    check_output_dir,
    check_output_files,
    claim_output,
    json_text,
    staged_outputs,
    write_file_atomically,
)
from .image_reading import image_pixels, open_image
from .tasks import CLASSIFICATION, OBJECT_DETECTION, SEGMENTATION, canonical_task

DEFAULT_SEGMENTATION_OUTPUT = "predictions"  # where pictures go when --output-dir is not given
MAX_PALETTE_CLASSES = 256
PREDICT_TASKS = (CLASSIFICATION, SEGMENTATION, OBJECT_DETECTION)
DEFAULT_DETECTION_THRESHOLD = 0.5  # transformers' object-detection pipeline's
DETECTIONS_FILE = "detections.json"


class PredictError(UserError):
    """A `predict` argument or input that cannot be used; the message is the one line shown to the user."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files (JPEG, PNG, ...; any mode)")
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
                        help="where segmentation masks, detection pictures and detections.json (and "
                             f"predictions.json) go; default ./{DEFAULT_SEGMENTATION_OUTPUT} for segmentation and "
                             "detection, nothing written for classification")
    parser.add_argument("--overwrite", action="store_true", help="replace output files that already exist")
    parser.add_argument("--device", default="cpu", help="torch device to run on: cpu, cuda, cuda:1, mps, ...")


def run(args: argparse.Namespace) -> int:
    from . import auto

    device = check_arguments(args)
    with auto.quiet_transformers():
        model, processor, task = _load(args)
    outputs = planned_outputs(args, task)
    # one run writes an output folder at a time (file_utils.claim_output); the outputs are checked again under it
    with claim_output(args.output_dir, "--output-dir", error=PredictError) if outputs else nullcontext():
        outputs = planned_outputs(args, task)
        images = [read_image(path, processor) for path in args.images]  # every input is checked before any work
        model.to(device)
        if task == CLASSIFICATION:
            results = classify(model, processor, images, args.images, args.top_k)
            if outputs:
                write_file_atomically(outputs[0], json_text(results).encode(), overwrite=args.overwrite,
                                      argument="--output-dir", error=PredictError)
        elif task == OBJECT_DETECTION:
            results = detect_and_draw_all(model, processor, images, args.images, outputs, args.threshold,
                                          args.max_detections, overwrite=args.overwrite)
        else:
            results = [segment_and_save(model, processor, image, path, *pair, overwrite=args.overwrite)
                       for image, path, pair in zip(images, args.images, zip(outputs[::2], outputs[1::2]))]
    if args.json:
        print(json_text(results))
    else:
        print_results(results)
    return 0


# -- checks before any work ----------------------------------------------------------------------------------
def check_arguments(args: argparse.Namespace):
    """The one place where predict's arguments are checked; returns the torch device."""
    limits.check_results_per_image("--top-k", args.top_k, PredictError)
    limits.check_number("--threshold", args.threshold, 0.0, 1.0, error=PredictError)  # a score; NaN fails too
    if args.max_detections is not None:
        limits.check_results_per_image("--max-detections", args.max_detections, PredictError)
    if args.task != "auto":
        try:
            args.task = canonical_task(args.task, allowed=PREDICT_TASKS)
        except ValueError as err:
            raise PredictError(f"--{err}", usage=True) from None
    if args.output_dir is not None:
        check_output_dir(args.output_dir, "--output-dir", _model_folder(args), replaces=False, error=PredictError)
    return check_device(args.device)


def check_device(name: str):
    """A torch device this machine has, or a one-line error."""
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise PredictError(f"--device: expected a torch device such as cpu, cuda, cuda:1 or mps, got {name!r}",
                           usage=True) from None
    backends = {"cpu": None, "cuda": torch.cuda, "mps": torch.backends.mps, "xpu": getattr(torch, "xpu", None)}
    if device.type not in backends:
        raise PredictError(f"--device: expected one of {', '.join(backends)} (with an index), got {name!r}", usage=True)
    backend = backends[device.type]
    if backend is not None and not (backend.is_available() if hasattr(backend, "is_available") else False):
        raise PredictError(f"--device: expected a device this machine has, got {name!r} (torch sees no "
                           f"{device.type} device here)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise PredictError(f"--device: expected a device this machine has, got {name!r} (torch sees "
                           f"{torch.cuda.device_count()} cuda devices)")
    return device


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
    if task not in PREDICT_TASKS:
        raise PredictError(f"--model: expected a classification, segmentation or detection model, got "
                           f"{str(args.model)!r}, a {task} model (a backbone without a head)")
    if task == SEGMENTATION and model.config.num_labels > MAX_PALETTE_CLASSES:
        raise PredictError(f"--model: expected at most {MAX_PALETTE_CLASSES} classes (the masks are palette PNGs), "
                           f"got {model.config.num_labels}")
    return model, processor, task


def planned_outputs(args, task: str) -> list[Path]:
    """The files predict will write, checked before any work: for segmentation a (mask, figure) pair per image
    (named after it; two images of the same name would collide), for detection detections.json then a picture
    per image, for classification predictions.json when --output-dir is given. None may exist unless
    --overwrite, none may be an input."""
    if task == CLASSIFICATION:
        if args.output_dir is None:
            return []
        paths = [Path(args.output_dir) / "predictions.json"]
    else:
        if args.output_dir is None:
            args.output_dir = DEFAULT_SEGMENTATION_OUTPUT
            check_output_dir(args.output_dir, "--output-dir", _model_folder(args), replaces=False, error=PredictError)
        stems = [Path(path).stem for path in args.images]
        duplicates = sorted({stem for stem in stems if stems.count(stem) > 1})
        if duplicates:
            raise PredictError(f"images: several files are named {duplicates[0]!r}; their pictures would overwrite "
                               "each other in the output folder (run them separately)", usage=True)
        suffixes = ("_mask.png", "_segmentation.png") if task == SEGMENTATION else ("_detections.png",)
        paths = [Path(args.output_dir) / DETECTIONS_FILE] if task == OBJECT_DETECTION else []
        paths += [Path(args.output_dir) / f"{stem}{suffix}" for stem in stems for suffix in suffixes]
    # names the file system holds, no dangling links, no folder in the way, leftovers of a killed run put right
    check_output_files(paths, "--output-dir", overwrite=True, error=PredictError)
    inputs = {Path(image).resolve() for image in args.images}
    for path in paths:
        if path.resolve() in inputs:
            raise PredictError(f"--output-dir: expected outputs that are not inputs, but {str(path)!r} is one of the "
                               "images", usage=True)
        if path.exists() and not args.overwrite:
            raise PredictError(f"output {str(path)!r} already exists (pass --overwrite to replace it)")
        if path.is_dir():
            raise PredictError(f"output {str(path)!r} is a folder, expected a file (or nothing) there")
    return paths


# -- inputs ----------------------------------------------------------------------------------------------------
def read_image(path: str, processor):
    """An image file decoded whole and upright, read by the processor's rules (`image_reading`): H x W x C
    pixels. A file that cannot be used is a one-line error naming it."""
    image = open_image(path)
    return image_pixels(image, repr(path), convert_rgb=processor.setting("do_convert_rgb"),
                        quantise=processor.setting("do_rescale"))


# -- prediction ------------------------------------------------------------------------------------------------
def classify(model, processor, images: list, names: list[str], top_k: int) -> list[dict]:
    import torch

    k = min(top_k, model.config.num_labels)
    results = []
    with torch.inference_mode():
        for image, name in zip(images, names):
            pixels = processor(images=image, input_data_format="channels_last",
                               return_tensors="pt")["pixel_values"].to(model.device)
            logits = model(pixel_values=pixels).logits
            if not bool(logits.isfinite().all()):
                raise PredictError(f"image {name!r}: the model's outputs hold NaN or infinity")
            probabilities = logits.softmax(-1)[0]
            scores, indices = probabilities.topk(k)
            results.append({
                "image": name,
                "predictions": [{"label": model.config.id2label[int(i)], "score": float(s)}
                                for s, i in zip(scores, indices)],
            })
    return results


def segment(model, processor, image) -> np.ndarray:
    """(height, width) class ids of a H x W x C image at its own size: the whole image, resized (shortest edge)
    but not cropped, and the logits resized back onto it."""
    import torch

    height, width = image.shape[:2]
    with torch.inference_mode():
        inputs = processor(images=image, input_data_format="channels_last", do_center_crop=False,
                           return_tensors="pt").to(model.device)
        outputs = model(**inputs)
        if not bool(outputs.logits.isfinite().all()):
            raise PredictError("the model's outputs hold NaN or infinity for this image")
        return processor.post_process_semantic_segmentation(outputs, target_sizes=[(height, width)])[0].cpu().numpy()


def class_areas(class_map: np.ndarray, id2label: dict) -> list[dict]:
    """Share of the pixels of every class present, largest first."""
    ids, counts = np.unique(class_map, return_counts=True)
    order = np.argsort(-counts, kind="stable")
    return [{"label": id2label[int(ids[i])], "class_id": int(ids[i]), "percent": 100.0 * counts[i] / class_map.size}
            for i in order]


def segment_and_save(model, processor, image, path: str, mask_path: Path, figure_path: Path,
                     overwrite: bool = True) -> dict:
    class_map = segment(model, processor, image)
    areas = class_areas(class_map, model.config.id2label)
    palette = color_palette(model.config.num_labels)
    # the mask and its figure appear together or not at all (file_utils.staged_outputs)
    with staged_outputs([mask_path, figure_path], overwrite=overwrite, argument="--output-dir",
                        error=PredictError) as staged:
        staged.path(mask_path).write_bytes(palette_png(class_map, palette))
        staged.path(figure_path).write_bytes(segmentation_figure(_display_rgb(image), class_map, palette, areas))
    return {"image": path, "mask": str(mask_path), "figure": str(figure_path), "areas": areas}


def detect(model, processor, image, threshold: float, top_k: int | None = None, name: str = "this image"
           ) -> list[dict]:
    """Detections of a H x W x C image in its own pixels: [{"label", "score", "box": {"xmin", "ymin", "xmax",
    "ymax"}}], best first. The whole image goes in (squashed to the model's size, no crop), the boxes come back
    scaled to the image."""
    import torch

    height, width = image.shape[:2]
    with torch.inference_mode():
        inputs = processor(images=image, input_data_format="channels_last", do_center_crop=False,
                           return_tensors="pt").to(model.device)
        outputs = model(**inputs)
        if not (bool(outputs.logits.isfinite().all()) and bool(outputs.pred_boxes.isfinite().all())):
            raise PredictError(f"image {name!r}: the model's outputs hold NaN or infinity")
        found = processor.post_process_object_detection(outputs, threshold=threshold,
                                                        target_sizes=[(height, width)], top_k=top_k)[0]
    order = found["scores"].argsort(descending=True, stable=True).tolist()
    return [{"label": model.config.id2label[int(found["labels"][i])], "class_id": int(found["labels"][i]),
             "score": float(found["scores"][i]),
             "box": dict(zip(("xmin", "ymin", "xmax", "ymax"), (round(float(v), 2) for v in found["boxes"][i])))}
            for i in order]


def detect_and_draw_all(model, processor, images: list, names: list[str], outputs: list[Path], threshold: float,
                        max_detections: int | None, overwrite: bool = True) -> list[dict]:
    """Detect objects in every image and write a picture of each plus detections.json (`outputs`: that file, then
    the pictures in the images' order). They describe each other, so they are committed together
    (file_utils.staged_outputs; detections.json, the manifest, arrives last): all appear or none."""
    palette = color_palette(max(model.config.num_labels, 2))
    manifest, figures = outputs[0], outputs[1:]
    results = []
    with staged_outputs([*figures, manifest], overwrite=overwrite, argument="--output-dir",
                        error=PredictError) as staged:
        for image, name, figure in zip(images, names, figures):
            detections = detect(model, processor, image, threshold, max_detections, name)
            staged.path(figure).write_bytes(detections_picture(_display_rgb(image), detections, palette))
            results.append({"image": name, "figure": str(figure), "detections": detections})
        staged.path(manifest).write_text(json_text(results))
    return results


def _display_rgb(pixels) -> np.ndarray:
    """H x W x 3 float RGB in [0, 1] for showing the image (grey repeated, a fourth channel left out)."""
    values = pixels.float().numpy()
    values = np.repeat(values, 3, axis=2) if values.shape[2] == 1 else values[:, :, :3]
    if pixels.dtype.is_floating_point:  # do_rescale=False: the image's own units
        low, high = values.min(), values.max()
        return (values - low) / (high - low) if high > low else np.zeros_like(values)
    return values / 255.0


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

    if palette.shape[0] > MAX_PALETTE_CLASSES:
        raise ValueError(f"num_labels: a palette PNG holds at most {MAX_PALETTE_CLASSES} classes, got {palette.shape[0]}")
    mask = Image.fromarray(class_map.astype(np.uint8), mode="P")
    mask.putpalette(palette.reshape(-1).tolist())
    buffer = io.BytesIO()
    mask.save(buffer, format="PNG")
    return buffer.getvalue()


def segmentation_figure(photo: np.ndarray, class_map: np.ndarray, palette: np.ndarray, areas: list[dict]) -> bytes:
    """PNG: the photo (H x W x 3 in [0, 1]), then the colour mask blended over it, then a legend with each
    class's share."""
    import io

    # matplotlib's object API renders without pyplot, so the caller's backend (a notebook's inline plots) is
    # left alone
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    overlay = 0.45 * photo + 0.55 * palette[class_map].astype(np.float32) / 255.0
    height, width = class_map.shape
    figure = Figure(figsize=(10, 3.6 * height / max(width, 1) + 0.8))
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


def box_line_width(height: int, width: int) -> int:
    """Outline width of a drawn box: 2 pixels, more on large photos (a 0.3 % of the longer side)."""
    return max(2, round(max(height, width) / 300))


def detections_picture(photo: np.ndarray, detections: list[dict], palette: np.ndarray) -> bytes:
    """PNG: the photo (H x W x 3 in [0, 1]) at its own size, each detection's box outlined in its class's colour
    (the PASCAL VOC palette; the box's pixel edges are the outline's outer edges) and labelled with its class and
    score on a filled tag above it (inside when there is no room)."""
    import io

    from PIL import Image, ImageDraw, ImageFont

    picture = Image.fromarray(np.clip(np.round(photo * 255), 0, 255).astype(np.uint8))
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
        text = f"{detection['label']} {detection['score']:.2f}"
        text_left, text_top, text_right, text_bottom = draw.textbbox((0, 0), text, font=font)
        tag_height = text_bottom - text_top + 2 * line
        tag_top = top - tag_height if top - tag_height >= 0 else top
        draw.rectangle((left, tag_top, left + text_right - text_left + 2 * line, tag_top + tag_height), fill=colour)
        luminance = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
        draw.text((left + line - text_left, tag_top + line - text_top), text, font=font,
                  fill=(0, 0, 0) if luminance > 140 else (255, 255, 255))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


# -- output ----------------------------------------------------------------------------------------------------
def print_results(results: list[dict]) -> None:
    for result in results:
        print(result["image"])
        if "predictions" in result:
            for prediction in result["predictions"]:
                print(f"  {prediction['score']:.4f}  {prediction['label']}")
        elif "detections" in result:
            for found in result["detections"]:
                box = found["box"]
                print(f"  {found['score']:.4f}  {found['label']}  ({box['xmin']:.1f}, {box['ymin']:.1f}, "
                      f"{box['xmax']:.1f}, {box['ymax']:.1f})")
            print(f"  figure: {result['figure']}")
        else:
            for area in result["areas"]:
                print(f"  {area['percent']:6.2f}%  {area['label']}")
            print(f"  mask: {result['mask']}\n  figure: {result['figure']}")
