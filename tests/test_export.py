"""`mobilevit export`: arguments checked before any work, outputs written whole, the export-only forms equal to
the plain path, and an ONNX file with dynamic batch and size that ONNX Runtime runs like PyTorch.
Per-format exports (minutes each) are in tests/test_export_formats.py (slow)."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from mobilevit import auto, export_mode
from mobilevit.cli import main as cli_main
from mobilevit.testing_utils import fill_realistic_weights_


def save_model(folder, task="image-classification", image_size=64, **overrides):
    config = auto.new_config("xx-small", task, num_labels=4, image_size=image_size, **overrides)
    model = fill_realistic_weights_(auto.new_model(config, task)).eval()
    model.save_pretrained(folder)
    auto.image_processor_for(config).save_pretrained(folder)
    return model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("export") / "model"
    save_model(folder)
    return folder


# ---------------------------------------------------------------------------------------------------------
# The export-only forms (mobilevit/export_mode.py) equal the plain path
# ---------------------------------------------------------------------------------------------------------
def test_explicit_attention_equals_sdpa():
    q, k, v = (torch.randn(2, 4, 64, 16) for _ in range(3))
    expected = F.scaled_dot_product_attention(q, k, v)
    with export_mode.exporting(nn.Identity(), fixed_size=True):
        got = export_mode.attention(q, k, v)
    torch.testing.assert_close(got, expected, atol=2e-6, rtol=0)
    assert export_mode.attention(q, k, v).equal(expected)  # outside an export: SDPA itself


def test_explicit_layer_norm_equals_layer_norm_and_is_put_back():
    model = nn.Sequential(nn.Linear(8, 24), nn.LayerNorm(24, eps=1e-5))
    with torch.no_grad():
        model[1].weight.uniform_(0.5, 1.5)
        model[1].bias.uniform_(-0.5, 0.5)
    hidden = torch.randn(3, 10, 8) * 4
    expected = model(hidden)
    with export_mode.exporting(model, fixed_size=True, explicit_layer_norm=True):
        assert isinstance(model[1], export_mode.ExplicitLayerNorm)
        got = model(hidden)
    assert type(model[1]) is nn.LayerNorm
    torch.testing.assert_close(got, expected, atol=5e-6, rtol=0)


def test_explicit_group_norm_and_sum_equal_the_plain_ones():
    model = nn.Sequential(nn.Conv2d(3, 16, 1), nn.GroupNorm(1, 16, eps=1e-5))
    with torch.no_grad():
        model[1].weight.uniform_(0.5, 1.5)
        model[1].bias.uniform_(-0.5, 0.5)
    features = torch.randn(2, 3, 6, 10) * 4
    expected, expected_sum = model(features), features.sum(dim=-1, keepdim=True)
    with export_mode.exporting(model, fixed_size=True, explicit_layer_norm=True):
        assert isinstance(model[1], export_mode.ExplicitGroupNorm)
        got, got_sum = model(features), export_mode.sum_last(features)
    assert type(model[1]) is nn.GroupNorm
    torch.testing.assert_close(got, expected, atol=5e-6, rtol=0)
    torch.testing.assert_close(got_sum, expected_sum, atol=1e-5, rtol=0)


@pytest.mark.parametrize("variant", ["xx-small", "mobilevitv2-0.5"])
def test_whole_model_in_export_forms_matches_plain_path(variant):
    config = auto.new_config(variant, "image-classification", num_labels=5)
    model = fill_realistic_weights_(auto.new_model(config, "image-classification")).eval()
    model.set_fast_inference(False)
    pixel_values = torch.rand(2, 3, 96, 96)
    with torch.no_grad():
        expected = model(pixel_values).logits
        with export_mode.exporting(model, fixed_size=True, explicit_layer_norm=True):
            got = model(pixel_values).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_fixed_size_exports_resize_only_where_needed():
    with export_mode.exporting(nn.Identity(), fixed_size=True):
        program = torch.export.export(_Block(), (torch.rand(1, 4, 8, 8),))
    assert not [n for n in program.graph.nodes if "upsample" in str(n.target)]
    program = torch.export.export(_Block(), (torch.rand(1, 4, 8, 8),))  # not ours: the safe default
    assert [n for n in program.graph.nodes if "upsample" in str(n.target)]


class _Block(nn.Module):
    def forward(self, features):
        size = tuple(features.shape[-2:])
        if export_mode.must_resize(size, size):
            features = F.interpolate(features, size=size, mode="bilinear", align_corners=False)
        return features * 2


# ---------------------------------------------------------------------------------------------------------
# Arguments checked before any work, one line each
# ---------------------------------------------------------------------------------------------------------
def export_cli(*args):
    return cli_main(["export", *map(str, args)])


@pytest.mark.parametrize("args, output_name, code, words", [
    (["--format", "onnx", "--quantize", "fp16"], "m.onnx", 2, ["--quantize", "ONNX exports int8", "'fp16'"]),
    (["--format", "litert", "--quantize", "fp16"], "m.tflite", 2, ["--quantize", "LiteRT exports int8", "'fp16'"]),
    (["--format", "executorch"], "m.onnx", 2, ["--output", "ending in .pte"]),
    (["--format", "onnx", "--quantize", "int8"], "m.onnx", 2, ["--calibration-data", "calibrate"]),
    (["--format", "onnx", "--calibration-size", "0"], "m.onnx", 2, ["--calibration-size", "a positive integer", "0"]),
    (["--format", "onnx", "--image-size", "16"], "m.onnx", 2, ["--image-size", "from 32 to 8192"]),
    (["--format", "onnx", "--threads", "0"], "m.onnx", 2, ["--threads"]),
])
def test_wrong_arguments_are_one_line_usage_errors(model_dir, tmp_path, capsys, args, output_name, code, words):
    assert export_cli(*args, "--model", model_dir, "--output", tmp_path / output_name) == code
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("mobilevit export: error: ")
    for word in words:
        assert word in err
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_output_inside_or_equal_to_an_input_is_refused(model_dir, tmp_path, capsys):
    assert export_cli("--format", "onnx", "--model", model_dir, "--output", model_dir / "model.onnx") == 2
    assert "inside or equal to the input --model" in capsys.readouterr().err
    assert not (model_dir / "model.onnx").exists()
    data = tmp_path / "photos.onnx"  # a data folder whose name looks like an output
    data.mkdir()
    assert export_cli("--format", "onnx", "--model", model_dir, "--output", data, "--eval-data", data) == 2
    assert "is a folder" in capsys.readouterr().err


def test_folder_where_a_file_is_wanted(model_dir, tmp_path, capsys):
    (tmp_path / "model.pte").mkdir()
    assert export_cli("--format", "executorch", "--model", model_dir, "--output", tmp_path / "model.pte",
                      "--overwrite") == 2
    assert "is a folder; it cannot be replaced by the file this run writes" in capsys.readouterr().err


def test_missing_model_folder_and_missing_parent(tmp_path, capsys):
    assert export_cli("--format", "onnx", "--model", tmp_path / "nosuch", "--output", tmp_path / "m.onnx") == 1
    assert "--model: expected an existing folder" in capsys.readouterr().err
    assert export_cli("--format", "onnx", "--model", tmp_path, "--output", tmp_path / "no" / "m.onnx") == 2
    assert "does not exist" in capsys.readouterr().err


def test_missing_extra_is_one_line_naming_it(model_dir, tmp_path, capsys, monkeypatch):
    from mobilevit.export import FORMATS

    monkeypatch.setattr(FORMATS["coreml"], "modules", ("no_such_module_for_the_test",))
    assert export_cli("--format", "coreml", "--model", model_dir, "--output", tmp_path / "m.mlpackage") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'pip install "mobilevit[coreml]"' in err


def test_format_is_required_so_no_default_needs_an_extra(capsys):
    with pytest.raises(SystemExit) as exit_info:
        export_cli("--model", "m", "--output", "m.onnx")
    assert exit_info.value.code == 2
    assert "--format" in capsys.readouterr().err


def test_truncated_weights_are_one_line(tmp_path, capsys):
    folder = tmp_path / "model"
    save_model(folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    capsys.readouterr()
    assert export_cli("--format", "onnx", "--model", folder, "--output", tmp_path / "m.onnx") == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--model: cannot load the model" in err
    assert not (tmp_path / "m.onnx").exists()


def test_mismatched_widths_are_one_line(tmp_path, capsys):
    folder = tmp_path / "model"
    save_model(folder)
    config = json.loads((folder / "config.json").read_text())
    config["hidden_sizes"] = [h + 8 for h in config["hidden_sizes"]]
    (folder / "config.json").write_text(json.dumps(config))
    capsys.readouterr()
    assert export_cli("--format", "onnx", "--model", folder, "--output", tmp_path / "m.onnx") == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--model: cannot load the model" in err
    assert "the weights do not fit config.json" in err and "by the config" in err


# ---------------------------------------------------------------------------------------------------------
# Outputs written whole
# ---------------------------------------------------------------------------------------------------------
def test_a_killed_export_leaves_only_a_staging_folder_that_the_next_run_removes(tmp_path):
    target = tmp_path / "model.onnx"
    script = textwrap.dedent(f"""
        import pathlib, sys, time
        from mobilevit.file_utils import StagedOutputs
        target = pathlib.Path({str(target)!r})
        staged = StagedOutputs([target, target.with_name(target.name + ".json")])
        staged.path(target).write_bytes(b"")  # the half-written artefact
        print(staged.folder, flush=True)
        time.sleep(60)
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    folder = child.stdout.readline().strip()
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert folder and not target.exists()  # no 0-byte file at the output
    assert [p.name for p in tmp_path.iterdir()] == [os.path.basename(folder)]

    from mobilevit.file_utils import remove_abandoned_leftovers

    assert [p.name for p in remove_abandoned_leftovers([target])] == [os.path.basename(folder)]
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------------------
# ONNX, end to end (the one format whose extra the dev install and the fast suite have)
# ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def exported(model_dir):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    output = model_dir.parent / "model.onnx"
    assert export_cli("--format", "onnx", "--model", model_dir, "--output", output) == 0
    return auto.load_model(model_dir).eval(), output


