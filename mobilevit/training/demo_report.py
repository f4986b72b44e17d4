"""What `mobilevit demo` leaves a newcomer to look at and to do next.

* Pictures of the held-out predictions, true against predicted, with every mistake marked in one colour
  (`MISTAKE_RGB`): wrong digits get a red frame and their true label, wrong pixels are painted red on a grey
  copy of the scene. Mistakes are picked for the picture on purpose (up to half of it), since at 97 % accuracy
  a grid of the first 24 digits usually shows none. Classes are coloured by `mobilevit predict`'s palette
  (`predict.color_palette`, the package's one palette), so a mask from the demo and one from `predict` read alike.
* A few held-out images written as files (`images/`: digits in one sub-folder per class, the layout
  `mobilevit train` takes, and shape scenes), so that every next step runs on something real.
* `next_steps`: short, copy-pasteable commands on the folders the demo wrote: predict, a pipeline in Python,
  fine-tune on a folder of images, export and run the artefact.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..predict import color_palette

MISTAKE_RGB = (1.0, 0.0, 0.0)  # pure red (matplotlib's RGB in [0, 1]): the palette's first colours are dark ones
EXAMPLES_DIR = "images"  # inside the demo's output folder
DIGITS_PER_CLASS = 10  # 100 digits: enough for `mobilevit train` to split off a stratified validation set
SCENES = 4


def pick_examples(errors: Sequence[float], count: int) -> list[int]:
    """Indices of the examples to show, in their own order: the worst ones (largest error above 0, at most half
    of `count`), then the first right ones (error 0), then the first of the rest, until `count`."""
    worst = sorted((i for i, error in enumerate(errors) if error > 0), key=lambda i: -errors[i])[: count // 2]
    right = [i for i, error in enumerate(errors) if error <= 0]
    rest = [i for i in range(len(errors)) if i not in set(worst) | set(right)]
    return sorted(worst + (right + rest)[: max(0, count - len(worst))])


def mistake_map(photo: np.ndarray, predicted: np.ndarray, truth: np.ndarray, ignore_index: int = 255) -> np.ndarray:
    """The photo (H x W x 3 in [0, 1]) in dimmed grey, each wrongly predicted pixel in `MISTAKE_RGB` (pixels
    labelled `ignore_index` are never mistakes); H x W x 3 in [0, 1]."""
    grey = 0.25 + 0.5 * (photo @ np.array([0.299, 0.587, 0.114], dtype=photo.dtype))
    shown = np.repeat(grey[..., None], 3, axis=2)
    wrong = (predicted != truth) & (truth != ignore_index)
    shown[wrong] = MISTAKE_RGB
    return shown


def classification_picture(examples: Sequence[tuple], title: str, count: int = 24, columns: int = 8):
    """A matplotlib Figure of `count` examples (image, predicted label, true label): each titled "true / pred";
    mistakes in red with a red frame. The suptitle counts the mistakes of all `examples`."""
    # a pyplot-free Figure: no global backend switch, so a notebook's inline plots keep working
    from matplotlib.figure import Figure

    wrong = [float(predicted != truth) for _, predicted, truth in examples]
    shown = pick_examples(wrong, count)
    rows = max(1, -(-len(shown) // columns))
    figure = Figure(figsize=(columns * 1.2, rows * 1.45 + 0.7))
    axes = np.atleast_1d(figure.subplots(rows, columns)).reshape(-1)
    for axis in axes:
        axis.set_axis_off()
    for axis, index in zip(axes, shown):
        image, predicted, truth = examples[index]
        mistake = predicted != truth
        axis.imshow(np.asarray(image.convert("L")), cmap="gray")
        axis.set_title(f"true {truth}\npred {predicted}", color=MISTAKE_RGB if mistake else "black", fontsize=8,
                       fontweight="bold" if mistake else "normal")
        if mistake:  # a frame: axis on, ticks off, thick red spines
            axis.set_axis_on()
            axis.set_xticks([])
            axis.set_yticks([])
            for spine in axis.spines.values():
                spine.set_edgecolor(MISTAKE_RGB)
                spine.set_linewidth(3)
    count_wrong = int(sum(wrong))
    figure.suptitle(f"{title}: {count_wrong} of {len(examples)} wrong"
                    + (f" (red, framed; {int(sum(wrong[i] for i in shown))} shown)" if count_wrong else ""),
                    fontsize=10)
    figure.tight_layout()
    return figure


def segmentation_picture(examples: Sequence[tuple], labels: Sequence[str], title: str, count: int = 8):
    """A matplotlib Figure, one column per example (image, predicted class map, true class map): the image, the
    true and the predicted class maps in `predict`'s colours, and the mistakes (wrong pixels red, with their
    share)."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    palette = color_palette(len(labels))
    photos = [np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0 for image, _, _ in examples]
    wrong = [float(np.mean((predicted != truth) & (truth != 255))) for _, predicted, truth in examples]
    shown = pick_examples(wrong, count)
    figure = Figure(figsize=(1.9 * len(shown) + 0.6, 8.2))
    axes = figure.subplots(4, len(shown), squeeze=False)
    for column, index in enumerate(shown):
        _, predicted, truth = examples[index]
        photo = photos[index]
        classes = [palette[np.where(m == 255, 0, m)] / 255.0 for m in (truth, predicted)]  # 255: ignored, as background
        row_pictures = (photo, *classes, mistake_map(photo, predicted, truth))
        for row, picture in enumerate(row_pictures):
            axes[row, column].imshow(np.clip(picture, 0, 1))
            axes[row, column].set_axis_off()
        axes[3, column].set_title(f"{wrong[index]:.1%} wrong", fontsize=9,
                                  color=MISTAKE_RGB if wrong[index] else "black")
    for row, name in enumerate(("image", "true", "predicted", "mistakes")):
        axes[row, 0].text(-0.08, 0.5, name, transform=axes[row, 0].transAxes, rotation=90, ha="right", va="center",
                          fontsize=10)
    handles = [Patch(color=palette[i] / 255.0, label=name) for i, name in enumerate(labels)]
    handles.append(Patch(color=MISTAKE_RGB, label="mistake (predicted != true)"))
    figure.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False)
    figure.suptitle(f"{title}: {np.mean(wrong):.1%} of the pixels wrong over {len(examples)} images", fontsize=10)
    figure.tight_layout(rect=(0.02, 0.05, 1, 1))
    return figure


