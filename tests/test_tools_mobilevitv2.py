"""Every tool takes a MobileViTv2 folder through the registry: pipelines (with v2's align_corners=True
post-processing), `mobilevit predict`, `mobilevit export`, `mobilevit benchmark`, `mobilevit train`
(fine-tuning and from scratch, both tasks, the multi-scale sampler) and model cards."""

import json
import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import transformers

import mobilevit
from mobilevit import MobileViTImageProcessor, MobileViTV2ForImageClassification, MobileViTV2ForSemanticSegmentation, auto
from mobilevit.cli import main as cli_main
from mobilevit.hub import model_card_for_folder


def test_pipelines_run_our_v2_classes_with_v2_post_processing(saved_v2_classifier, saved_v2_segmenter, photo):
    classify = mobilevit.pipeline(model=str(saved_v2_classifier))
    assert type(classify.model) is MobileViTV2ForImageClassification
    model, processor, _ = auto.load_model_and_processor(saved_v2_classifier)
    with torch.no_grad():
        probabilities = model(**processor(images=photo, return_tensors="pt")).logits.softmax(-1)[0]
    top = classify(photo, top_k=1)[0]
    assert top["label"] == model.config.id2label[int(probabilities.argmax())]
    assert top["score"] == pytest.approx(float(probabilities.max()), rel=1e-5)

    segment = mobilevit.pipeline(model=str(saved_v2_segmenter))
    assert type(segment.model) is MobileViTV2ForSemanticSegmentation
    assert segment.image_processor.logits_align_corners is True
    model, processor, _ = auto.load_model_and_processor(saved_v2_segmenter)
    with torch.no_grad():
        logits = model(**processor(images=photo, do_center_crop=False, return_tensors="pt")).logits  # the whole photo
    class_map = F.interpolate(logits, size=(photo.height, photo.width), mode="bilinear", align_corners=True)[0].argmax(0)
    annotations = segment(photo)
    assert len(annotations) >= 2, "the test model should predict more than one class on the photo"
    for annotation in annotations:
        class_id = model.config.label2id[annotation["label"]]
        np.testing.assert_array_equal(np.asarray(annotation["mask"]), (class_map == class_id).numpy().astype(np.uint8) * 255)


def test_folders_without_the_post_processing_option_get_their_familys(saved_v2_segmenter, saved_segmenter, tmp_path):
    """A v2 folder saved by stock transformers (no `logits_align_corners`) upsamples as ml-cvnets trained it; a v1
    folder keeps align_corners=False, as before the option existed."""
    stock = transformers.MobileViTV2ForSemanticSegmentation.from_pretrained(saved_v2_segmenter)
    stock.save_pretrained(tmp_path / "stock")
    transformers.MobileViTImageProcessor(size={"shortest_edge": 96}, crop_size={"height": 64, "width": 64}
                                         ).save_pretrained(tmp_path / "stock")
    assert "logits_align_corners" not in json.loads((tmp_path / "stock" / "preprocessor_config.json").read_text())
    _, processor, _ = auto.load_model_and_processor(tmp_path / "stock")
    assert processor.logits_align_corners is True and dict(processor.crop_size) == {"height": 64, "width": 64}
    _, processor, _ = auto.load_model_and_processor(saved_segmenter)
    assert processor.logits_align_corners is False
    assert MobileViTImageProcessor().logits_align_corners is None  # a processor made by hand: stock's False
    logits = torch.randn(1, 3, 4, 4)
    maps = [p.post_process_semantic_segmentation(logits, target_sizes=[(13, 13)])[0]
            for p in (MobileViTImageProcessor(), MobileViTImageProcessor(logits_align_corners=True))]
    expected = [F.interpolate(logits, size=(13, 13), mode="bilinear", align_corners=c)[0].argmax(0) for c in (False, True)]
    assert all(torch.equal(a, b) for a, b in zip(maps, expected))


