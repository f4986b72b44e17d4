"""The family registry's loading of saved folders: a model never runs with weights that were not in its folder,
and a folder that cannot be used is a one-line `NotAModelError` (issue 27)."""

import argparse
import json
import shutil

import pytest
import torch

import mobilevit
from mobilevit import auto
from mobilevit.auto import NotAModelError


def _copy(folder, tmp_path, name="model"):
    return shutil.copytree(folder, tmp_path / name)


@pytest.mark.parametrize("load", [
    lambda folder: mobilevit.pipeline("image-segmentation", model=folder),
    lambda folder: auto.load_model(folder, "semantic-segmentation"),
    lambda folder: auto.load_model_and_processor(folder, "semantic-segmentation"),
    lambda folder: auto.AutoModelForSemanticSegmentation.from_pretrained(folder),
])
def test_a_head_the_folder_does_not_hold_is_refused(saved_classifier, load):
    """They built a random DeepLabV3 head on a classifier's backbone and returned masks."""
    with pytest.raises(NotAModelError, match=r"holds an image-classification model, whose weights have no "
                                             r"semantic-segmentation head \(\d+ tensors missing"):
        load(saved_classifier)


@pytest.mark.parametrize("load", [
    lambda folder: mobilevit.pipeline("object-detection", model=folder),
    lambda folder: auto.AutoModelForObjectDetection.from_pretrained(folder),
])
def test_a_detection_head_the_folder_does_not_hold_is_refused(saved_classifier, load):
    """The same rule for detectors (issue 23 came after it): no random SSD heads drawing boxes; `mobilevit train`
    does not train detectors, so the message does not send the user there."""
    with pytest.raises(NotAModelError, match=r"whose weights have no object-detection head \(\d+ tensors missing, "
                                             r"e\.g\. ssd\..*start an object-detection head on purpose") as found:
        load(saved_classifier)
    assert "mobilevit train" not in str(found.value)


def test_the_backbone_of_a_classifier_and_a_new_head_on_purpose_still_load(saved_classifier, saved_segmenter):
    backbone = auto.load_model(saved_classifier, "image-feature-extraction")
    assert backbone.new_tensors == []
    labels = {0: "x", 1: "y"}
    model = auto.load_model(saved_segmenter, "image-classification",
                            new_head={"id2label": labels, "label2id": {v: k for k, v in labels.items()}})
    assert "classifier.weight" in model.new_tensors and model.config.num_labels == 2


def test_a_new_head_for_other_classes_of_the_same_count_is_new_too(saved_classifier):
    """Same count, other names: the saved head's weights would otherwise be kept for classes they never saw."""
    labels = {0: "x", 1: "y", 2: "z"}
    saved = auto.load_model(saved_classifier)
    model = auto.load_model(saved_classifier, new_head={"id2label": labels, "label2id": {v: k for k, v in
                                                                                          labels.items()}})
    assert {"classifier.weight", "classifier.bias"} <= set(model.new_tensors)
    assert not torch.equal(model.classifier.weight, saved.classifier.weight)


def test_weights_holding_nan_are_refused(saved_classifier, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = _copy(saved_classifier, tmp_path)
    weights = load_file(folder / "model.safetensors")
    key = next(k for k, v in weights.items() if v.is_floating_point())
    weights[key][...] = float("nan")
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(NotAModelError, match=r"hold NaN or infinity in 1 tensors"):
        auto.load_model(folder)


def test_a_pickle_the_safe_loader_refuses_never_gets_torchs_advice(saved_classifier, tmp_path):
    folder = _copy(saved_classifier, tmp_path)
    (folder / "model.safetensors").unlink()
    torch.save({"x": argparse.Namespace(a=1)}, folder / "pytorch_model.bin")
    with pytest.raises(NotAModelError) as caught:
        auto.load_model(folder)
    message = str(caught.value)
    assert "a pickle that the safe loader refuses (Unsupported global: GLOBAL argparse.Namespace)" in message
    assert "weights_only=False" not in message and len(message.splitlines()) == 1


@pytest.mark.parametrize("change, message", [
    (lambda f: (f / "preprocessor_config.json").unlink() or (f / "preprocessor_config.json").mkdir(),
     "preprocessor_config.json' is a folder"),
    (lambda f: (f / "preprocessor_config.json").unlink() or (f / "preprocessor_config.json").symlink_to(f / "gone"),
     "is a symbolic link to nothing"),
    (lambda f: _edit(f / "preprocessor_config.json", crop_size={"height": 16, "width": 16}),
     "crop_size.height expected 32 to 8192 pixels (the network downsamples 32x), got 16"),
    (lambda f: _edit(f / "preprocessor_config.json", size={"shortest_edge": 100000}),
     "size.shortest_edge expected 1 to 9216 pixels"),
    (lambda f: _edit(f / "config.json", model_type=None), "its config.json has no model_type; expected one of"),
    (lambda f: (f / "config.json").write_text("[1, 2]"), "expected its config.json to hold a JSON object, got a list"),
])
def test_folders_that_cannot_be_used_are_one_line_errors(saved_classifier, tmp_path, change, message):
    """An unreadable preprocessor_config.json was replaced by defaults without a word; a config without a
    model_type said 'is a None model'."""
    folder = _copy(saved_classifier, tmp_path)
    change(folder)
    with pytest.raises(NotAModelError, match="model: ") as caught:
        auto.load_model_and_processor(folder)
    assert message in str(caught.value) and len(str(caught.value).splitlines()) == 1


def _edit(path, **fields):
    content = json.loads(path.read_text())
    content.update(fields)
    if content.get("model_type", "") is None:
        del content["model_type"]
    path.write_text(json.dumps(content))
