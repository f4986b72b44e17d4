"""How far BGR pixels move a MobileViTv2 that was trained on RGB: what `mobilevit convert --fix-preprocessing`
changes for a folder converted by stock transformers (whose processor flips to BGR).

    python benchmarks/channel_order_effect.py --output channel_order_effect.png

Two models, each fed the same photos once in RGB (as ml-cvnets v0.2 trained MobileViTv2) and once in BGR (as
a stock-converted folder's processor prepares them), everything else equal (the family's processor: Pillow
bicubic, the same sizes):

- "trained here": a MobileViTv2-0.5 classifier trained on RGB for --steps steps, on 64x64 crops of six real
  photos shipped with scikit-learn and scikit-image (the class is the photo a crop comes from); training crops
  come from the left 70% of each photo, the held-out crops from the right 30%. Accuracy on the held-out crops
  in RGB and in BGR says what the channel order costs a model that learned colour.
- "fixture weights": ml-cvnets v0.2's MobileViTv2-0.5 ImageNet classifier with the reference fixtures'
  deterministic weights (../shared/fixtures/mlcvnets_v2, not trained: realistic scale, no learned colour), on
  the six photos and their mirror images, 1000 classes.

For each: the largest and the mean |logit(RGB) - logit(BGR)| ("logit change"), the largest |logit| for scale, and
how often the top-1 class stays the same. A bar chart of the held-out accuracies and the top-1 agreement is
saved as --output.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from mobilevit import auto
from mobilevit.testing_utils import shared_fixtures_dir

CROP = 64


def photos() -> list[np.ndarray]:
    """Six RGB photos (scikit-learn's china and flower; scikit-image's chelsea, astronaut, coffee, rocket)."""
    from skimage import data
    from sklearn.datasets import load_sample_image

    found = [load_sample_image("china.jpg"), load_sample_image("flower.jpg")]
    found += [getattr(data, name)() for name in ("chelsea", "astronaut", "coffee", "rocket")]
    return [np.ascontiguousarray(p) for p in found]


def crops(photo: np.ndarray, columns: tuple[float, float], count: int, generator: torch.Generator) -> torch.Tensor:
    """`count` CROP x CROP crops (uint8, N x H x W x 3) of the photo halved, from the given range of its width."""
    image = torch.from_numpy(photo[::2, ::2].copy())
    height, width = image.shape[:2]
    left, right = int(columns[0] * width), int(columns[1] * width) - CROP
    ys = torch.randint(0, height - CROP + 1, (count,), generator=generator)
    xs = torch.randint(left, right + 1, (count,), generator=generator)
    return torch.stack([image[y : y + CROP, x : x + CROP] for y, x in zip(ys.tolist(), xs.tolist())])


def to_pixels(batch: torch.Tensor, bgr: bool) -> torch.Tensor:
    """uint8 N x H x W x 3 RGB -> float N x 3 x H x W in [0, 1], in RGB or BGR order."""
    pixels = batch.permute(0, 3, 1, 2).float().div(255)
    return pixels.flip(1) if bgr else pixels


def compare(model, rgb: torch.Tensor) -> dict:
    """Logits of the model on RGB pixels and on the same pixels in BGR order."""
    with torch.inference_mode():
        on_rgb, on_bgr = model(pixel_values=rgb).logits, model(pixel_values=rgb.flip(1)).logits
    difference = (on_rgb - on_bgr).abs()
    return {"max logit change": float(difference.max()), "mean logit change": float(difference.mean()),
            "largest logit (scale)": float(on_rgb.abs().max()),
            "top-1 agreement": float((on_rgb.argmax(-1) == on_bgr.argmax(-1)).float().mean()),
            "rgb": on_rgb, "bgr": on_bgr}


def trained_here(steps: int, seed: int) -> dict:
    """Train a MobileViTv2-0.5 on RGB crops; its logits and held-out accuracy in RGB and BGR."""
    from tqdm.auto import tqdm

    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    sources = photos()
    config = auto.new_config("mobilevitv2-0.5", "image-classification", num_labels=len(sources), image_size=CROP)
    model = auto.new_model(config, "image-classification").train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=2e-3, total_steps=steps)
    per_class = 6
    for _ in tqdm(range(steps), desc="training on RGB", unit="step"):
        batch = torch.cat([crops(p, (0.0, 0.7), per_class, generator) for p in sources])
        labels = torch.arange(len(sources)).repeat_interleave(per_class)
        flip = torch.rand(len(batch), generator=generator) < 0.5
        batch[flip] = batch[flip].flip(2)
        loss = model(pixel_values=to_pixels(batch, bgr=False), labels=labels).loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
    model.eval()
    held_out = torch.cat([crops(p, (0.7, 1.0), 32, torch.Generator().manual_seed(seed + 1)) for p in sources])
    labels = torch.arange(len(sources)).repeat_interleave(32)
    result = compare(model, to_pixels(held_out, bgr=False))
    result["accuracy, RGB (as trained)"] = float((result["rgb"].argmax(-1) == labels).float().mean())
    result["accuracy, BGR (a stock-converted folder)"] = float((result["bgr"].argmax(-1) == labels).float().mean())
    result["inputs"] = f"{len(held_out)} held-out 64x64 crops, 6 classes"
    return result


def fixture_weights() -> dict | None:
    """ml-cvnets v0.2's MobileViTv2-0.5 classifier with the fixture weights, through `mobilevit convert`."""
    from mobilevit.conversion import convert_checkpoint

    folder = shared_fixtures_dir("mlcvnets_v2")
    if folder is None:
        return None
    spec = importlib.util.spec_from_file_location("mlcvnets_v2_weights", folder / "weights.py")
    weights = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(weights)
    with tempfile.TemporaryDirectory(prefix="channel-order-") as work:
        checkpoint = Path(work) / "mobilevitv2_050.pt"
        torch.save(weights.state_dict(str(folder / "mobilevitv2_050.json")), checkpoint)
        convert_checkpoint(checkpoint, Path(work) / "model", progress=False)
        model, processor, _ = auto.load_model_and_processor(Path(work) / "model")
    images = photos()
    images += [np.ascontiguousarray(p[:, ::-1]) for p in images]
    result = compare(model.eval(), processor(images, return_tensors="pt")["pixel_values"])
    result["inputs"] = f"{len(images)} photos through the v2 processor (RGB, shortest edge 288, crop 256), 1000 classes"
    return result


