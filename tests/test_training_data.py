"""Data loading, checks before training, and the torch-side augmentation."""

import os

import datasets
from pathlib import Path
import numpy as np
import pytest
import torch
from PIL import Image

from mobilevit.training import TrainJob, train_and_save
from mobilevit.training.data import DataError, MobileViTDataset, collate, prepare_task_data
from mobilevit.training.sampler import MultiScaleBatchSampler
from mobilevit.training.transforms import EvalTransform, TrainAugmentation, image_to_tensor


def _image_folder(root, classes=("cat", "dog"), per_class=6, size=(40, 30)):
    rng = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def _segmentation_dataset(n=6, size=32, mask_size=None, bad_value=None):
    rng = np.random.default_rng(0)
    images, masks = [], []
    for i in range(n):
        images.append(Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)))
        mask = rng.integers(0, 3, (mask_size or size, mask_size or size), dtype=np.uint8)
        if bad_value is not None and i == n - 1:
            mask[0, 0] = bad_value
        masks.append(Image.fromarray(mask))
    features = datasets.Features({"image": datasets.Image(), "annotation": datasets.Image()})
    return datasets.Dataset.from_dict({"image": images, "annotation": masks}, features=features)


def test_image_to_tensor_gives_bgr_in_unit_range():
    rgb = np.zeros((4, 5, 3), dtype=np.uint8)
    rgb[..., 0] = 255  # pure red
    for image in (Image.fromarray(rgb), rgb, torch.from_numpy(rgb).permute(2, 0, 1)):
        pixels = image_to_tensor(image)
        assert pixels.shape == (3, 4, 5) and pixels.dtype == torch.float32
        assert torch.all(pixels[2] == 1.0) and torch.all(pixels[:2] == 0.0)  # red is the last channel in BGR
    grey = image_to_tensor(Image.fromarray(np.full((3, 3), 128, dtype=np.uint8)))
    assert grey.shape == (3, 3, 3) and torch.allclose(grey, torch.full_like(grey, 128 / 255))
    with pytest.raises(TypeError, match="image"):
        image_to_tensor("not an image")


def test_training_feeds_each_family_the_channel_order_it_was_trained_on():
    """MobileViTv2 (ml-cvnets v0.2) trained on RGB, v1 (v0.1) on BGR: training data and the processor saved with
    the model follow the family."""
    from mobilevit import auto
    from mobilevit.training.job import build_processor

    rgb = np.zeros((4, 5, 3), dtype=np.uint8)
    rgb[..., 0] = 255  # pure red
    assert torch.all(image_to_tensor(rgb, "RGB")[0] == 1.0) and torch.all(image_to_tensor(rgb, "RGB")[1:] == 0.0)
    with pytest.raises(ValueError, match="channel_order: expected 'BGR' or 'RGB', got 'GBR'"):
        image_to_tensor(rgb, "GBR")
    photo = np.random.default_rng(0).integers(0, 256, (6, 6, 3), dtype=np.uint8)
    dataset = datasets.Dataset.from_dict({"image": [Image.fromarray(photo)], "label": [0]})
    for variant, order, flip in (("xx-small", "BGR", True), ("mobilevitv2-0.5", "RGB", False)):
        family = auto.resolve_variant(variant)[0]
        assert family.preprocessing.channel_order == order
        item = MobileViTDataset(dataset, "image-classification", EvalTransform(6, 6), channel_order=order)[0]
        processor = build_processor(6, 6, family)  # the photo's own size: no resampling to tell apart
        assert processor.do_flip_channel_order is flip
        expected = processor(Image.fromarray(photo), return_tensors="pt")["pixel_values"][0]
        assert torch.equal(item["pixel_values"], expected), variant


