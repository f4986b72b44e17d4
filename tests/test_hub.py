"""Model cards, and pushing model + config + processor to the Hub.

The push / pull round trip runs against `tests/hub_server.py`, a local stand-in for the Hub on 127.0.0.1 (a
thread of this process). huggingface_hub reads `HF_ENDPOINT` once, at import, so the push and the pull run in
a fresh Python process whose environment points at the local server and at an empty cache in tmp.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from hub_server import LocalHubServer
from mobilevit import MobileViTForImageClassification, MobileViTImageProcessor, hub

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


def test_push_folder_uploads_config_weights_processor_and_card_in_one_commit(saved_classifier, tmp_path, monkeypatch):
    calls = []

    class RecordingApi:
        def __init__(self, token=None):
            calls.append(("init", token))

        def create_repo(self, repo_id, **kwargs):
            calls.append(("create_repo", repo_id, kwargs["exist_ok"]))

        def create_commit(self, repo_id, operations, **kwargs):
            calls.append(("create_commit", repo_id, sorted(op.path_in_repo for op in operations)))
            return type("Info", (), {"commit_url": f"https://hub.test/{repo_id}/commit/abc"})()

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    url = hub.push_folder_to_hub(saved_classifier, "me/model", token="t")
    assert url == "https://hub.test/me/model/commit/abc"
    assert calls == [("init", "t"), ("create_repo", "me/model", True),
                     ("create_commit", "me/model", ["README.md", "config.json", "model.safetensors",
                                                    "preprocessor_config.json"])]
    assert not (saved_classifier / "README.md").exists()  # the card is generated for the upload, not written here
    with pytest.raises(ValueError, match="folder: expected an existing model folder"):
        hub.push_folder_to_hub(tmp_path / "missing", "me/model")
    with pytest.raises(ValueError, match="repo_id: expected"):
        hub.push_folder_to_hub(tmp_path, " ")


REPO_ID = "user/mobilevit-xxs-finetuned"


def fine_tune_a_few_steps(source: Path, target: Path, steps: int = 3) -> list[float]:
    """What training leaves behind, in miniature: a few SGD steps on digits, the weights, the processor,
    the metrics and the curves picture."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = [np.kron(d, np.ones((8, 8))).astype(np.uint8) * 16 for d in digits.images[:12]]  # 64x64 grey
    labels = torch.tensor(digits.target[:12] % 3)
    model = MobileViTForImageClassification.from_pretrained(source)
    processor = MobileViTImageProcessor.from_pretrained(source)
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    losses = []
    for _ in range(steps):
        loss = model(pixel_values=pixels, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        accuracy = float((model(pixel_values=pixels).logits.argmax(-1) == labels).float().mean())
    model.save_pretrained(target)
    processor.save_pretrained(target)
    (target / "all_results.json").write_text(json.dumps({"eval_accuracy": accuracy, "epoch": 1.0}))
    figure, axis = plt.subplots(figsize=(4, 3))
    axis.plot(range(1, steps + 1), losses, marker="o")
    axis.set_xlabel("step")
    axis.set_ylabel("training loss")
    figure.savefig(target / "training_history.png")
    plt.close(figure)
    (target / "training_args.bin").write_bytes(b"a pickle that must stay local")
    (target / "checkpoint-3").mkdir()
    (target / "checkpoint-3" / "optimizer.pt").write_bytes(b"not for the Hub")
    return losses


CLIENT = textwrap.dedent("""
    import json, sys
    import torch
    from huggingface_hub import snapshot_download
    import transformers
    import mobilevit
    from mobilevit import MobileViTForImageClassification, MobileViTImageProcessor
    from mobilevit.hub import push_to_hub

    folder, repo_id, pixels_file, out = sys.argv[1:5]
    push_to_hub(folder, repo_id)                       # a saved folder
    model = MobileViTForImageClassification.from_pretrained(folder)
    push_to_hub(model, repo_id + "-object")            # a model object: processor and card added
    snapshot = snapshot_download(repo_id)              # into the empty HF_HOME of this process
    model = MobileViTForImageClassification.from_pretrained(repo_id).eval()
    processor = MobileViTImageProcessor.from_pretrained(repo_id)
    with torch.no_grad():
        torch.save(model(pixel_values=torch.load(pixels_file, weights_only=True)).logits, out + ".pt")
    stock = transformers.pipeline("image-classification", model=repo_id)
    ours = mobilevit.pipeline(model=repo_id)
    with open(out + ".json", "w") as f:
        json.dump({"snapshot": snapshot, "processor": processor.to_dict(), "model_class": type(ours.model).__module__,
                   "stock_class": type(stock.model).__module__}, f)
""")



@pytest.fixture(scope="module")
def local_hub():
    with LocalHubServer() as server:
        yield server


def hub_env(server: LocalHubServer, home: Path) -> dict:
    env = dict(os.environ)
    env.update(HF_ENDPOINT=server.url, HF_HOME=str(home), HF_HUB_OFFLINE="0", TRANSFORMERS_OFFLINE="0",
               HF_HUB_DISABLE_TELEMETRY="1", HF_TOKEN="hf_local_test_token", NO_PROXY="127.0.0.1,localhost",
               PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parent.parent), env.get("PYTHONPATH", "")]))
    return env