def test_a_bgr_v2_folder_runs_as_it_says_and_the_package_says_so_once(stock_v2_folder, saved_v2_classifier, photo,
                                                                       caplog, monkeypatch):
    """A stock-converted MobileViTv2 folder flips to BGR: loading it (the registry, the pipeline) keeps the
    folder's settings and says once per folder, in one line, that ml-cvnets trained MobileViTv2 on RGB and how to
    switch."""
    monkeypatch.setattr(auto, "_CHANNEL_ORDER_NOTICES", set())
    with caplog.at_level(logging.WARNING, logger="mobilevit.auto"):
        model, processor, _ = auto.load_model_and_processor(stock_v2_folder)
        auto.load_model_and_processor(stock_v2_folder)
        auto.load_image_processor(f"{stock_v2_folder}/.")  # the same folder spelled otherwise
        classify = mobilevit.pipeline(model=str(stock_v2_folder))
    notices = [record.getMessage() for record in caplog.records if record.name == "mobilevit.auto"]
    assert len(notices) == 1 and "\n" not in notices[0], notices
    assert "its preprocessor_config.json feeds MobileViT v2 BGR pixels, but ml-cvnets v0.2 trained MobileViT v2 on RGB" \
        in notices[0]
    assert f"`mobilevit convert --fix-preprocessing {stock_v2_folder}`" in notices[0]
    assert "pass do_flip_channel_order=False to the processor" in notices[0]
    # the folder's settings, in the registry and the pipeline
    folder_settings = MobileViTImageProcessor(size={"shortest_edge": 96}, crop_size={"height": 64, "width": 64},
                                              do_flip_channel_order=True, resample=2)
    expected = folder_settings(photo, return_tensors="pt")["pixel_values"]
    assert torch.equal(processor(photo, return_tensors="pt")["pixel_values"], expected)
    assert torch.equal(classify.image_processor(photo, return_tensors="pt")["pixel_values"], expected)
    with torch.no_grad():
        probabilities = model(pixel_values=expected).logits.softmax(-1)[0]
    assert classify(photo, top_k=1)[0]["score"] == pytest.approx(float(probabilities.max()), rel=1e-5)
    # the documented argument switches without touching the folder; RGB folders (ours) say nothing
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mobilevit.auto"):
        switched = auto.load_image_processor(stock_v2_folder, do_flip_channel_order=False)
        auto.load_model_and_processor(saved_v2_classifier)
        auto.load_model_and_processor(stock_v2_folder)  # said already
    assert not caplog.records and switched.do_flip_channel_order is False
    assert torch.equal(switched(photo, return_tensors="pt")["pixel_values"], expected.flip(1))


