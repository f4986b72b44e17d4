"""Model cards and pushing a finished folder (against a recording stand-in for the Hub API)."""

import pytest

from mobilevit import hub


def card(**overrides):
    fields = dict(task="image-classification", variant="x-small", num_parameters=2317848, image_size=256,
                  num_labels=1000, dataset="imagenet-1k", source="/ckpt/mobilevit_xs.pt", source_sha256="ab" * 32)
    return hub.model_card_text(**{**fields, **overrides})


def test_classification_card_says_what_a_user_needs():
    text = card(metrics={"top1_accuracy": 0.747, "eval_images": 50000})
    assert text.startswith("---\nlibrary_name: transformers\npipeline_tag: image-classification\n")
    assert "- imagenet-1k" in text and "| variant | x-small |" in text and "| parameters | 2,317,848 |" in text
    assert "`mobilevit_xs.pt`" in text and "ab" * 32 in text
    assert "| top1_accuracy | 0.7470 |" in text and "| eval_images | 50000 |" in text
    assert "**BGR**" in text and "no mean/std" in text and "shortest edge to 288" in text
    assert "MobileViTForImageClassification.from_pretrained" in text and "id2label" in text
    assert "@inproceedings{mehta2022mobilevit" in text


def test_segmentation_card_and_optional_fields(tmp_path):
    path = hub.write_model_card(tmp_path, task="semantic-segmentation", variant=None, num_parameters=10,
                                image_size=512, num_labels=3, repo_id="me/seg")
    text = path.read_text()
    assert path.name == "README.md" and "pipeline_tag: image-segmentation" in text
    assert "custom widths" in text and "Not measured" in text and "converted from" not in text
    assert 'from_pretrained("me/seg")' in text and "MobileViTForSemanticSegmentation" in text
    with pytest.raises(ValueError, match="task: expected one of"):
        card(task="detection")


def test_push_folder_to_hub_creates_the_repo_and_uploads_the_folder(tmp_path, monkeypatch):
    calls = []

    class RecordingApi:
        def __init__(self, token=None):
            calls.append(("init", token))

        def create_repo(self, repo_id, **kwargs):
            calls.append(("create_repo", repo_id, kwargs["exist_ok"]))

        def upload_folder(self, folder_path, repo_id, **kwargs):
            calls.append(("upload_folder", folder_path, repo_id))
            return type("Info", (), {"commit_url": f"https://hub.test/{repo_id}/commit/abc"})()

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    url = hub.push_folder_to_hub(tmp_path, "me/model", token="t")
    assert url == "https://hub.test/me/model/commit/abc"
    assert calls == [("init", "t"), ("create_repo", "me/model", True), ("upload_folder", str(tmp_path), "me/model")]
    with pytest.raises(ValueError, match="folder: expected an existing model folder"):
        hub.push_folder_to_hub(tmp_path / "missing", "me/model")
    with pytest.raises(ValueError, match="repo_id: expected"):
        hub.push_folder_to_hub(tmp_path, " ")
