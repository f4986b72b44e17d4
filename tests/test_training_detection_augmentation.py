"""The SSD training augmentation: boxes follow their objects through crop, flip and resize; objects whose centre
leaves the crop lose their box; ml-cvnets' crop rules; the same seed gives the same example; importing it never
reaches the network."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from mobilevit import auto
from mobilevit.training.detection_transforms import (SSD_CROP_ASPECT, DetectionAugmentation, normalised_center_boxes,
                                                     ssd_crop_window)

# objects: axis-aligned rectangles, each in a colour of its own, on black (pixel corners x1, y1, x2, y2)
OBJECTS = np.array([[10, 12, 60, 50], [80, 20, 150, 90], [30, 110, 90, 150], [120, 120, 170, 140]], np.float32)
COLOURS = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]], np.uint8)


def _scene():
    pixels = np.zeros((160, 192, 3), dtype=np.uint8)
    for (x1, y1, x2, y2), colour in zip(OBJECTS.astype(int), COLOURS):
        pixels[y1:y2, x1:x2] = colour
    return pixels


def _processor(variant="mobilevitv2-0.5"):  # RGB out: colours can be compared directly
    return auto.image_processor_for(auto.new_config(variant, "object-detection"), "object-detection")


def _coloured(pixels: torch.Tensor, colour) -> torch.Tensor:
    """(H, W) bool: pixels (3, H, W) in [0, 1] of this colour (resampling blurs edges: a generous tolerance)."""
    return ((pixels * 255 - torch.tensor(colour, dtype=torch.float32)[:, None, None]).abs() < 60).all(dim=0)


@pytest.mark.parametrize("size", [96, 128])
def test_boxes_stay_on_their_objects_and_objects_that_leave_the_crop_lose_their_box(size):
    augment = DetectionAugmentation(size, _processor(), photometric_prob=0.0)  # colours stay recognisable
    labels = np.arange(len(OBJECTS))  # one label per object: its index
    scene = _scene()
    cropped = flipped = dropped = 0
    for seed in range(40):
        pixels, boxes, out_labels = augment(scene, OBJECTS, labels, seed=seed)
        assert pixels.shape == (3, size, size) and boxes.shape == (len(out_labels), 4)
        corners = torch.cat((boxes[:, :2] - boxes[:, 2:] / 2, boxes[:, :2] + boxes[:, 2:] / 2), dim=1) * size
        for index, colour in enumerate(COLOURS):
            mine = _coloured(pixels, colour)
            found = (out_labels == index).nonzero().flatten().tolist()
            if found:
                x1, y1, x2, y2 = corners[found[0]].round().long().tolist()
                inside = torch.zeros_like(mine)
                inside[max(y1, 0):y2, max(x1, 0):x2] = True
                # the box holds its object: filled by it, and (nearly) all of the object's pixels in it
                assert mine[inside].float().mean() > 0.85, (seed, index)
                assert (mine & ~inside).sum() <= 0.06 * mine.sum() + 2 * size, (seed, index)
            else:
                dropped += 1
                # no box: the object's centre left the crop, so what is still seen of it was cut by the crop's edge
                if mine.any():
                    rows, cols = mine.nonzero(as_tuple=True)
                    assert min(rows.min(), cols.min()) <= 2 or max(rows.max(), cols.max()) >= size - 3, (seed, index)
        flipped += int(corners.numel() > 0 and (out_labels == 0).any() and
                       boxes[(out_labels == 0).nonzero()[0, 0], 0] > 0.5)
        cropped += int(len(out_labels) < len(OBJECTS))
    assert cropped and flipped and dropped  # the seeds exercised crops that drop boxes and flips


def test_the_same_seed_gives_the_same_example_and_others_differ():
    augment = DetectionAugmentation(64, _processor("xx-small"))
    scene, labels = _scene(), np.array([1, 2, 3, 1])
    first, again = augment(scene, OBJECTS, labels, seed=11), augment(scene, OBJECTS, labels, seed=11)
    for a, b in zip(first, again):
        assert torch.equal(a, b)
    others = [augment(scene, OBJECTS, labels, seed=s)[0] for s in range(12, 16)]
    assert all(not torch.equal(first[0], other) for other in others)
    # a fresh augmentation object (another worker, a resumed run) repeats it too
    fresh = DetectionAugmentation(64, _processor("xx-small"))(scene, OBJECTS, labels, seed=11)
    assert torch.equal(fresh[0], first[0]) and torch.equal(fresh[1], first[1])


def test_the_steps_draw_independently():
    """albumentations' own `set_random_seed` would give every step the same draws (flip iff brightness changed);
    one shared stream does not."""
    augment = DetectionAugmentation(64, _processor(), crop=False)
    scene, labels = _scene(), np.arange(4)
    flips = []
    for seed in range(60):
        _, boxes, _ = augment(scene, OBJECTS, labels, seed=seed)
        flips.append(bool(boxes[0, 0] > 0.5))
    assert 15 < sum(flips) < 45


def test_ssd_crop_window_follows_ml_cvnets_rules():
    rng = np.random.default_rng(0)
    boxes = OBJECTS.astype(np.float64)
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    whole = 0
    for _ in range(200):
        window = ssd_crop_window(boxes, 160, 192, rng, min_side=40)
        if window is None:
            whole += 1
            continue
        (x1, y1, x2, y2), inside = window
        width, height = x2 - x1, y2 - y1
        assert 0 <= x1 < x2 <= 192 and 0 <= y1 < y2 <= 160
        assert width >= max(40, int(0.3 * 192) - 1) and height >= max(40, int(0.3 * 160) - 1)
        assert SSD_CROP_ASPECT[0] <= height / width <= SSD_CROP_ASPECT[1]
        expected = (centres[:, 0] > x1) & (centres[:, 0] < x2) & (centres[:, 1] > y1) & (centres[:, 1] < y2)
        assert inside.tolist() == expected.tolist() and inside.any()
    assert 20 < whole < 120  # "no crop" is one of seven choices, and the 1.0 IoU mode rarely finds a crop
    assert ssd_crop_window(np.zeros((0, 4)), 100, 100, rng) is None  # nothing to keep: the whole image


def test_normalised_center_boxes():
    boxes = normalised_center_boxes(np.array([[0, 0, 50, 20], [10, 10, 30, 40]]), height=40, width=100)
    torch.testing.assert_close(boxes, torch.tensor([[0.25, 0.25, 0.5, 0.5], [0.2, 0.625, 0.2, 0.75]]))


def test_importing_the_augmentation_never_asks_pypi():
    """albumentations checks PyPI for a newer version on import unless NO_ALBUMENTATIONS_UPDATE is set."""
    code = (
        "import urllib.request\n"
        "calls = []\n"
        "original = urllib.request.OpenerDirector.open\n"
        "urllib.request.OpenerDirector.open = lambda self, *a, **k: calls.append(a) or original(self, *a, **k)\n"
        "import mobilevit.training.detection_transforms as t\n"
        "t._albumentations()\n"
        "assert calls == [], calls\n"
        "print('no request')\n")
    env = {k: v for k, v in __import__("os").environ.items() if k != "NO_ALBUMENTATIONS_UPDATE"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0 and "no request" in done.stdout, done.stderr[-2000:]