@pytest.mark.slow  # ~40 s: a fresh interpreter imports torch + transformers, pushes twice and pulls
def test_push_then_pull_round_trip_is_byte_identical_with_equal_outputs(saved_classifier, local_hub, tmp_path):
    folder = tmp_path / "finetuned"
    folder.mkdir()
    losses = fine_tune_a_few_steps(saved_classifier, folder)
    pixels = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    torch.save(pixels, tmp_path / "pixels.pt")
    out = tmp_path / "pulled"
    result = subprocess.run([sys.executable, "-c", CLIENT, str(folder), REPO_ID, str(tmp_path / "pixels.pt"), str(out)],
                            env=hub_env(local_hub, tmp_path / "hf_home"), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]

    stored = local_hub.files(REPO_ID)
    # model, config, processor, card, metrics and curves went up; pickles and checkpoints stayed local
    assert sorted(stored) == ["README.md", "all_results.json", "config.json", "model.safetensors",
                              "preprocessor_config.json", "training_history.png"]
    for name, content in stored.items():
        if name != "README.md":  # the card is generated (the folder has none)
            assert content == (folder / name).read_bytes(), name
    info = json.loads(Path(f"{out}.json").read_text())
    snapshot = Path(info["snapshot"])
    assert str(snapshot).startswith(str(tmp_path / "hf_home"))  # a clean cache, not the user's
    assert sorted(p.name for p in snapshot.iterdir()) == sorted(stored)
    for name, content in stored.items():
        assert (snapshot / name).read_bytes() == content, name

    # the pulled model gives exactly the outputs of the pushed one
    model = MobileViTForImageClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        expected = model(pixel_values=pixels).logits
    torch.testing.assert_close(torch.load(f"{out}.pt", weights_only=True), expected, rtol=0, atol=0)
    # compared as JSON: the client wrote its processor through json.dump, which turns tuples into lists
    local_processor = json.loads(json.dumps(MobileViTImageProcessor.from_pretrained(folder).to_dict()))
    assert info["processor"] == local_processor
    assert info["model_class"] == "mobilevit.models.mobilevit.modeling_mobilevit"  # this package's class, not stock's
    assert info["stock_class"].startswith("transformers.")

    # the card says what the folder is
    card = stored["README.md"].decode()
    assert "pipeline_tag: image-classification" in card and "| variant | xx-small |" in card
    assert f"| parameters | {model.num_parameters():,} |" in card
    assert "| eval_accuracy |" in card and "![training curves](training_history.png)" in card
    assert "shortest edge to 96, center-crop 64x64" in card
    assert f'from_pretrained("{REPO_ID}")' in card and "@inproceedings{mehta2022mobilevit" in card
    assert len(losses) == 3 and all(np.isfinite(losses))

    # a model object goes up with a processor config and a card of its own
    pushed_object = local_hub.files(REPO_ID + "-object")
    assert sorted(pushed_object) == ["README.md", "config.json", "model.safetensors", "preprocessor_config.json"]
    assert f'from_pretrained("{REPO_ID}-object")' in pushed_object["README.md"].decode()