def test_predict_on_a_bgr_v2_folder_uses_its_settings_and_says_so_in_one_line(stock_v2_folder, photo, tmp_path):
    """The command as a user runs it: the notice is one line on stderr, once, and the predictions are the folder's."""
    import os
    import subprocess
    import sys

    photo.save(tmp_path / "photo.png")
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    done = subprocess.run([sys.executable, "-m", "mobilevit", "predict", str(tmp_path / "photo.png"),
                           str(tmp_path / "photo.png"), "--model", str(stock_v2_folder), "--json", "--top-k", "3"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    notices = [line for line in done.stderr.splitlines() if "--fix-preprocessing" in line]
    assert len(notices) == 1 and notices[0].startswith(f"mobilevit: '{stock_v2_folder}': its preprocessor_config.json")
    model, processor, _ = auto.load_model_and_processor(stock_v2_folder)
    with torch.no_grad():
        pixel_values = processor(np.asarray(photo), input_data_format="channels_last", return_tensors="pt")["pixel_values"]
        probabilities = model(pixel_values=pixel_values).logits.softmax(-1)[0]
    predicted = json.loads(done.stdout)[0]["predictions"]
    assert [p["label"] for p in predicted] == [model.config.id2label[int(i)] for i in probabilities.argsort(descending=True)]
    assert predicted[0]["score"] == pytest.approx(float(probabilities.max()), rel=1e-4)


def test_predict_on_v2_folders(saved_v2_classifier, saved_v2_segmenter, photo, tmp_path, capsys):
    photo.save(tmp_path / "photo.jpg", quality=95)
    assert cli_main(["predict", str(tmp_path / "photo.jpg"), "--model", str(saved_v2_classifier), "--top-k", "2",
                     "--json"]) == 0
    predictions = json.loads(capsys.readouterr().out)[0]["predictions"]
    assert len(predictions) == 2 and {p["label"] for p in predictions} <= {"cat", "dog", "bird"}
    assert cli_main(["predict", str(tmp_path / "photo.jpg"), "--model", str(saved_v2_segmenter), "--output-dir",
                     str(tmp_path / "masks"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)[0]
    assert sorted(p.name for p in (tmp_path / "masks").iterdir()) == ["photo_mask.png", "photo_segmentation.png"]
    assert sum(a["percent"] for a in result["areas"]) == pytest.approx(100.0)


def test_model_card_names_the_family_and_its_paper(saved_v2_segmenter):
    card = model_card_for_folder(saved_v2_segmenter)
    assert "# MobileViT v2 (mobilevitv2-0.5) for semantic segmentation" in card
    assert "mehta2022separable" in card and "MobileViTV2ForSemanticSegmentation" in card
    assert "align_corners=True, as the checkpoints were trained" in card and "- mobilevitv2" in card


def test_benchmark_times_v2_against_stock_transformers(tmp_path, capsys):
    args = ["benchmark", "--variants", "mobilevitv2_050", "--batch-sizes", "1", "--image-size", "64", "--repeats",
            "2", "--warmup", "1", "--candidates", "mobilevit", "transformers", "--output", str(tmp_path),
            "--allocator", "default"]
    assert cli_main(args) == 0
    printed = capsys.readouterr().out
    assert "| mobilevit (this package) | mobilevitv2-0.5 |" in printed
    assert "| transformers (stock) | mobilevitv2-0.5 |" in printed
    rows = json.loads((tmp_path / "results.json").read_text())
    assert {r["candidate"] for r in rows} == {"mobilevit", "transformers"}
    assert all(r["params_m"] == pytest.approx(1.37, abs=0.01) and r["speedup"] > 0 for r in rows)


@pytest.mark.slow  # the dynamo exporter and ONNX Runtime: ~30 s
def test_onnx_export_of_a_v2_segmenter_matches_pytorch_at_two_sizes(saved_v2_segmenter, tmp_path):
    pytest.importorskip("onnxruntime")
    from mobilevit.export import ort_session

    output = tmp_path / "v2.onnx"  # the export itself checks 256x256 and 250x310 (odd: the block resize)
    assert cli_main(["export", "--format", "onnx", "--model", str(saved_v2_segmenter), "--output", str(output)]) == 0
    model = auto.load_model(saved_v2_segmenter).eval()
    session = ort_session(output, threads=2)
    generator = torch.Generator().manual_seed(0)
    for shape in [(1, 3, 64, 64), (2, 3, 98, 130)]:
        pixel_values = torch.rand(*shape, generator=generator)
        with torch.no_grad():
            expected = model(pixel_values).logits
        (got,) = session.run(None, {"pixel_values": pixel_values.numpy()})
        assert expected.abs().max() > 0.1 and got.shape == tuple(expected.shape)
        torch.testing.assert_close(torch.from_numpy(got), expected, atol=1e-4, rtol=0)


@pytest.mark.slow  # two short training runs: ~1 min
def test_train_fine_tunes_a_v2_folder_and_trains_v2_from_scratch(saved_v2_classifier, tmp_path):
    from mobilevit.training.demo_data import SHAPES_LABELS, load_digits_dataset, load_shapes_dataset

    digits = load_digits_dataset(image_size=32)
    digits = type(digits)({"train": digits["train"].select(range(192)), "validation": digits["validation"].select(range(48))})
    digits.save_to_disk(str(tmp_path / "digits"))
    code = cli_main(["train", "--task", "classification", "--data", str(tmp_path / "digits"), "--model",
                     str(saved_v2_classifier), "--output-dir", str(tmp_path / "fine-tuned"), "--multi-scale",
                     "--multi-scale-range", "32,48", "--epochs", "2", "--batch-size", "16", "--image-size", "32",
                     "--eval-resize", "32"])
    assert code == 0
    model = auto.load_model(tmp_path / "fine-tuned")
    assert type(model) is MobileViTV2ForImageClassification and model.config.num_labels == 10
    metrics = json.loads((tmp_path / "fine-tuned" / "metrics.json").read_text())
    assert metrics["training"]["multi_scale"] is True and metrics["training"]["variant"] == "mobilevitv2-0.5"

    shapes = load_shapes_dataset(image_size=48, num_train=64, num_val=16, num_test=0)
    shapes.pop("test")
    shapes.save_to_disk(str(tmp_path / "shapes"))
    code = cli_main(["train", "--task", "segmentation", "--data", str(tmp_path / "shapes"), "--variant",
                     "mobilevitv2_050", "--labels", ",".join(SHAPES_LABELS), "--output-dir", str(tmp_path / "scratch"),
                     "--epochs", "2", "--batch-size", "16", "--image-size", "48", "--eval-resize", "48"])
    assert code == 0
    model, processor, task = auto.load_model_and_processor(tmp_path / "scratch")
    assert type(model) is MobileViTV2ForSemanticSegmentation and task == "semantic-segmentation"
    assert processor.logits_align_corners is True and model.config.id2label[3] == "triangle"
    assert processor.do_flip_channel_order is False and processor.resample == 3  # trained on RGB, as ml-cvnets v0.2
    history = json.loads((tmp_path / "scratch" / "metrics.json").read_text())["history"]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