def test_onnx_matches_pytorch_at_other_sizes(exported):
    from mobilevit.export import ort_session

    model, output = exported
    session = ort_session(output, threads=2)
    generator = torch.Generator().manual_seed(0)
    for shape in [(1, 3, 256, 256), (3, 3, 130, 98)]:  # another batch and an odd size than the export's checks
        pixel_values = torch.rand(*shape, generator=generator)
        with torch.no_grad():
            expected = model(pixel_values).logits
        (got,) = session.run(None, {"pixel_values": pixel_values.numpy()})
        assert expected.abs().max() > 0.1  # logits at a real scale, so 1e-4 is a meaningful tolerance
        torch.testing.assert_close(torch.from_numpy(got), expected, atol=1e-4, rtol=0)


def test_onnx_sidecar_states_preprocessing_and_the_check(exported):
    model, output = exported
    sidecar = json.loads(output.with_name(output.name + ".json").read_text())
    assert sidecar["format"] == "onnx" and sidecar["precision"] == "fp32" and sidecar["task"] == "image-classification"
    assert sidecar["input"]["shape"] == ["batch", 3, "height", "width"]
    assert sidecar["preprocessing"]["channel_order"] == "BGR"
    assert sidecar["preprocessing"]["rescale_factor"] == pytest.approx(1 / 255)
    assert sidecar["preprocessing"]["center_crop"] == {"height": 64, "width": 64}
    assert sidecar["id2label"] == {str(k): v for k, v in model.config.id2label.items()}
    comparisons = sidecar["check"]["comparisons"]
    assert [c["inputs"] for c in comparisons] == ["6 photos at 64x64", "2 photos at 250x310"]
    assert all(c["max_abs_error"] <= 1e-4 for c in comparisons)
    assert sidecar["size_bytes"] == output.stat().st_size