def test_augmentation_moves_image_and_mask_together():
    mask = torch.zeros(64, 64, dtype=torch.long)
    mask[:, 32:] = 1
    mask[40:, :] = 2
    pixels = (mask.float() / 2).expand(3, -1, -1).clone()  # the image encodes its own mask
    augment = TrainAugmentation(size=48, scale=(0.2, 1.0), flip_prob=0.5)
    for seed in range(20):
        out_pixels, out_mask = augment(pixels, mask, generator=torch.Generator().manual_seed(seed))
        assert out_pixels.shape == (3, 48, 48) and out_mask.shape == (48, 48) and out_mask.dtype == torch.long
        agree = (torch.round(out_pixels[0] * 2).long() == out_mask).float().mean()
        assert agree > 0.9  # only pixels on an interpolated edge may differ
        assert set(out_mask.unique().tolist()) <= {0, 1, 2}  # nearest neighbour: no blended class ids


def test_augmentation_is_reproducible_from_its_seed_and_resizes_to_the_batch_size():
    augment = TrainAugmentation(size=32)
    pixels = torch.rand(3, 50, 70)
    first, _ = augment(pixels, generator=torch.Generator().manual_seed(5))
    again, _ = augment(pixels, generator=torch.Generator().manual_seed(5))
    assert torch.equal(first, again)
    bigger, _ = augment(pixels, size=(64, 64), generator=torch.Generator().manual_seed(5))
    assert bigger.shape == (3, 64, 64)


def test_eval_transform_resizes_shortest_edge_then_centre_crops():
    pixels, mask = EvalTransform(resize=40, crop_size=32)(torch.rand(3, 60, 90), torch.zeros(60, 90, dtype=torch.long))
    assert pixels.shape == (3, 32, 32) and mask.shape == (32, 32)


def test_image_folder_loads_offline_with_class_names_and_a_validation_split(tmp_path):
    data = prepare_task_data(_image_folder(tmp_path / "pets"), "image-classification", seed=0)
    assert data.id2label == {0: "cat", 1: "dog"}
    assert len(data.train) + len(data.validation) == 12 and len(data.validation) >= 1
    dataset = MobileViTDataset(data.train, data.task, TrainAugmentation(32), data.image_column, data.label_column)
    sampler = MultiScaleBatchSampler(len(dataset), 4, 32, multi_scale=False)
    batch = collate([dataset[key] for key in next(iter(sampler))])
    assert batch["pixel_values"].shape == (4, 3, 32, 32) and batch["labels"].dtype == torch.long


def test_saved_segmentation_dataset_loads_with_label_file(tmp_path):
    _segmentation_dataset().save_to_disk(str(tmp_path / "seg"))
    (tmp_path / "seg" / "id2label.json").write_text('["background", "a", "b"]')
    data = prepare_task_data(tmp_path / "seg", "semantic-segmentation")
    assert data.id2label == {0: "background", 1: "a", 2: "b"} and data.label_column == "annotation"
    item = MobileViTDataset(data.train, data.task, EvalTransform(32, 32), data.image_column, data.label_column)[0]
    assert item["labels"].shape == (32, 32) and item["pixel_values"].shape == (3, 32, 32)


def test_folder_without_images_is_refused(tmp_path):
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    (tmp_path / "empty" / "cat" / "notes.txt").write_text("no pictures here")
    with pytest.raises(DataError, match="found no images"):
        prepare_task_data(tmp_path / "empty", "image-classification")
    with pytest.raises(DataError, match="does not exist"):
        prepare_task_data(tmp_path / "missing", "image-classification")


def test_mask_of_another_size_is_refused():
    with pytest.raises(DataError, match="the size of its image"):
        prepare_task_data(_segmentation_dataset(mask_size=16), "semantic-segmentation", labels=["a", "b", "c"])


def test_mask_values_outside_the_label_set_are_refused():
    with pytest.raises(DataError, match=r"mask values in \[0, 3\).*got \[7\]"):
        prepare_task_data(_segmentation_dataset(bad_value=7), "semantic-segmentation", labels=["a", "b", "c"])
    # 255 is the ignore index, not an error; but masks that label no pixel at all leave nothing to learn
    prepare_task_data(_segmentation_dataset(bad_value=255), "semantic-segmentation", labels=["a", "b", "c"])
    ignored = [Image.fromarray(np.full((32, 32), 255, np.uint8))] * 6
    with pytest.raises(DataError, match=r"expected masks that label some pixels, got only 255 \(ignored\)"):
        prepare_task_data(_masks_dataset(ignored), "semantic-segmentation", labels=["a", "b", "c"])


