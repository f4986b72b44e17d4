"""Per-image cost of the detection training augmentation: albumentations (what `mobilevit train` uses) against
the same recipe written by hand in torch (here only, to decide; never used for training).

Both run ml-cvnets' SSD recipe on the same real photos with the same crop windows (`ssd_crop_window`, one
seed per image): SSD crop, photometric changes (brightness, contrast, saturation, hue with probability 0.5
each, channel permutation), horizontal flip, then the resize to the training size. Each variant's
per-image time is the median over `--repeats` passes over the photos, the variants interleaved pass by pass
in one process (one thread), so machine load hits both alike; the ratio is what to read.

    python benchmarks/bench_detection_augmentation.py --repeats 20

    | photo size -> training size | albumentations ms | torch by hand ms | torch / albumentations |
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from mobilevit import auto
from mobilevit.benchmark import machine_load
from mobilevit.training.detection_transforms import (PHOTOMETRIC, DetectionAugmentation, normalised_center_boxes,
                                                     ssd_crop_window)


def photos_with_boxes(size: int | None):
    """Real photos (scikit-image, scikit-learn) with two boxes each; `size` squares them first (None: as shipped)."""
    import skimage.data
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = [skimage.data.astronaut(), skimage.data.chelsea(), skimage.data.coffee()] + list(
        load_sample_images().images)
    if size is not None:
        photos = [np.asarray(Image.fromarray(p).resize((size, size), Image.BILINEAR)) for p in photos]
    out = []
    for photo in photos:
        h, w = photo.shape[:2]
        boxes = np.array([[0.1 * w, 0.2 * h, 0.45 * w, 0.7 * h], [0.5 * w, 0.1 * h, 0.9 * w, 0.5 * h]], np.float32)
        out.append((np.ascontiguousarray(photo[..., :3]), boxes, np.array([1, 2])))
    return out


# -- the hand-written torch version -------------------------------------------------------------------------
def _grey(x):
    return (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2])[None]


def _hue_shift(x, shift):
    """Rotate the hue of (3, H, W) RGB in [0, 1] by `shift` of the circle (via HSV)."""
    r, g, b = x
    maxc, minc = x.max(0).values, x.min(0).values
    v, delta = maxc, maxc - minc
    s = torch.where(maxc > 0, delta / maxc.clamp(min=1e-12), torch.zeros_like(maxc))
    safe = delta.clamp(min=1e-12)
    h = torch.where(maxc == r, (g - b) / safe, torch.where(maxc == g, 2 + (b - r) / safe, 4 + (r - g) / safe))
    h = torch.where(delta > 0, (h / 6) % 1, torch.zeros_like(h))
    h = (h + shift) % 1
    i = torch.floor(h * 6)
    f = h * 6 - i
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    i = i.long() % 6
    choices = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    out = torch.zeros_like(x)
    for k, (rr, gg, bb) in enumerate(choices):
        m = i == k
        out[0][m], out[1][m], out[2][m] = rr[m], gg[m], bb[m]
    return out


def torch_augment(pixels, boxes, labels, size, seed, min_side):
    rng = random.Random(seed)
    h, w = pixels.shape[:2]
    window = ssd_crop_window(boxes, h, w, np.random.default_rng(seed), min_side)
    x = torch.from_numpy(pixels).permute(2, 0, 1).float().div_(255)
    if window is not None:
        (x1, y1, x2, y2), keep = window
        x = x[:, y1:y2, x1:x2]
        boxes = boxes[keep].copy()
        labels = labels[keep]
        boxes[:, 0::2] = boxes[:, 0::2].clip(x1, x2) - x1
        boxes[:, 1::2] = boxes[:, 1::2].clip(y1, y2) - y1
    draws = [rng.random() for _ in range(7)]
    if draws[0] < 0.5:
        x = (x * rng.uniform(*PHOTOMETRIC["brightness"])).clamp_(0, 1)
    contrast_first = draws[1] < 0.5
    if contrast_first and draws[2] < 0.5:
        x = (_grey(x).mean() + rng.uniform(*PHOTOMETRIC["contrast"]) * (x - _grey(x).mean())).clamp_(0, 1)
    if draws[3] < 0.5:
        grey = _grey(x)
        x = (grey + rng.uniform(*PHOTOMETRIC["saturation"]) * (x - grey)).clamp_(0, 1)
    if draws[4] < 0.5:
        x = _hue_shift(x, rng.uniform(*PHOTOMETRIC["hue"]))
    if not contrast_first and draws[5] < 0.5:
        x = (_grey(x).mean() + rng.uniform(*PHOTOMETRIC["contrast"]) * (x - _grey(x).mean())).clamp_(0, 1)
    if draws[6] < 0.5:
        x = x[torch.randperm(3, generator=torch.Generator().manual_seed(seed))]
    if rng.random() < 0.5:
        x = x.flip(-1)
        boxes = boxes.copy()
        boxes[:, [0, 2]] = x.shape[-1] - boxes[:, [2, 0]]
    out_boxes = normalised_center_boxes(boxes, x.shape[1], x.shape[2])
    x = F.interpolate(x[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0].clamp_(0, 1)
    return x, out_boxes, torch.from_numpy(labels)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=20, help="passes over the photos (median per image)")
    parser.add_argument("--variant", default="xx-small", help="whose processor makes the final resize")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats: expected a positive integer, got {args.repeats}")
    torch.set_num_threads(1)
    import cv2

    cv2.setNumThreads(1)
    processor = auto.image_processor_for(auto.new_config(args.variant, "object-detection"), "object-detection")
    print(f"load before: {machine_load()}; 1 thread; {args.variant} processor for the resize", flush=True)
    print("| photo size -> training size | albumentations ms | torch by hand ms | torch / albumentations |")
    print("|---|---:|---:|---:|")
    for photo_size, train_size in ((None, 320), (128, 128)):
        photos = photos_with_boxes(photo_size)
        augmentation = DetectionAugmentation(train_size, processor)
        min_side = 100 * train_size / 320
        times = {"albumentations": [], "torch": []}
        for repeat in range(args.repeats + 1):  # the first pass is a warm-up
            for name in times:
                start = time.perf_counter()
                for index, (pixels, boxes, labels) in enumerate(photos):
                    seed = repeat * 1000 + index
                    if name == "albumentations":
                        augmentation(pixels, boxes, labels, seed=seed)
                    else:
                        torch_augment(pixels, boxes, labels, (train_size, train_size), seed, min_side)
                if repeat:
                    times[name].append((time.perf_counter() - start) / len(photos) * 1000)
        ours, by_hand = statistics.median(times["albumentations"]), statistics.median(times["torch"])
        shown = "as shipped (300x451 ... 512x512)" if photo_size is None else f"{photo_size}x{photo_size}"
        print(f"| {shown} -> {train_size} | {ours:.2f} | {by_hand:.2f} | {by_hand / ours:.2f}x |", flush=True)
    print(f"load after: {machine_load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