def test_refuses_to_overwrite(exported, capsys):
    _, output = exported
    before = output.stat().st_mtime_ns
    assert export_cli("--format", "onnx", "--model", output.parent / "model", "--output", output) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert output.stat().st_mtime_ns == before
    assert not [p for p in output.parent.iterdir() if p.name.endswith(".tmp")]  # no half-written leftovers


# ---------------------------------------------------------------------------------------------------------
# Labelled data is read against the model's classes, by name (issue 27)
# ---------------------------------------------------------------------------------------------------------
def _photo_folder(root, names, per_class=2):
    import numpy as np
    from PIL import Image

    for k, name in enumerate(names):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(np.full((40, 40, 3), 40 * k + i, np.uint8)).save(root / name / f"{i}.png")
    return root


def test_eval_data_holding_some_of_the_models_classes_is_measured_by_name(tmp_path):
    """A folder holding a subset of the classes got ids from its own order: accuracy 0.0000."""
    from mobilevit.export.common import ExportError
    from mobilevit.export.data import read_split

    id2label = {0: "cat", 1: "dog", 2: "eel", 3: "fox"}
    data = _photo_folder(tmp_path / "subset", ["dog", "fox"])
    images = read_split(data, "train", "--eval-data", labelled=True, task="image-classification", id2label=id2label,
                        model="'m'")
    assert [label for _, labels in images.batches(3) for label in labels] == [1, 1, 3, 3]
    _photo_folder(tmp_path / "extra", ["dog", "gnu"])
    with pytest.raises(ExportError, match=r"--eval-data .*extra'\[train\]: holds the class 'gnu', which the model 'm' "
                                          r"lacks \(its classes: 'cat', 'dog', 'eel', 'fox'\)"):
        read_split(tmp_path / "extra", "train", "--eval-data", labelled=True, task="image-classification",
                   id2label=id2label, model="'m'")