def test_class_ids_outside_the_label_set_are_refused():
    images = [Image.new("RGB", (8, 8)) for _ in range(10)]
    dataset = datasets.Dataset.from_dict({"image": images, "label": [0, 1, 2, 0, 1, 2, 0, 1, 2, 5]},
                                         features=datasets.Features({"image": datasets.Image(),
                                                                     "label": datasets.Value("int64")}))
    with pytest.raises(DataError, match=r"class id in \[0, 3\).*got 5"):
        prepare_task_data(dataset, "image-classification", labels=["a", "b", "c"])


def test_bad_arguments_fail_before_any_training(tmp_path):
    folder = _image_folder(tmp_path / "pets")
    for field, value in (("batch_size", 0), ("epochs", -1), ("learning_rate", 0.0)):
        with pytest.raises(ValueError, match=field):
            train_and_save(TrainJob(task="classification", data=folder, output_dir=tmp_path / "out", **{field: value}))
    with pytest.raises(ValueError, match="variant"):
        train_and_save(TrainJob(task="classification", data=folder, output_dir=tmp_path / "out", variant="huge"))
    assert not (tmp_path / "out").exists()


# -- every example checked before training, each bad one named --------------------------------------------------------
def test_one_class_and_empty_class_folders_are_refused(tmp_path):
    """A one-class folder reported a missing label column; an empty class folder was silently dropped."""
    _image_folder(tmp_path / "one", classes=("cat",))
    with pytest.raises(DataError, match=r"expected at least two class folders in '.*one' \(a classifier needs two "
                                        r"classes\), got one, 'cat'"):
        prepare_task_data(tmp_path / "one", "image-classification")
    _image_folder(tmp_path / "three", classes=("cat", "dog"))
    (tmp_path / "three" / "bird").mkdir()
    with pytest.raises(DataError, match=r"expected images in every class folder, got none in '.*three/bird'"):
        prepare_task_data(tmp_path / "three", "image-classification")
    _image_folder(tmp_path / "splits" / "train", classes=("cat", "dog"))
    _image_folder(tmp_path / "splits" / "test", classes=("cat",))
    (tmp_path / "splits" / "test" / "dog").mkdir()
    with pytest.raises(DataError, match=r"got none in '.*splits/test/dog'"):
        prepare_task_data(tmp_path / "splits", "image-classification")


