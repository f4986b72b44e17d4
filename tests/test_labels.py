"""The label files are the Hub's `huggingface/label-files` lists, byte for byte."""

import hashlib

from mobilevit.labels import (
    LABELS_DIR,
    ade20k_id2label,
    coco_category_ids,
    coco_id2label,
    coco_with_background_id2label,
    ade20k_with_background_id2label,
    imagenet_1k_id2label,
    label2id,
    label_set_for,
    pascal_voc_id2label,
)

# sha256 of the files as committed: imagenet-1k-id2label.json and pascal-voc-id2label.json of the Hub's
# `huggingface/label-files` (pretty-printed with indent 2, 33,567 and 370 bytes). A change here is a change of
# the labels every converted config carries.
SHA256 = {
    "imagenet-1k.json": "049f05e28ba530eb6acd9ead0f3430b58df45097188669c7117f7bed2b9ef774",
    "pascal-voc.json": "9ee9fc559da57153410dfee64e0fc67f5116b85b2811af94f043530596446f25",
    # the 150 ADE20k names of the Hub's ade20k-id2label.json and ml-cvnets' ADE20k data set (written here with
    # indent 2; ml-cvnets' "bed " keeps its trailing space, as on the Hub)
    "ade20k.json": "f6a3ddbf8df0547c67a552e542dda58bc07a50f98f0eb06384dcdc4cea29b07f",
    # COCO 2017's 80 object classes in ml-cvnets' order (its SSD fixtures' id2label after the background), and
    # the official category id of each
    "coco.json": "01ff2802ec46c52d5eb521def1f4309354f499eea4fcd44ad4b3f93d3f08a121",
    "coco-category-ids.json": "e24081eeea4c7d03a380f39e3a564ee57c7438a9d1fe41b9cde0bc400f2a3d53",
}


def test_files_are_unchanged():
    for name, digest in SHA256.items():
        assert hashlib.sha256((LABELS_DIR / name).read_bytes()).hexdigest() == digest, name


def test_imagenet_1k():
    labels = imagenet_1k_id2label()
    assert list(labels) == list(range(1000))
    assert labels[0] == "tench, Tinca tinca"
    assert labels[134] == labels[517] == "crane"  # the bird and the machine share a name on the Hub
    assert labels[639] == "maillot, tank suit"
    assert labels[999] == "toilet tissue, toilet paper, bathroom tissue"
    inverse = label2id(labels)
    assert len(inverse) == 999 and inverse["crane"] == 517 and inverse["maillot"] == 638
    labels[0] = "changed"
    assert imagenet_1k_id2label()[0] == "tench, Tinca tinca"  # callers get their own copy


def test_pascal_voc():
    assert list(pascal_voc_id2label().values()) == [
        "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
        "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor"]
    assert label2id(pascal_voc_id2label())["tvmonitor"] == 20


def test_ade20k_with_and_without_background():
    labels = ade20k_id2label()
    assert list(labels) == list(range(150)) and labels[0] == "wall" and labels[12] == "person"
    assert labels[149] == "flag" and labels[7] == "bed "
    with_background = ade20k_with_background_id2label()
    assert list(with_background) == list(range(151)) and with_background[0] == "background"
    assert all(with_background[i + 1] == name for i, name in labels.items())
    assert label_set_for("semantic-segmentation", 150) == (labels, "ade20k")
    assert label_set_for("semantic-segmentation", 151) == (with_background, "ade20k-with-background")
    assert label_set_for("semantic-segmentation", 21)[1] == "pascal-voc"


def test_coco_for_the_detectors():
    labels = coco_id2label()
    assert list(labels) == list(range(80)) and labels[0] == "person" and labels[79] == "toothbrush"
    assert labels[62] == "tv" and labels[57] == "couch"  # COCO 2017's names
    with_background = coco_with_background_id2label()
    assert len(with_background) == 81 and with_background[0] == "background" and with_background[80] == "toothbrush"
    assert label_set_for("object-detection", 81) == (with_background, "coco")
    ids = coco_category_ids()
    assert list(ids) == list(range(80)) and ids[0] == 1 and ids[79] == 90
    assert list(ids.values()) == sorted(ids.values()) and 12 not in ids.values()  # the gaps of COCO's ids
