"""The two data sets `mobilevit demo` trains on, built on the spot from data that ships with the installed
packages, so the demo needs no download:

* digits: scikit-learn's `load_digits` (1797 real 8x8 handwritten digits, 10 classes), upsampled to 64x64
  RGB, with a fixed stratified train / validation / test split;
* shapes: scenes drawn by the code, circles, squares and triangles (3 classes + background) with random
  sizes, colours and textures, whole and apart (so each shows its outline), over crops of the real photos
  shipped by scikit-image (`skimage.data`) and scikit-learn (`load_sample_images`); fixed seeds, so every
  run sees the same images.

Both come back as `datasets.DatasetDict`s with the columns a user's own data would have ("image" + "label"
for classification, "image" + "annotation" for segmentation), so the demo walks the same code path.
"""

from __future__ import annotations

import numpy as np

DIGITS_LABELS = [str(d) for d in range(10)]
SHAPES_LABELS = ["background", "circle", "square", "triangle"]

# Photos shipped inside the scikit-image wheel (no pooch download needed).
_SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "brick", "grass", "gravel",
                   "moon", "hubble_deep_field", "immunohistochemistry")


def _features(label_column: str, names: list[str], segmentation: bool):
    import datasets

    label_feature = datasets.Image() if segmentation else datasets.ClassLabel(names=names)
    return datasets.Features({"image": datasets.Image(), label_column: label_feature})


def load_digits_dataset(image_size: int = 64, val_fraction: float = 0.1, test_fraction: float = 0.2,
                        seed: int = 0):
    """scikit-learn's handwritten digits as a `DatasetDict` with "train", "validation" and "test" splits.

    The 8x8 images (16 grey levels) are scaled to [0, 255], upsampled bilinearly to `image_size` and
    repeated to RGB. The split is stratified by class and fixed by `seed`.
    """
    import datasets
    import torch
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    small = torch.from_numpy(digits.images.astype(np.float32) / 16.0)[:, None]  # (N, 1, 8, 8) in [0, 1]
    big = torch.nn.functional.interpolate(small, size=(image_size, image_size), mode="bilinear",
                                          align_corners=False)
    pixels = (big.clamp(0, 1)[:, 0].numpy() * 255).round().astype(np.uint8)
    labels = digits.target.astype(int)
    index = np.arange(len(labels))
    rest, test = train_test_split(index, test_size=test_fraction, stratify=labels, random_state=seed)
    train, val = train_test_split(rest, test_size=val_fraction / (1 - test_fraction), stratify=labels[rest],
                                  random_state=seed)
    features = _features("label", DIGITS_LABELS, segmentation=False)

    def split(ids):
        images = [Image.fromarray(np.repeat(pixels[i][..., None], 3, axis=2)) for i in ids]
        return datasets.Dataset.from_dict({"image": images, "label": labels[ids].tolist()}, features=features)

    return datasets.DatasetDict({"train": split(train), "validation": split(val), "test": split(test)})


def _photos() -> list[np.ndarray]:
    """The real photos the shapes are drawn over, as uint8 RGB arrays."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    photos = []
    for name in _SKIMAGE_PHOTOS:
        try:
            image = getattr(skimage.data, name)()
        except Exception:  # an older or trimmed scikit-image may lack one; the others suffice
            continue
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        photos.append(np.ascontiguousarray(image[..., :3]))
    photos.extend(load_sample_images().images)
    return photos


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A (size, size, 3) float fill in [0, 1]: flat colour, stripes, gradient or noise."""
    colour = rng.uniform(0, 1, 3)
    kind = rng.integers(4)
    if kind == 0:
        return np.broadcast_to(colour, (size, size, 3)).copy()
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    other = rng.uniform(0, 1, 3)
    if kind == 1:  # stripes at a random angle and period
        angle = rng.uniform(0, np.pi)
        phase = np.cos(angle) * xx + np.sin(angle) * yy
        weight = (np.sin(phase * 2 * np.pi * rng.uniform(3, 10)) > 0).astype(np.float32)
    elif kind == 2:  # linear gradient
        weight = (xx if rng.integers(2) else yy)
    else:  # blotchy noise
        weight = rng.uniform(0, 1, (size, size)).astype(np.float32)
    weight = weight[..., None]
    return colour * (1 - weight) + other * weight