def save_chart(rows: dict[str, dict], output: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = {}
    trained = rows.get("trained here")
    if trained:
        bars["trained here: held-out accuracy, RGB"] = trained["accuracy, RGB (as trained)"]
        bars["trained here: held-out accuracy, BGR"] = trained["accuracy, BGR (a stock-converted folder)"]
    for name, row in rows.items():
        bars[f"{name}: top-1 unchanged by BGR"] = row["top-1 agreement"]
    fig, ax = plt.subplots(figsize=(7, 0.55 * len(bars) + 1.2))
    ax.barh(list(bars), list(bars.values()), color=["tab:blue" if "RGB" in n else "tab:orange" for n in bars])
    for y, value in enumerate(bars.values()):
        ax.text(value, y, f" {value:.1%}", va="center")
    ax.set_xlim(0, 1.15)
    ax.invert_yaxis()
    ax.set_title("MobileViTv2 trained on RGB, fed RGB or BGR", fontsize=9)
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=output.parent, suffix=".png", delete=False) as tmp:  # moved into place whole
        fig.savefig(tmp.name, dpi=120)
    plt.close(fig)
    os.replace(tmp.name, output)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="training steps of the model trained here (default 300)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a shared machine more threads wait for each other; it "
                             "trained 5 steps/s with 1 thread, under 1 with 2, while other jobs ran); 0 keeps torch's")
    parser.add_argument("--output", type=Path, default=Path("channel_order_effect.png"), help="bar chart PNG")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    args = parser.parse_args(argv)
    if not 1 <= args.steps <= 100_000:
        parser.error(f"--steps: expected 1 to 100000, got {args.steps}")
    if args.output.exists() and not args.overwrite:
        parser.error(f"--output {args.output} exists; pass --overwrite to replace it")
    if not 0 <= args.threads <= 256:
        parser.error(f"--threads: expected 0 to 256, got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = {"trained here": trained_here(args.steps, args.seed)}
    fixture = fixture_weights()
    if fixture is not None:
        rows["fixture weights"] = fixture
    else:
        print("fixture weights: skipped, ../shared/fixtures/mlcvnets_v2 not found")
    keys = [k for k in rows["trained here"] if k not in ("rgb", "bgr")]
    print("| model | " + " | ".join(keys) + " |")
    print("|---|" + "---|" * len(keys))
    for name, row in rows.items():
        cells = [f"{row[k]:.4g}" if isinstance(row.get(k), float) else str(row.get(k, "")) for k in keys]
        print(f"| {name} | " + " | ".join(cells) + " |")
    save_chart(rows, args.output.resolve())
    print(f"chart: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