# ---------------------------------------------------------------------------------------------------------
# Detectors: the graph ends at scores and decoded boxes; anchors are a constant in a fixed-size graph
# ---------------------------------------------------------------------------------------------------------
def test_detector_graph_ends_at_scores_and_corner_boxes():
    from mobilevit.export.common import MainOutputs
    from mobilevit.ssd import center_to_corners

    config = auto.new_config("xx-small", "object-detection", num_labels=4, image_size=64)
    model = fill_realistic_weights_(auto.new_model(config, "object-detection")).eval()
    graph = MainOutputs(model).eval()
    assert graph.output_names() == ["scores", "boxes"]
    assert graph.dynamic_example_size((64, 64)) == (288, 288)  # no 1x1 level but the global one when traced
    pixel_values = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        scores, boxes = graph(pixel_values)
        outputs = model(pixel_values)
    torch.testing.assert_close(scores, outputs.logits.softmax(-1))
    torch.testing.assert_close(boxes, center_to_corners(outputs.pred_boxes))
    with torch.no_grad(), export_mode.exporting(graph, fixed_size=True):
        program = torch.export.export(graph, (pixel_values[:1],), strict=False)
    operators = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert not [op for op in operators if "arange" in op or "expand" in op]  # the anchors are one lifted constant
    assert len(program.constants) == 1 and next(iter(program.constants.values())).shape == (142, 4)


def test_onnxruntime_quantizers_advice_stays_off_the_screen(caplog):
    """int8 ONNX printed 'WARNING:root:Please consider to run pre-processing before quantization' twice."""
    import logging

    from mobilevit.export.common import quiet_exporters

    def logged_from(filename: str, message: str):  # a `logging.warning` call made from that file
        exec(compile(f"import logging\nlogging.warning({message!r})", filename, "exec"), {})

    with quiet_exporters():
        logged_from("/site-packages/onnxruntime/quantization/quantize.py", "Please consider to run pre-processing")
        logged_from("/site-packages/somewhere/else.py", "a warning of another library")
    assert [record.getMessage() for record in caplog.records] == ["a warning of another library"]
    assert not logging.getLogger().filters
