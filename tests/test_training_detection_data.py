"""Detection data: COCO-format folders (three layouts) and `datasets` folders of boxes, every defect either fixed
and counted in one line or a one-line error naming the file and the annotation, found before training."""

import json

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from mobilevit.training.data import DataError
from mobilevit.training.detection_data import (DetectionDataset, collate_detection, find_coco_splits,
                                               label_ids_for, prepare_detection_data)
from mobilevit.training.sampler import SampleKey

CATEGORIES = [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}]  # sparse ids, as COCO's


def _coco(images=3, size=(64, 48), boxes_per_image=1, categories=CATEGORIES, annotations=None):
    """A COCO instances dict with `images` images of `size` (W, H) and one box of category 3 per image."""
    categories = [dict(c) for c in categories]  # each test changes its own copy
    content = {"images": [{"id": i + 1, "file_name": f"{i + 1}.png", "width": size[0], "height": size[1]}
                          for i in range(images)],
               "categories": categories, "annotations": []}
    if annotations is None:
        for i in range(images):
            for k in range(boxes_per_image):
                content["annotations"].append({"id": len(content["annotations"]) + 1, "image_id": i + 1,
                                               "category_id": 3 if k % 2 == 0 else 7, "bbox": [4 + k, 5, 20, 16],
                                               "area": 320, "iscrowd": 0})
    else:
        content["annotations"] = annotations
    return content


def _write(folder, content, json_name="instances.json", size=(64, 48)):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for image in content["images"]:
        w, h = image.get("width", size[0]), image.get("height", size[1])
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / image["file_name"])
    (folder / json_name).write_text(json.dumps(content))
    return folder


def _split_folders(root, **kwargs):
    for split in ("train", "valid", "test"):  # Roboflow's layout and spelling
        _write(root / split, _coco(**kwargs), "_annotations.coco.json")
    return root


# -- formats --------------------------------------------------------------------------------------------------
def test_split_folders_with_one_json_each(tmp_path, capsys):
    data = prepare_detection_data(_split_folders(tmp_path / "data", images=4))
    assert (len(data.train), len(data.validation), len(data.test)) == (4, 4, 4)
    assert data.categories == ["cat", "dog"]
    assert data.id2label == {0: "background", 1: "cat", 2: "dog"}  # sparse ids 3, 7 -> contiguous 1, 2
    np.testing.assert_array_equal(data.train.boxes[0], [[4, 5, 24, 21]])  # COCO x, y, w, h -> corners
    assert data.train.labels[0].tolist() == [0] and data.train.image_ids == [1, 2, 3, 4]
    assert "nothing to fix" in data.summary()


def test_cocos_own_layout_annotations_folder_and_image_folders(tmp_path):
    root = tmp_path / "coco"
    _write(root / "train2017", _coco(images=5), json_name="unused.txt")
    _write(root / "val2017", _coco(images=2), json_name="unused.txt")
    (root / "annotations").mkdir()
    (root / "annotations" / "instances_train2017.json").write_text(json.dumps(_coco(images=5)))
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(_coco(images=2)))
    found = find_coco_splits(root)
    assert sorted(found) == ["train", "validation"]
    data = prepare_detection_data(root)
    assert (len(data.train), len(data.validation), data.test) == (5, 2, None)
    assert data.train.source[0] == root / "train2017" / "1.png"


def test_a_single_json_is_the_training_split_and_validation_is_carved_out(tmp_path):
    root = _write(tmp_path / "one", _coco(images=10))
    first = prepare_detection_data(root, seed=1)
    assert (len(first.train), len(first.validation)) == (9, 1)
    again = prepare_detection_data(root, seed=1)
    assert again.validation.image_ids == first.validation.image_ids  # fixed by the seed
    assert set(first.train.image_ids).isdisjoint(first.validation.image_ids)


def _objects_dataset(rows, names=("cat", "dog"), as_list=False, size=(40, 30)):
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)) for _ in rows]
    if as_list:  # a list of {bbox, category} per image
        objects = [[{"bbox": b, "category": c} for b, c in zip(r["bbox"], r["category"])] for r in rows]
        feature = datasets.List({"bbox": datasets.List(datasets.Value("float32"), length=4),
                                 "category": datasets.ClassLabel(names=list(names))})
    else:  # {bbox: [...], category: [...]} per image (datasets' Sequence of a dict)
        objects = rows
        feature = {"bbox": datasets.List(datasets.List(datasets.Value("float32"), length=4)),
                   "category": datasets.List(datasets.ClassLabel(names=list(names)))}
    features = datasets.Features({"image": datasets.Image(), "objects": feature})
    return datasets.Dataset.from_dict({"image": images, "objects": objects}, features=features)


