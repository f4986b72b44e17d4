"""Runtimes for predict and the pipelines: PyTorch, and exported artefacts in ONNX Runtime and OpenVINO from a cache
that is rebuilt when it cannot be trusted."""

import json
import shutil

import pytest
import torch

from mobilevit import auto, runtimes
from mobilevit.errors import MissingDependencyError
from mobilevit.runtimes import RuntimeChoiceError, cache_key, cache_root, cached_artefact, entry_problem, load_runtime
from mobilevit.testing_utils import fill_realistic_weights_


@pytest.fixture(scope="module")
def small():
    config = auto.new_config("xx-small", "image-classification", num_labels=3, image_size=64)
    model = fill_realistic_weights_(auto.new_model(config, "image-classification"), seed=5).eval()
    return model, auto.image_processor_for(config)


@pytest.fixture
def counted_exports(monkeypatch):
    """`export_model` replaced by a stand-in that writes a small artefact and its sidecar, counting its calls: the
    cache's bookkeeping without minutes of real exports (a real one is in the slow tests below)."""
    calls = []

    def fake_export(model, fmt, output, precision="fp32", *, size=None, dynamic_size=False, processor=None, **kw):
        from mobilevit.export import FORMATS

        calls.append((fmt, size, dynamic_size))
        for path in (output, *FORMATS[fmt].companion_paths(output)):
            path.write_bytes(b"artefact " * 1000 + str(len(calls)).encode())
        sidecar = {"format": fmt, "input": {"shape": ["batch", 3, "height", "width"]}}
        output.with_name(output.name + ".json").write_text(json.dumps(sidecar))
        return sidecar

    import mobilevit.export

    monkeypatch.setattr(mobilevit.export, "export_model", fake_export)
    return calls


def test_the_cache_is_reused_and_rebuilt_when_it_cannot_be_trusted(small, counted_exports, tmp_path):
    model, processor = small
    log = []
    entry, _ = cached_artefact(model, "onnx", None, processor=processor, cache=tmp_path, log=log.append)
    assert entry.parent == tmp_path / "runtimes" and entry.name.startswith("mobilevit-onnx-fp32-any-")
    assert sorted(p.name for p in entry.iterdir()) == ["manifest.json", "model.onnx", "model.onnx.json"]
    assert cached_artefact(model, "onnx", None, cache=tmp_path)[0] == entry and len(counted_exports) == 1

    # a truncated artefact (a killed copy, a full disk): rebuilt, never used
    artefact = entry / "model.onnx"
    artefact.write_bytes(artefact.read_bytes()[:100])
    assert "holds a model.onnx that differs from its manifest" in entry_problem(entry, cache_key(model, "onnx", None))
    assert cached_artefact(model, "onnx", None, cache=tmp_path, log=log.append)[0] == entry
    assert len(counted_exports) == 2 and any("exporting it again" in line for line in log)
    assert entry_problem(entry, cache_key(model, "onnx", None)) is None

    # an entry without its manifest (the export was killed before the end) and one with an unreadable manifest
    for breakage in (lambda: (entry / "manifest.json").unlink(), lambda: (entry / "manifest.json").write_text("{")):
        breakage()
        cached_artefact(model, "onnx", None, cache=tmp_path)
    assert len(counted_exports) == 4

    # changed weights: another entry (the old one stays valid for the old weights)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    try:
        changed, _ = cached_artefact(model, "onnx", None, cache=tmp_path)
    finally:
        with torch.no_grad():
            next(model.parameters()).sub_(1.0)
    assert changed != entry and len(counted_exports) == 5
    # other sizes and formats have entries of their own
    entry, _ = cached_artefact(model, "openvino", (64, 64), cache=tmp_path)
    assert entry.name.startswith("mobilevit-openvino-fp32-64x64-")
    assert counted_exports[-1] == ("openvino", (64, 64), False)