def test_an_existing_card_goes_up_naming_the_repository(saved_segmenter, tmp_path, monkeypatch):
    import shutil

    import huggingface_hub

    folder = tmp_path / "converted"
    shutil.copytree(saved_segmenter, folder)
    hub.write_model_card(folder, task="semantic-segmentation", variant="xx-small", num_parameters=1,
                         image_size=64, num_labels=4, notes="written by the converter")
    uploaded = {}

    class RecordingApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, **kwargs):
            pass

        def create_commit(self, repo_id, operations, **kwargs):
            uploaded.update({op.path_in_repo: op.path_or_fileobj for op in operations})
            return type("Info", (), {"commit_url": "u"})()

    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    hub.push_to_hub(folder, "me/seg")
    card = uploaded["README.md"].decode()
    assert "written by the converter" in card and 'from_pretrained("me/seg")' in card
    assert hub.LOCAL_FOLDER_PLACEHOLDER in (folder / "README.md").read_text()  # the folder is left as it was
    hub.push_to_hub(folder, "me/seg", regenerate_card=True)
    assert "written by the converter" not in uploaded["README.md"].decode()


def test_model_card_for_a_folder_without_training_results(saved_segmenter):
    card = hub.model_card_for_folder(saved_segmenter)
    assert "pipeline_tag: image-segmentation" in card and "| variant | xx-small |" in card
    assert "| classes | 4 |" in card and "Not measured" in card and "training curves" not in card
    assert "MobileViTForSemanticSegmentation.from_pretrained" in card


def test_push_rejects_bad_arguments_before_any_network_call(saved_classifier, tmp_path):
    with pytest.raises(ValueError, match="repo_id: expected a Hub repository name"):
        hub.push_to_hub(saved_classifier, "a/b/c")
    with pytest.raises(ValueError, match="folder: expected an existing model folder"):
        hub.push_to_hub(tmp_path / "missing", "user/x")
    with pytest.raises(ValueError, match="has no config.json"):
        hub.push_to_hub(tmp_path, "user/x")
    with pytest.raises(ValueError, match="image_processor: pass it only with a model object"):
        hub.push_to_hub(saved_classifier, "user/x", image_processor=MobileViTImageProcessor())
    with pytest.raises(TypeError, match="model_or_folder: expected a model folder or a model of this package"):
        hub.push_to_hub(42, "user/x")
    weightless = tmp_path / "weightless"
    weightless.mkdir()
    (weightless / "config.json").write_bytes((saved_classifier / "config.json").read_bytes())
    with pytest.raises(ValueError, match="expected safetensors weights"):
        hub.push_to_hub(weightless, "user/x")


def test_read_metrics_understands_both_layouts(tmp_path):
    assert hub.read_metrics(tmp_path) is None
    (tmp_path / "all_results.json").write_text(json.dumps({"eval_accuracy": 0.5, "epoch": 2.0, "note": "x"}))
    assert hub.read_metrics(tmp_path) == {"eval_accuracy": 0.5, "epoch": 2.0}
    (tmp_path / "metrics.json").write_text(json.dumps({"task": "image-classification", "train_seconds": 3.0,
                                                       "validation": {"accuracy": 0.7}, "test": {"accuracy": 0.6,
                                                                                                 "loss": 1.1}}))
    assert hub.read_metrics(tmp_path) == {"test accuracy": 0.6, "test loss": 1.1}  # metrics.json comes first


def test_card_quotes_the_folders_own_processor_sizes_and_output_stride(tmp_path):
    from mobilevit.hub import write_model_card

    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps({"size": {"shortest_edge": 64}, "crop_size": {"height": 64, "width": 64}}))
    (tmp_path / "config.json").write_text(json.dumps({"output_stride": 8}))
    card = write_model_card(tmp_path, task="semantic-segmentation", variant="xx-small", num_parameters=1,
                            image_size=64, num_labels=4).read_text()
    assert "resize the shortest edge to 64" in card and "1/8 of the input resolution" in card
    assert "(H/8, W/8)" in card and "to 96" not in card