@pytest.mark.parametrize("as_list", [False, True], ids=["dict-of-lists", "list-of-dicts"])
def test_datasets_folder_with_an_objects_column(tmp_path, as_list):
    rows = [{"bbox": [[1, 2, 10, 8]], "category": [1]}, {"bbox": [[0, 0, 5, 5], [20, 10, 10, 10]], "category": [0, 1]},
            {"bbox": [[3, 3, 4, 4]], "category": [0]}]
    dataset = _objects_dataset(rows, as_list=as_list)
    datasets.DatasetDict({"train": dataset, "validation": dataset}).save_to_disk(tmp_path / "saved")
    data = prepare_detection_data(tmp_path / "saved")
    assert data.categories == ["cat", "dog"] and len(data.train) == 3
    np.testing.assert_array_equal(data.train.boxes[1], [[0, 0, 5, 5], [20, 10, 30, 20]])
    assert data.train.labels[1].tolist() == [0, 1]


def test_named_categories_are_matched_by_name_across_splits_and_to_labels():
    """A validation split whose ClassLabel lists the classes in another order keeps each box's class; --labels in
    another order than the ClassLabel too; a class the label set lacks is one line naming it."""
    train = _objects_dataset([{"bbox": [[1, 1, 5, 5]], "category": [0]}, {"bbox": [[2, 2, 5, 5]], "category": [1]}])
    swapped = _objects_dataset([{"bbox": [[1, 1, 5, 5]], "category": [0]}, {"bbox": [[2, 2, 5, 5]], "category": [1]}],
                               names=("dog", "cat"))
    data = prepare_detection_data(datasets.DatasetDict({"train": train, "validation": swapped}))
    assert data.categories == ["cat", "dog"] and [l.tolist() for l in data.validation.labels] == [[1], [0]]
    data = prepare_detection_data(datasets.DatasetDict({"train": train, "validation": swapped}),
                                  labels=["dog", "cat", "bird"])
    assert data.categories == ["dog", "cat", "bird"]
    assert [l.tolist() for l in data.train.labels] == [[1], [0]]
    assert [l.tolist() for l in data.validation.labels] == [[0], [1]]
    other = _objects_dataset([{"bbox": [[1, 1, 5, 5]], "category": [0]}], names=("cow", "cat"))
    with pytest.raises(DataError, match=r"\[validation\]: holds the class 'cow', which the training split lacks"):
        prepare_detection_data(datasets.DatasetDict({"train": train, "validation": other}))


def test_integer_categories_take_names_from_labels(tmp_path):
    features = datasets.Features({"image": datasets.Image(), "objects": {
        "bbox": datasets.List(datasets.List(datasets.Value("float32"))), "category": datasets.List(datasets.Value("int64"))}})
    image = Image.new("RGB", (20, 20))
    dataset = datasets.Dataset.from_dict({"image": [image, image], "objects": [
        {"bbox": [[1, 1, 5, 5]], "category": [2]}, {"bbox": [[2, 2, 5, 5]], "category": [0]}]}, features=features)
    assert prepare_detection_data(dataset).categories == ["0", "1", "2"]
    assert prepare_detection_data(dataset, labels=["a", "b", "c"]).categories == ["a", "b", "c"]
    with pytest.raises(DataError, match=r"expected class ids in \[0, 2\) \(the label set\), got \[2\]"):
        prepare_detection_data(dataset, labels=["a", "b"])


