"""Images per second of MobileViTImageProcessor against stock transformers' MobileViT processors.

64 real photos (scikit-learn's two sample images resized to 500x375, then flipped and cropped into 64
distinct images of 8 sizes), passed as PIL images, `return_tensors="pt"`, every processor with the Hub
checkpoints' settings (shortest edge 288, crop 256, bilinear, BGR), and for MobileViTv2 with ml-cvnets v0.2's
(bicubic, antialiased, RGB; stock's PIL processor does that with `resample=3, do_flip_channel_order=False`).
The candidates run interleaved (A, B, C, A, B, C, ...) in one process; the medians are reported with the
ratio to stock's PIL processor with the same settings.

    python benchmarks/bench_image_processor.py --output bench_image_processor.png

torch runs with one intra-op thread unless --threads says otherwise. On a busy 2-core machine, torch's
OpenMP threads wait for each other on every operation: with 2 threads the processor measured 10-40x slower
than with 1 while other jobs were running, so compare thread counts only on an idle machine.

Memory allocation is a stated condition, as in `mobilevit benchmark` (`--allocator`): `tuned` (the default)
has glibc keep freed memory for reuse, which is stock's best case (it allocates a fresh array per image and
per step: 370 images/s with glibc as a fresh process has it, 510 tuned, on the same machine); `default`
leaves glibc as it is, where stock's rate also depends on what ran before it in the process.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

import torch
from PIL import Image

from mobilevit.benchmark import IN_PROCESS_ALLOCATORS, tune_allocator

HUB_SETTINGS = dict(size={"shortest_edge": 288}, crop_size={"height": 256, "width": 256}, resample=2,
                    do_flip_channel_order=True)
V2_SETTINGS = dict(HUB_SETTINGS, resample=3, do_flip_channel_order=False)  # ml-cvnets v0.2: Pillow bicubic, RGB
STOCK = "stock PIL (MobileViTImageProcessorPil)"
STOCK_V2 = "v2: stock PIL, bicubic RGB"


def sample_photos(count: int = 64) -> list[Image.Image]:
    """`count` distinct 8-bit RGB photos derived from scikit-learn's sample images (500x375 and crops)."""
    from sklearn.datasets import load_sample_images

    bases = [Image.fromarray(img).resize((500, 375), Image.BILINEAR) for img in load_sample_images().images]
    flips = [lambda im: im, lambda im: im.transpose(Image.FLIP_LEFT_RIGHT),
             lambda im: im.transpose(Image.FLIP_TOP_BOTTOM), lambda im: im.transpose(Image.ROTATE_180)]
    crops = [(0, 0, 500, 375)] + [(4 * k, 3 * k, 500 - 6 * k, 375 - 5 * k) for k in range(1, 8)]
    photos = [flip(base).crop(box) for base in bases for flip in flips for box in crops]
    return photos[:count]


def candidates() -> tuple[dict, dict, str]:
    """({name: callable(images)} of the processors that run here, {name: why not} of those that cannot,
    the transformers version)."""
    import transformers
    from transformers.models.mobilevit.image_processing_pil_mobilevit import MobileViTImageProcessorPil

    from mobilevit import MobileViTImageProcessor

    ours = MobileViTImageProcessor()
    ours_exact = MobileViTImageProcessor(resize_bit_exact=True)
    ours_aa = MobileViTImageProcessor(resize_antialias=True)
    stock_pil = MobileViTImageProcessorPil(**HUB_SETTINGS)
    ours_v2 = MobileViTImageProcessor(**V2_SETTINGS, resize_antialias=True)
    ours_v2_exact = MobileViTImageProcessor(**V2_SETTINGS, resize_antialias=True, resize_bit_exact=True)
    stock_v2 = MobileViTImageProcessorPil(**V2_SETTINGS)
    found = {
        "ours (default)": lambda images: ours(images, return_tensors="pt"),
        "ours (resize_bit_exact)": lambda images: ours_exact(images, return_tensors="pt"),
        "ours (resize_antialias)": lambda images: ours_aa(images, return_tensors="pt"),
        STOCK: lambda images: stock_pil(images, return_tensors="pt"),
        "v2: ours (default)": lambda images: ours_v2(images, return_tensors="pt"),
        "v2: ours (resize_bit_exact, Pillow's arithmetic)": lambda images: ours_v2_exact(images, return_tensors="pt"),
        STOCK_V2: lambda images: stock_v2(images, return_tensors="pt"),
    }
    skipped = {}
    try:
        from transformers.models.mobilevit.image_processing_mobilevit import MobileViTImageProcessor as StockTorch

        stock_torch = StockTorch(**HUB_SETTINGS)
        found["stock torch backend (torchvision)"] = lambda images: stock_torch(images, return_tensors="pt")
    except ImportError as err:  # the torch backend of transformers 5.x needs torchvision
        skipped["stock torch backend (torchvision)"] = f"not available: {err}"
    return found, skipped, transformers.__version__