def write_example_images(folder: Path, digits, scenes) -> None:
    """Held-out images as files, for the next steps: `DIGITS_PER_CLASS` digits of each class in
    `folder/digits/<label>/<index>.png` (an image-folder tree) and the first `SCENES` shape scenes in
    `folder/shapes/scene-<i>.png`. `digits`: a split with "image" and a ClassLabel "label"; `scenes`: one with
    "image"."""
    names = digits.features["label"].names
    taken = {name: 0 for name in names}
    for index, (image, label) in enumerate(zip(digits["image"], digits["label"])):
        name = names[label]
        if taken[name] < DIGITS_PER_CLASS:
            (folder / "digits" / name).mkdir(parents=True, exist_ok=True)
            image.save(folder / "digits" / name / f"{index:03d}.png")
            taken[name] += 1
    (folder / "shapes").mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(scenes["image"][:SCENES]):
        image.save(folder / "shapes" / f"scene-{i}.png")


def _onnx_ready() -> bool:
    from importlib.util import find_spec

    return all(find_spec(module) is not None for module in ("onnx", "onnxscript", "onnxruntime"))


def next_steps(output_dir: str | Path) -> str:
    """The next steps as text, on the files the demo wrote under `output_dir` (given as the user gave it, so that
    the commands run from the same folder). Every path it names exists (raises FileNotFoundError otherwise)."""
    out = Path(output_dir)
    digit = min((out / EXAMPLES_DIR / "digits").glob("*/*.png"))
    scene = min((out / EXAMPLES_DIR / "shapes").glob("*.png"))
    classifier, segmenter = out / "classification", out / "segmentation"
    named = [digit, scene, classifier / "config.json", segmenter / "config.json"]
    missing = [str(p) for p in named if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"the demo's outputs lack {', '.join(missing)}")
    q = lambda path: shlex.quote(str(path))  # noqa: E731
    js = lambda path: json.dumps(str(path))  # noqa: E731
    pipeline = f'import mobilevit; print(mobilevit.pipeline(model={js(classifier)})({js(digit)}, top_k=3))'
    run_onnx = "\n".join([
        "python - <<'EOF'",
        "import json, onnxruntime",
        "from PIL import Image",
        "from mobilevit import auto",
        f"processor = auto.load_image_processor({js(classifier)})  # the preprocessing the sidecar describes",
        f'pixels = processor(Image.open({js(digit)}), return_tensors="np")["pixel_values"]',
        'logits = onnxruntime.InferenceSession("digits.onnx").run(None, {"pixel_values": pixels})[0]',
        'print(json.load(open("digits.onnx.json"))["id2label"][str(logits.argmax())])',
        "EOF",
    ])
    return "\n".join([
        "# Next steps: paste any of these lines into a shell, from this folder (or all of them, as a script).",
        f"# Look at {q(out / 'classification_predictions.png')} and {q(out / 'segmentation_predictions.png')} "
        f"(mistakes in red) and {q(out / 'training_history.png')}.",
        f"# 1. Predict on an image (a few held-out ones are in {q(out / EXAMPLES_DIR)}/):",
        f"mobilevit predict {q(digit)} --model {q(classifier)} --top-k 3",
        f"mobilevit predict {q(scene)} --model {q(segmenter)} --output-dir shapes-masks",
        "# 2. A pipeline in Python (transformers' pipeline with this package's model and processor):",
        f"python -c {shlex.quote(pipeline)}",
        "# 3. Fine-tune on a folder of your own, one sub-folder of images per class like "
        f"{q(out / EXAMPLES_DIR / 'digits')}/:",
        f"mobilevit train --task classification --data {q(out / EXAMPLES_DIR / 'digits')} --model {q(classifier)} "
        "--epochs 3 --output-dir my-digits",
        "# 4. Export to ONNX (checked against PyTorch before it is kept), then run the artefact in ONNX Runtime:",
        *(["pip install -e \".[export]\"  # onnx, onnxscript, onnxruntime"] if not _onnx_ready() else []),
        f"mobilevit export --format onnx --model {q(classifier)} --output digits.onnx",
        run_onnx,
        "# Every command explains itself: mobilevit COMMAND --help",
    ])