@pytest.fixture
def damaged_folder(tmp_path):
    root = _image_folder(tmp_path / "pets", per_class=8)
    photo = (root / "cat" / "0.png").read_bytes()
    (root / "cat" / "0.png").write_bytes(photo[: len(photo) // 2])  # truncated
    (root / "dog" / "notes.jpg").write_text("not an image")
    Image.fromarray(np.full((30, 40), 70000, np.int32)).save(root / "dog" / "too_wide.tif")
    return root


def test_unreadable_images_are_named_before_training(damaged_folder, capsys):
    """A truncated image crashed the run after a whole epoch, with a PIL traceback that did not name it."""
    with pytest.raises(DataError) as caught:
        prepare_task_data(damaged_folder, "image-classification")
    message = str(caught.value)
    assert "3 of 18 examples cannot be used" in message and "--skip-bad-images" in message
    assert f"'{damaged_folder / 'cat' / '0.png'}': cannot be decoded, the file is truncated or corrupt" in message
    assert f"'{damaged_folder / 'dog' / 'notes.jpg'}': is not an image file Pillow can read" in message
    assert f"'{damaged_folder / 'dog' / 'too_wide.tif'}': expected integer pixels in 0..255" in message
    err = capsys.readouterr().err
    assert "checking" in err and err.count("cannot be decoded") == 1  # the progress bar, and each file once


def test_skip_bad_images_trains_on_the_rest_and_reports_them(damaged_folder):
    data = prepare_task_data(damaged_folder, "image-classification", skip_bad=True)
    assert len(data.train) + len(data.validation) == 15
    assert sorted(Path(b.name.strip("'")).name for b in data.skipped) == ["0.png", "notes.jpg", "too_wide.tif"]
    dataset = MobileViTDataset(data.train, data.task, EvalTransform(32, 32), data.image_column, data.label_column)
    assert all(dataset[i]["pixel_values"].shape == (3, 32, 32) for i in range(len(dataset)))


def _masks_dataset(masks):
    images = [Image.fromarray(np.zeros((32, 32, 3), np.uint8)) for _ in masks]
    features = datasets.Features({"image": datasets.Image(), "annotation": datasets.Image()})
    return datasets.Dataset.from_dict({"image": images, "annotation": masks}, features=features)


def test_colour_coded_masks_are_caught_before_training_and_grey_rgb_masks_read():
    ids = np.random.default_rng(0).integers(0, 3, (32, 32), dtype=np.uint8)
    grey_as_rgb = Image.fromarray(np.repeat(ids[:, :, None], 3, axis=2))
    data = prepare_task_data(_masks_dataset([grey_as_rgb] * 6), "semantic-segmentation", labels=["a", "b", "c"])
    item = MobileViTDataset(data.train, data.task, EvalTransform(32, 32), data.image_column, data.label_column)[0]
    assert item["labels"].max() <= 2
    coloured = np.zeros((32, 32, 3), np.uint8)
    coloured[:16] = (128, 0, 0)
    with pytest.raises(DataError, match=r"Dataset\[\w+\]\[\d\]: expected a map of class ids, got a colour-coded map"):
        prepare_task_data(_masks_dataset([grey_as_rgb] * 5 + [Image.fromarray(coloured)]), "semantic-segmentation",
                          labels=["a", "b", "c"], val_fraction=0.5)


def test_jpeg_scenes_with_png_masks_pass_the_size_check(tmp_path):
    """Images are checked at full size where a mask has to match them (a JPEG decoded at reduced scale, as the
    classification check does to save time, would not)."""
    for i in range(6):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(tmp_path / f"{i}.jpg")
        Image.fromarray(np.full((48, 64), i % 3, np.uint8)).save(tmp_path / f"{i}.png")
    features = datasets.Features({"image": datasets.Image(), "annotation": datasets.Image()})
    dataset = datasets.Dataset.from_dict({"image": [str(tmp_path / f"{i}.jpg") for i in range(6)],
                                          "annotation": [str(tmp_path / f"{i}.png") for i in range(6)]},
                                         features=features)
    data = prepare_task_data(dataset, "semantic-segmentation", labels=["a", "b", "c"])
    assert len(data.train) + len(data.validation) == 6 and not data.skipped


def test_training_reads_images_by_the_same_rules_as_the_processor():
    """A mode "I" image holding 8-bit values trains as the 8-bit image (it was read as 16-bit: nearly black)."""
    from mobilevit import MobileViTImageProcessor

    grey = np.random.default_rng(1).integers(0, 256, (40, 40), dtype=np.uint8)
    as_int32 = Image.fromarray(grey.astype(np.int32))
    assert as_int32.mode == "I"
    assert torch.equal(image_to_tensor(as_int32), image_to_tensor(Image.fromarray(grey)))
    processor = MobileViTImageProcessor(do_resize=False, do_center_crop=False)
    assert torch.equal(processor(as_int32, return_tensors="pt")["pixel_values"][0], image_to_tensor(as_int32))


# -- issue 27: image folders read as a user lays them out, one-line errors for what cannot be a label -------------------
def test_a_linked_class_folder_is_followed_and_sub_folders_keep_their_class(tmp_path):
    """A symlinked class folder was not followed, a sub-folder broke the labels ('expected a column of class
    labels ... got columns ['image']')."""
    _image_folder(tmp_path / "elsewhere", classes=("bird",))
    root = _image_folder(tmp_path / "pets", classes=("cat", "dog"))
    (root / "bird").symlink_to(tmp_path / "elsewhere" / "bird")
    (root / "cat" / "indoor").mkdir()
    for name in ("0.png", "1.png"):
        (root / "cat" / name).rename(root / "cat" / "indoor" / name)
    (root / "dog" / ".hidden.png").write_bytes((root / "dog" / "0.png").read_bytes())
    data = prepare_task_data(root, "image-classification")
    assert data.id2label == {0: "bird", 1: "cat", 2: "dog"}
    labels = [data.id2label[int(label)] for split in (data.train, data.validation) for label in split["label"]]
    assert sorted(labels) == ["bird"] * 6 + ["cat"] * 6 + ["dog"] * 6  # the hidden file left out


def test_names_and_layouts_that_cannot_be_labels_are_one_line_errors(tmp_path):
    root = _image_folder(tmp_path / "bytes", classes=("cat", "dog"))
    os.rename(bytes(root / "dog"), bytes(root) + b"/\xff\xfe")
    with pytest.raises(DataError, match=r"expected class folder names in UTF-8, got b'.*\\xff\\xfe'; rename it"):
        prepare_task_data(root, "image-classification")
    root = _image_folder(tmp_path / "loose", classes=("cat", "dog"))
    (root / "stray.png").write_bytes((root / "cat" / "0.png").read_bytes())
    with pytest.raises(DataError, match="expected every image inside a class folder, got '.*stray.png'"):
        prepare_task_data(root, "image-classification")


def test_classification_of_a_segmentation_data_set_says_what_it_is(tmp_path):
    dataset = _segmentation_dataset().rename_column("annotation", "label")
    dataset.save_to_disk(str(tmp_path / "masks"))
    with pytest.raises(DataError, match="'label' holds images, as segmentation masks do: pass --task segmentation"):
        prepare_task_data(tmp_path / "masks", "image-classification")


@pytest.mark.parametrize("content", ['{"a": "background", "1": "x"}', '{"-1": "x", "0": "y"}', '{"0": "y", "2": "z"}'])
def test_label_files_with_other_keys_are_one_line_errors(tmp_path, content):
    _segmentation_dataset().save_to_disk(str(tmp_path / "seg"))
    (tmp_path / "seg" / "id2label.json").write_text(content)
    with pytest.raises(DataError, match=r"id2label.json: expected the ids 0..N-1 as keys"):
        prepare_task_data(tmp_path / "seg", "semantic-segmentation")


def test_reading_a_saved_data_set_writes_nothing_beside_it(tmp_path):
    """The validation split is carved out in memory: datasets' own split writes index files into the input."""
    _segmentation_dataset(n=12).save_to_disk(str(tmp_path / "seg"))
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    data = prepare_task_data(tmp_path / "seg", "semantic-segmentation", labels=["a", "b", "c"])
    assert len(data.train) + len(data.validation) == 12
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_class_folders_are_matched_to_labels_by_name(tmp_path):
    """--labels took the class folders by their order: a file name given as --labels ('nowhere.json') became a
    one-class label set, and every other folder's images were reported as bad examples."""
    folder = _image_folder(tmp_path / "pets", classes=("cat", "dog"))
    data = prepare_task_data(folder, "image-classification", labels=["dog", "bird", "cat"])
    assert data.id2label == {0: "dog", 1: "bird", 2: "cat"}
    labels = [data.label_maps["train"][i] if data.label_maps["train"] else i for i in data.train["label"]]
    names = data.train.features["label"].names
    assert [data.id2label[label] for label in labels] == [names[i] for i in data.train["label"]]
    with pytest.raises(DataError, match=r"holds the class 'dog', which --labels lacks \(its classes: 'cat', 'bird'\)"):
        prepare_task_data(folder, "image-classification", labels=["cat", "bird"])