# -- defects that are fixed and counted ----------------------------------------------------------------------
def test_boxes_outside_are_clipped_empty_ones_dropped_crowds_left_out_all_counted_in_one_line(tmp_path):
    annotations = [
        {"id": 1, "image_id": 1, "category_id": 3, "bbox": [-5, -5, 20, 20]},  # reaches outside: clipped
        {"id": 2, "image_id": 1, "category_id": 7, "bbox": [50, 40, 30, 30]},  # past the right/bottom: clipped
        {"id": 3, "image_id": 2, "category_id": 3, "bbox": [10, 10, 0, 5]},  # zero width: dropped
        {"id": 4, "image_id": 2, "category_id": 3, "bbox": [10, 10, -4, 5]},  # negative: dropped
        {"id": 5, "image_id": 2, "category_id": 3, "bbox": [70, 10, 5, 5]},  # wholly outside: dropped
        {"id": 6, "image_id": 2, "category_id": 7, "bbox": [1, 1, 30, 30], "iscrowd": 1},  # crowd: left out
        {"id": 7, "image_id": 2, "category_id": 7, "bbox": [2, 2, 10, 10]},
    ]  # image 3 has no box at all: left out of training
    root = tmp_path / "data"
    _write(root / "train", _coco(images=3, annotations=annotations))
    _write(root / "validation", _coco(images=3, annotations=[]))  # evaluation images without boxes stay
    data = prepare_detection_data(root)
    np.testing.assert_array_equal(data.train.boxes[0], [[0, 0, 15, 15], [50, 40, 64, 48]])
    np.testing.assert_array_equal(data.train.boxes[1], [[2, 2, 12, 12]])
    assert len(data.train) == 2 and len(data.validation) == 3
    fixes = data.fixes
    assert (fixes.clipped, fixes.empty_boxes, fixes.crowd, fixes.images_without_boxes) == (2, 3, 1, 1)
    line = data.summary()
    assert "\n" not in line
    assert ("2 boxes clipped to their image, 3 boxes of zero or negative size dropped, 1 crowd regions left out, "
            "1 training images without boxes left out") in line


# -- defects that stop the run, named ------------------------------------------------------------------------
def _refused(tmp_path, content, match, **write):
    root = _write(tmp_path / "bad", content, **write)
    with pytest.raises(DataError, match=match) as caught:
        prepare_detection_data(root)
    assert "\n" not in str(caught.value)
    assert "instances.json" in str(caught.value) or "bad" in str(caught.value)


def test_unknown_category_id_names_the_file_and_the_annotation(tmp_path):
    content = _coco(annotations=[{"id": 42, "image_id": 1, "category_id": 5, "bbox": [1, 1, 5, 5]}])
    _refused(tmp_path, content, r"instances.json': annotation id 42 \(annotations\[0\]\) has category_id 5, which is "
                                r"not among the categories \(3, 7\)")


def test_annotation_of_an_image_that_does_not_exist(tmp_path):
    content = _coco(annotations=[{"id": 9, "image_id": 77, "category_id": 3, "bbox": [1, 1, 5, 5]}])
    _refused(tmp_path, content, r"annotation id 9 \(annotations\[0\]\) names image_id 77, which no image has")


@pytest.mark.parametrize("what, change, match", [
    ("image", lambda c: c["images"].append(dict(c["images"][0], file_name="other.png")),
     r"images\[3\] has id 1, which images\[0\] has too \(image ids must be unique\)"),
    ("annotation", lambda c: c["annotations"].append(dict(c["annotations"][0])),
     r"annotation id 1 \(annotations\[3\]\): annotations\[0\] has the same id \(annotation ids must be unique\)"),
    ("category", lambda c: c["categories"].append({"id": 3, "name": "bird"}),
     r"categories\[2\] has id 3, which categories\[0\] has too"),
    ("category name", lambda c: c["categories"].append({"id": 9, "name": "cat"}),
     r"categories\[2\] is named 'cat', like categories\[0\] \(category names must be unique"),
])
def test_duplicate_ids_are_refused(tmp_path, what, change, match):
    content = _coco()
    change(content)
    _refused(tmp_path, content, match)


@pytest.mark.parametrize("box", [[1, 2, 3], [1, 2, "3", 4], [1, 2, float("nan"), 4], None])
def test_malformed_bbox(tmp_path, box):
    content = _coco(annotations=[{"id": 5, "image_id": 1, "category_id": 3, "bbox": box}])
    _refused(tmp_path, content, r"annotation id 5 \(annotations\[0\]\): expected bbox \[x, y, width, height\] of four "
                                r"finite numbers")