def test_the_cache_lives_under_the_hugging_face_cache_unless_told(monkeypatch, tmp_path):
    monkeypatch.delenv(runtimes.CACHE_ENV, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import importlib

    import huggingface_hub.constants

    importlib.reload(huggingface_hub.constants)
    try:
        assert cache_root() == tmp_path / "hf" / "mobilevit"
        monkeypatch.setenv(runtimes.CACHE_ENV, str(tmp_path / "mine"))
        assert cache_root() == tmp_path / "mine"
    finally:
        monkeypatch.undo()
        importlib.reload(huggingface_hub.constants)


def test_a_missing_runtime_package_names_the_extra(small, monkeypatch):
    import mobilevit.errors

    real = mobilevit.errors.importlib.import_module

    def without_openvino(name, *args):
        if name.split(".")[0] == "openvino":
            raise ImportError("No module named 'openvino'")
        return real(name, *args)

    monkeypatch.setattr(mobilevit.errors.importlib, "import_module", without_openvino)
    with pytest.raises(MissingDependencyError) as caught:
        load_runtime("openvino", *small)
    message = str(caught.value)
    assert "\n" not in message and "--runtime openvino needs the Python package 'openvino'" in message
    assert 'pip install "mobilevit[openvino]"' in message
    with pytest.raises(RuntimeChoiceError, match="--runtime: expected one of pytorch, onnxruntime, openvino, got 'tvm"):
        load_runtime("tvm", *small)


def test_the_pytorch_runtime_returns_the_models_outputs(small):
    model, processor = small
    runtime = load_runtime("pytorch", model, processor)
    pixel_values = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        expected = model(pixel_values).logits
    assert torch.equal(runtime(pixel_values)["logits"], expected)


@pytest.mark.slow
def test_predict_with_each_runtime_matches_pytorch(saved_classifier, saved_segmenter, tmp_path, photo, monkeypatch,
                                                   capsys):
    """`mobilevit predict --runtime`: ONNX Runtime on classification (labels and scores within 1e-4 of PyTorch's),
    OpenVINO on segmentation of photos of two sizes in one artefact (converted from the dynamic ONNX graph; masks
    as PyTorch's). Two real exports into the cache, then both runs again from it."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("openvino")
    import numpy as np
    from PIL import Image

    from mobilevit import cli

    monkeypatch.setenv(runtimes.CACHE_ENV, str(tmp_path / "cache"))
    photos = tmp_path / "photos"
    photos.mkdir()
    photo.save(photos / "wide.png")
    photo.resize((80, 120)).save(photos / "tall.png")

    def predict(*argv):
        code = cli.main(["predict", str(photos), *map(str, argv)])
        out, err = capsys.readouterr()
        assert code == 0, err
        return out, err

    expected = json.loads(predict("--model", saved_classifier, "--json")[0])
    for attempt in range(2):  # exported, then found in the cache
        out, err = predict("--model", saved_classifier, "--json", "--runtime", "onnxruntime")
        assert ("exporting the model to ONNX" in err) == (attempt == 0)
        for got, want in zip(json.loads(out), expected):
            assert [p["label"] for p in got["predictions"]] == [p["label"] for p in want["predictions"]]
            assert max(abs(g["score"] - w["score"]) for g, w in zip(got["predictions"], want["predictions"])) <= 1e-4
    predict("--model", saved_segmenter, "--output-dir", tmp_path / "pytorch")
    for attempt in range(2):
        _, err = predict("--model", saved_segmenter, "--runtime", "openvino", "--output-dir", tmp_path / "openvino",
                         "--overwrite")
        assert ("exporting the model to OpenVINO (every size)" in err) == (attempt == 0)
        for image in ("wide", "tall"):
            mask = np.asarray(Image.open(tmp_path / "openvino" / f"{image}_mask.png"))
            reference = np.asarray(Image.open(tmp_path / "pytorch" / f"{image}_mask.png"))
            assert mask.shape == reference.shape and (mask == reference).mean() > 0.999
    assert len(list((tmp_path / "cache" / "runtimes").iterdir())) == 2


@pytest.mark.slow
def test_predict_detection_with_openvino_matches_pytorch(saved_detector, tmp_path, photo, monkeypatch, capsys):
    """A detector through `mobilevit predict --runtime openvino`: its IR at the processor's size with a free batch
    (photos of three sizes squashed into batches of 2 and 1), the same detections as PyTorch's, scores within 1e-4
    and boxes within 0.02 px (they are written rounded to 0.01 px)."""
    pytest.importorskip("openvino")
    import numpy as np

    from mobilevit import cli

    monkeypatch.setenv(runtimes.CACHE_ENV, str(tmp_path / "cache"))
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, size in enumerate([(160, 107), (96, 128), (80, 80)]):
        photo.resize(size).save(photos / f"img{i}.png")

    def predict(*argv):
        output = tmp_path / "_".join(argv)
        code = cli.main(["predict", str(photos), "--model", str(saved_detector), "--threshold", "0.2",
                         "--batch-size", "2", "--output-dir", str(output), *argv])
        err = capsys.readouterr().err
        assert code == 0, err
        return [json.loads(line) for line in (output / "predictions.jsonl").read_text().splitlines()], err

    expected, _ = predict("--runtime", "pytorch")
    got, err = predict("--runtime", "openvino")
    assert "exporting the model to OpenVINO (64x64)" in err and "openvino artefact" in err
    assert sum(len(r["detections"]) for r in expected) > 3
    for result, reference in zip(got, expected):
        assert [d["label"] for d in result["detections"]] == [d["label"] for d in reference["detections"]]
        np.testing.assert_allclose([d["score"] for d in result["detections"]],
                                   [d["score"] for d in reference["detections"]], atol=1e-4)
        np.testing.assert_allclose([list(d["box"].values()) for d in result["detections"]],
                                   [list(d["box"].values()) for d in reference["detections"]], atol=0.02)