def measure(runs: dict, images, repeats: int) -> dict[str, float]:
    """Median images/s of each candidate, interleaved round by round (mobilevit.benchmark's timing loop)."""
    from mobilevit.benchmark import time_interleaved

    times = time_interleaved(runs, lambda name: images, repeats, warmup=1, progress=False)
    return {name: len(images) / statistics.median(t) for name, t in times.items()}


def save_chart(rates: dict[str, float], output: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 0.6 * len(rates) + 1.2))
    names = list(rates)
    ax.barh(names, [rates[n] for n in names], color=["tab:blue" if n.startswith("ours") else "tab:gray" for n in names])
    for y, name in enumerate(names):
        ax.text(rates[name], y, f" {rates[name]:.0f}", va="center")
    ax.invert_yaxis()
    ax.set_xlabel("images / s (median, higher is better)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    # Written next to the target, then moved into place whole.
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=output.parent, suffix=".png", delete=False) as tmp:
        fig.savefig(tmp.name, dpi=120)
    plt.close(fig)
    os.replace(tmp.name, output)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64, help="number of photos in the batch (default 64)")
    parser.add_argument("--repeats", type=int, default=15, help="interleaved rounds (default 15)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1: stock's PIL work is single-threaded, and DataLoader "
                             "workers run torch with one thread; 0 keeps torch's own choice)")
    parser.add_argument("--allocator", default="tuned", choices=IN_PROCESS_ALLOCATORS,
                        help="glibc malloc tuned to keep freed memory (default; stock at its best) or as it is")
    parser.add_argument("--output", type=Path, default=Path("bench_image_processor.png"), help="bar chart PNG")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    args = parser.parse_args(argv)
    if args.images < 1 or args.repeats < 1:
        parser.error(f"--images and --repeats must be >= 1, got {args.images} and {args.repeats}")
    if args.output.exists() and not args.overwrite:
        parser.error(f"--output {args.output} exists; pass --overwrite to replace it")

    if args.threads < 0:
        parser.error(f"--threads must be >= 0, got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.allocator == "tuned":
        tune_allocator()  # before the photos and processors allocate anything
    images = sample_photos(args.images)
    runs, skipped, version = candidates()
    print(f"{len(images)} photos ({len({im.size for im in images})} sizes), torch {torch.__version__} with "
          f"{torch.get_num_threads()} threads, transformers {version}, {args.allocator} allocator, "
          f"{args.repeats} interleaved rounds")
    rates = measure(runs, images, args.repeats)
    for name, rate in rates.items():
        reference = rates[STOCK_V2 if name.startswith("v2:") else STOCK]
        print(f"{name:48s} {rate:8.1f} images/s   {rate / reference:5.2f}x stock PIL (same settings)")
    for name, reason in skipped.items():
        print(f"{name:48s} skipped: {reason}")
    print(f"speed-up of ours over stock PIL: {rates['ours (default)'] / rates[STOCK]:.2f}x (v1 settings), "
          f"{rates['v2: ours (default)'] / rates[STOCK_V2]:.2f}x (v2 settings)")
    save_chart(rates, args.output.resolve(), f"MobileViT preprocessing, {len(images)} photos, "
               f"torch threads: {torch.get_num_threads()}, {args.allocator} allocator")
    print(f"chart: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