def _shape_mask(rng: np.random.Generator, kind: int, size: int) -> np.ndarray:
    """A boolean (size, size) mask of one circle (1), square (2) or triangle (3) at a random place."""
    from skimage.draw import disk, polygon

    mask = np.zeros((size, size), dtype=bool)
    radius = rng.uniform(0.12, 0.3) * size
    cy, cx = rng.uniform(radius * 1.15, size - radius * 1.15, 2)  # whole inside the image
    if kind == 1:
        rr, cc = disk((cy, cx), radius, shape=mask.shape)
    else:
        corners = 4 if kind == 2 else 3
        start = rng.uniform(0, 2 * np.pi)
        angles = start + np.arange(corners) * 2 * np.pi / corners
        rr, cc = polygon(cy + radius * 1.15 * np.sin(angles), cx + radius * 1.15 * np.cos(angles), shape=mask.shape)
    mask[rr, cc] = True
    return mask


def _photo_background(rng: np.random.Generator, photos: list[np.ndarray], size: int) -> np.ndarray:
    """A random square crop of a random photo, (size, size, 3) float32 in [0, 1]."""
    photo = photos[rng.integers(len(photos))]
    h, w = photo.shape[:2]
    side = int(rng.uniform(0.3, 1.0) * min(h, w))
    top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
    crop = photo[top:top + side, left:left + side]
    step = max(1, side // size)  # cheap area-ish downsampling then nearest resize to the exact size
    crop = crop[::step, ::step]
    ys = (np.arange(size) * crop.shape[0] / size).astype(int)
    xs = (np.arange(size) * crop.shape[1] / size).astype(int)
    return crop[ys][:, xs].astype(np.float32) / 255.0


def _place_shapes(rng: np.random.Generator, image: np.ndarray, mask: np.ndarray, count: int) -> list:
    """Paint `count` random shapes (textured; neither overlapping nor touching, so each shows its whole outline)
    into `image` and their class ids into `mask`; returns [(kind, pixel box (x1, y1, x2, y2))] of those placed."""
    size = mask.shape[0]
    placed = []
    for _ in range(count):
        kind = int(rng.integers(1, 4))
        for _attempt in range(20):
            region = _shape_mask(rng, kind, size)
            grown = region.copy()
            for shift, axis in ((2, 0), (-2, 0), (2, 1), (-2, 1)):
                grown |= np.roll(region, shift, axis)
            if not (grown & (mask > 0)).any():
                image[region] = _texture(rng, size)[region]
                mask[region] = kind
                rows, cols = np.nonzero(region)
                placed.append((kind, (int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1)))
                break
    return placed


def make_shapes_scene(rng: np.random.Generator, photos: list[np.ndarray], size: int = 128):
    """One scene: (image uint8 (size, size, 3), mask uint8 (size, size) with values 0..3)."""
    image = _photo_background(rng, photos, size)
    mask = np.zeros((size, size), dtype=np.uint8)
    _place_shapes(rng, image, mask, int(rng.integers(1, 4)))
    return (image * 255).round().astype(np.uint8), mask


def load_shapes_dataset(image_size: int = 128, num_train: int = 800, num_val: int = 100, num_test: int = 100,
                        seed: int = 0):
    """Synthetic shape scenes over real photo crops as a `DatasetDict` ("train", "validation", "test"), with
    an "image" column and an "annotation" column (label map: 0 background, 1 circle, 2 square, 3 triangle)."""
    import datasets
    from PIL import Image

    photos = _photos()
    features = _features("annotation", SHAPES_LABELS, segmentation=True)
    splits = {}
    for offset, (name, count) in enumerate((("train", num_train), ("validation", num_val), ("test", num_test))):
        rng = np.random.default_rng([seed, offset])  # each split has its own stream: sizes don't shift others
        images, masks = [], []
        for _ in range(count):
            image, mask = make_shapes_scene(rng, photos, image_size)
            images.append(Image.fromarray(image))
            masks.append(Image.fromarray(mask))
        splits[name] = datasets.Dataset.from_dict({"image": images, "annotation": masks}, features=features)
    return datasets.DatasetDict(splits)


DETECTION_LABELS = ["circle", "square", "triangle"]  # the detector adds its background class 0


def _detection_features():
    import datasets

    return datasets.Features({
        "image_id": datasets.Value("int64"),
        "image": datasets.Image(),
        "objects": {"bbox": datasets.List(datasets.List(datasets.Value("float32"), length=4)),
                    "category": datasets.List(datasets.ClassLabel(names=DETECTION_LABELS))},
    })


def load_detection_dataset(image_size: int = 128, num_train: int = 600, num_val: int = 100, num_test: int = 100,
                           seed: int = 0, max_shapes: int = 3):
    """Shapes over real photo crops with their boxes, as a `DatasetDict` ("train", "validation", "test") in the
    form of transformers' detection examples: "image_id", "image" and "objects" ({"bbox": [[x, y, width,
    height], ...] in pixels (COCO's box form), "category": [class index into DETECTION_LABELS, ...]}). Each box is
    the tight box of its shape's pixels; 1 to `max_shapes` shapes per image, none touching another."""
    import datasets
    from PIL import Image

    photos = _photos()
    splits, next_id = {}, 1
    for offset, (name, count) in enumerate((("train", num_train), ("validation", num_val), ("test", num_test))):
        rng = np.random.default_rng([seed, 100 + offset])  # streams of their own, apart from the segmentation data
        rows = {"image_id": [], "image": [], "objects": []}
        for _ in range(count):
            image = _photo_background(rng, photos, image_size)
            mask = np.zeros((image_size, image_size), dtype=np.uint8)
            placed = _place_shapes(rng, image, mask, int(rng.integers(1, max_shapes + 1)))
            rows["image_id"].append(next_id)
            rows["image"].append(Image.fromarray((image * 255).round().astype(np.uint8)))
            rows["objects"].append({"bbox": [[x1, y1, x2 - x1, y2 - y1] for _, (x1, y1, x2, y2) in placed],
                                    "category": [kind - 1 for kind, _ in placed]})
            next_id += 1
        splits[name] = datasets.Dataset.from_dict(rows, features=_detection_features())
    return datasets.DatasetDict(splits)


def write_coco_folder(dataset_dict, folder) -> None:
    """Write a detection `DatasetDict` (as `load_detection_dataset` makes) as a COCO-format folder: per split,
    `folder/<split>/` with the images as PNG and `instances.json` (COCO's images / annotations / categories;
    category ids 1..N in the order of the class names). Empty splits are not written (a loader refuses them)."""
    import json
    from pathlib import Path

    folder = Path(folder)
    for split, dataset in dataset_dict.items():
        if len(dataset) == 0:
            continue
        names = dataset.features["objects"]["category"].feature.names
        out = folder / split
        out.mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for row in dataset:
            file_name = f"{row['image_id']:06d}.png"
            row["image"].save(out / file_name)
            images.append({"id": row["image_id"], "file_name": file_name, "width": row["image"].width,
                           "height": row["image"].height})
            for box, category in zip(row["objects"]["bbox"], row["objects"]["category"]):
                annotations.append({"id": len(annotations) + 1, "image_id": row["image_id"], "category_id": category + 1,
                                    "bbox": [float(v) for v in box], "area": float(box[2] * box[3]), "iscrowd": 0})
        categories = [{"id": i + 1, "name": name} for i, name in enumerate(names)]
        (out / "instances.json").write_text(json.dumps({"images": images, "annotations": annotations,
                                                         "categories": categories}))