def test_not_a_coco_file_and_a_background_class(tmp_path):
    _refused(tmp_path, {"images": []}, r"expected a COCO instances file \(keys images, annotations, categories\)")
    content = _coco(categories=[{"id": 1, "name": "background"}, {"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}])
    with pytest.raises(DataError, match="a class is named 'background'"):
        prepare_detection_data(_write(tmp_path / "bg", content))


def test_unreadable_or_missing_images_and_wrong_sizes_are_named_together_or_skipped(tmp_path):
    content = _coco(images=4)
    root = _write(tmp_path / "data" / "train", content)
    _write(tmp_path / "data" / "validation", _coco(images=2))
    (root / "2.png").write_bytes(b"not a png")
    (root / "3.png").unlink()
    Image.new("RGB", (30, 30)).save(root / "4.png")  # the JSON says 64x48
    with pytest.raises(DataError) as caught:
        prepare_detection_data(tmp_path / "data")
    message = str(caught.value)
    assert "3 of 6 examples cannot be used" in message and "\n" not in message
    assert "2.png'" in message and "3.png': does not exist" in message
    assert "4.png': the annotations give its size as 64x48 (WxH), the file is 30x30" in message
    assert "--skip-bad-images" in message
    data = prepare_detection_data(tmp_path / "data", skip_bad=True)
    assert len(data.skipped) == 3 and data.train.image_ids == [1] and data.validation.image_ids == [1, 2]


def test_datasets_defects_name_the_split_and_row(tmp_path):
    features = datasets.Features({"image": datasets.Image(), "image_id": datasets.Value("int64"), "objects": {
        "bbox": datasets.List(datasets.List(datasets.Value("float32"))), "category": datasets.List(datasets.Value("int64")),
        "id": datasets.List(datasets.Value("int64"))}})
    image = Image.new("RGB", (20, 20))

    def dataset(objects, ids=(1, 2)):
        return datasets.Dataset.from_dict({"image": [image, image], "image_id": list(ids), "objects": objects},
                                          features=features)

    good = {"bbox": [[1, 1, 5, 5]], "category": [0], "id": [1]}
    with pytest.raises(DataError, match=r"Dataset\[train\]\[1\]: objects\[0\]: expected bbox \[x, y, width, height\] "
                                        r"of four finite numbers, got \[1.0, 1.0, 5.0\]"):
        prepare_detection_data(dataset([good, {"bbox": [[1, 1, 5]], "category": [0], "id": [2]}]))
    with pytest.raises(DataError, match=r"Dataset\[train\]\[1\]: image_id 1 is also the id of .*\[train\]\[0\]"):
        prepare_detection_data(dataset([good, dict(good, id=[2])], ids=(1, 1)))
    with pytest.raises(DataError, match=r"objects\[0\] has id 1, which .*\[train\]\[0\] has too \(box ids must be"):
        prepare_detection_data(dataset([good, good]))
    no_objects = datasets.Dataset.from_dict({"image": [image]}, features=datasets.Features({"image": datasets.Image()}))
    with pytest.raises(DataError, match="expected a column of boxes"):
        prepare_detection_data(no_objects)


# -- labels by name, the torch Dataset and the collator ---------------------------------------------------------
def test_classes_map_to_a_detectors_labels_by_name():
    coco = {name: i + 1 for i, name in enumerate(["person", "bicycle", "car", "dog", "cat"])}
    np.testing.assert_array_equal(label_ids_for(["cat", "car"], coco), [5, 3])
    assert label_ids_for(["cat", "unicorn"], coco) is None


def test_dataset_items_and_collated_batches(tmp_path):
    from mobilevit import auto
    from mobilevit.training.detection_transforms import DetectionAugmentation

    data = prepare_detection_data(_split_folders(tmp_path / "data", images=3, boxes_per_image=2))
    processor = auto.image_processor_for(auto.new_config("xx-small", "object-detection"), "object-detection")
    model_ids = np.array([17, 18])  # the data's cat and dog in some detector's label set
    evaluation = DetectionDataset(data.validation, model_ids, processor, (32, 32))
    item = evaluation[0]
    assert item["pixel_values"].shape == (3, 32, 32)
    labels = item["labels"]
    assert labels["class_labels"].tolist() == [17, 18]
    # (4, 5, 24, 21) and (5, 5, 25, 21) in a 64x48 image, as normalised (cx, cy, w, h): a stretch keeps them
    torch.testing.assert_close(labels["boxes"][0], torch.tensor([14 / 64, 13 / 48, 20 / 64, 16 / 48]))
    assert labels["orig_size"].tolist() == [48, 64] and int(labels["image_id"]) == 1
    training = DetectionDataset(data.train, model_ids, processor, (32, 32), DetectionAugmentation(32, processor))
    a, b = training[SampleKey(0, 64, 64, seed=5)], training[SampleKey(0, 64, 64, seed=5)]
    assert a["pixel_values"].shape == (3, 64, 64) and torch.equal(a["pixel_values"], b["pixel_values"])
    batch = collate_detection([evaluation[0], evaluation[1]])
    assert batch["pixel_values"].shape == (2, 3, 32, 32) and len(batch["labels"]) == 2


# -- the same defects in a datasets folder, in every split, and through the command line -----------------------
def test_datasets_boxes_are_clipped_dropped_and_counted_like_cocos(tmp_path):
    """A `datasets` folder is fixed by the same rules as a COCO folder (20x15 images here), and the validation
    split's boxes are clipped and dropped too; its images without boxes stay (their detections count)."""
    rows = [{"bbox": [[-3, -2, 10, 8], [15, 10, 10, 10]], "category": [0, 1]},  # both reach outside: clipped
            {"bbox": [[5, 5, 0, 4], [2, 2, -1, 3], [40, 1, 3, 3], [1, 1, 4, 4]], "category": [0, 0, 1, 1]},
            {"bbox": [], "category": []}]  # no box: left out of training
    train = _objects_dataset(rows, size=(20, 15))
    validation = _objects_dataset([{"bbox": [[18, 1, 6, 4]], "category": [0]}, {"bbox": [], "category": []}],
                                  size=(20, 15))
    datasets.DatasetDict({"train": train, "validation": validation}).save_to_disk(tmp_path / "saved")
    data = prepare_detection_data(tmp_path / "saved")
    np.testing.assert_array_equal(data.train.boxes[0], [[0, 0, 7, 6], [15, 10, 20, 15]])
    np.testing.assert_array_equal(data.train.boxes[1], [[1, 1, 5, 5]])
    assert data.train.labels[1].tolist() == [1] and len(data.train) == 2
    np.testing.assert_array_equal(data.validation.boxes[0], [[18, 1, 20, 5]])
    assert len(data.validation) == 2 and len(data.validation.boxes[1]) == 0
    assert (data.fixes.clipped, data.fixes.empty_boxes, data.fixes.images_without_boxes) == (3, 3, 1)
    assert "3 boxes clipped to their image, 3 boxes of zero or negative size dropped" in data.summary()


def test_a_category_outside_the_classlabel_names_the_split_and_row(tmp_path):
    features = datasets.Features({"image": datasets.Image(), "objects": {
        "bbox": datasets.List(datasets.List(datasets.Value("float32"))), "category": datasets.List(datasets.Value("int64"))}})
    image = Image.new("RGB", (20, 20))
    dataset = datasets.Dataset.from_dict({"image": [image] * 3, "objects": [
        {"bbox": [[1, 1, 5, 5]], "category": [0]}, {"bbox": [[1, 1, 5, 5]], "category": [1]},
        {"bbox": [[2, 2, 5, 5], [1, 1, 3, 3]], "category": [1, -1]}]}, features=features)
    with pytest.raises(DataError, match=r"data DatasetDict\[validation\]: DatasetDict\[validation\]\[2\]: expected class ids in "
                                        r"\[0, 2\) \(the label set\), got \[-1\]"):
        prepare_detection_data(datasets.DatasetDict({"train": dataset.select([0, 1]), "validation": dataset}),
                               labels=["a", "b"])
    with pytest.raises(DataError, match=r"objects\[0\]: expected an integer category, got 'cat'"):
        prepare_detection_data(datasets.Dataset.from_dict({"image": [image], "objects": [
            {"bbox": [[1, 1, 5, 5]], "category": ["cat"]}]}))


def test_a_split_whose_images_all_lack_boxes_is_refused_before_training(tmp_path):
    root = tmp_path / "data"
    _write(root / "train", _coco(images=2, annotations=[
        {"id": 1, "image_id": 1, "category_id": 3, "bbox": [100, 100, 5, 5]}]))  # wholly outside: dropped
    _write(root / "validation", _coco(images=1))
    with pytest.raises(DataError, match=r"\[train\]: no usable images left"):
        prepare_detection_data(root)
    _write(root / "test", _coco(images=0))
    with pytest.raises(DataError, match=r"\[test\]: the split is empty \(no images\)"):
        prepare_detection_data(root)


def test_bad_data_stops_the_train_command_in_one_line_before_anything_is_written(tmp_path, capsys):
    """Every defect is found when the data is loaded: `mobilevit train` exits 1 with one line naming the file and
    the annotation, before a model is built or a folder written (nothing found only after an epoch)."""
    from mobilevit.cli import main

    content = _coco(images=3)
    content["annotations"].append({"id": 77, "image_id": 2, "category_id": 12, "bbox": [1, 1, 5, 5]})
    root = tmp_path / "data"
    _write(root / "train", content)
    _write(root / "validation", _coco(images=1))
    out = tmp_path / "out"
    code = main(["train", "--task", "object-detection", "--data", str(root), "--epochs", "1", "--image-size", "64",
                 "--output-dir", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert err.count("\n") == 0 and "Traceback" not in err, err
    assert "train" in err and "instances.json" in err and "annotation id 77 (annotations[3]) has category_id 12" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no output, no checkpoint folder
