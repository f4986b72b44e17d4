"""ml-cvnets MobileViTv2 -> Hub conversion against ml-cvnets' own outputs (../shared/fixtures/mlcvnets_v2):
every fixture in the plain and the fast path, what the converter reads off the tensors, the release recipe
it fills in, and stock transformers on the converted folders (equal for classification at 256, not for
DeepLabV3, whose block convs it does not dilate)."""

from __future__ import annotations

import importlib.util
import json
import re
from functools import lru_cache
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import load_file

from mobilevit import MobileViTV2ForImageClassification, MobileViTV2ForSemanticSegmentation, auto
from mobilevit.conversion import convert_checkpoint, main
from mobilevit.conversion_utils import sha256_of_file
from mobilevit.labels import ade20k_id2label, imagenet_1k_id2label, pascal_voc_id2label
from mobilevit.models.mobilevitv2.conversion_mobilevitv2 import RENAME_TABLE, rename_key
from mobilevit.testing_utils import shared_fixtures_dir, ssd_fixture_keys

FIXTURES = shared_fixtures_dir("mlcvnets_v2")
NEEDS_FIXTURES = pytest.mark.skipif(
    FIXTURES is None, reason="../shared/fixtures/mlcvnets_v2 not found: the ml-cvnets MobileViTv2 reference weights "
                             "and outputs are needed")
# the default run converts the two smallest; CI's slow run does every fixture
FAST_NAMES = ["mobilevitv2_050", "deeplabv3_mobilevitv2_050_voc"]
SLOW_NAMES = ["mobilevitv2_100", "mobilevitv2_200", "deeplabv3_mobilevitv2_100_voc", "deeplabv3_mobilevitv2_100_ade20k"]
NAMES = FAST_NAMES + SLOW_NAMES
ATOL = 1e-4


def is_segmentation(name: str) -> bool:
    return name.startswith("deeplabv3_")


@lru_cache(maxsize=None)
def _weights_module():
    # by path and under its own name: v1's fixtures have a different weights.py
    spec = importlib.util.spec_from_file_location("mlcvnets_v2_weights", FIXTURES / "weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@lru_cache(maxsize=None)
def _mlcvnets_state_dict(name: str) -> dict[str, torch.Tensor]:
    weights, manifest = _weights_module(), str(FIXTURES / f"{name}.json")
    sd = weights.state_dict(manifest)
    assert weights.check(manifest, sd), f"{name}: weights.py did not reproduce the fixture weights"
    return sd


def fresh_state_dict(name: str) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in _mlcvnets_state_dict(name).items()}


def convert_cli(checkpoint: Path, output_dir: Path, *extra: str) -> int:
    return main(["--checkpoint", str(checkpoint), "--output-dir", str(output_dir), "--no-progress", *extra])


def logits_of(model, pixel_values: torch.Tensor, fast: bool = True) -> torch.Tensor:
    model.set_fast_inference(fast) if hasattr(model, "set_fast_inference") else None
    with torch.inference_mode():
        return model(pixel_values=pixel_values).logits


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """Each fixture checkpoint saved as a .pt and converted once with the command line (in-process)."""
    if FIXTURES is None:
        pytest.skip("../shared/fixtures/mlcvnets_v2 not found")
    root = tmp_path_factory.mktemp("converted_v2")
    folders = {}

    def get(name):
        if name not in folders:
            torch.save(fresh_state_dict(name), root / f"{name}.pt")
            assert convert_cli(root / f"{name}.pt", root / name) == 0
            folders[name] = root / name
        return folders[name]

    return get


# ---------------------------------------------------------------------------------------------------------
# The rename table and the family detection
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("source, target", [
    ("conv_1.block.norm.running_var", "mobilevitv2.conv_stem.normalization.running_var"),
    ("encoder.layer_2.1.block.exp_1x1.block.conv.weight",
     "mobilevitv2.encoder.layer.1.layer.1.expand_1x1.convolution.weight"),
    ("layer_5.0.block.conv_3x3.block.norm.bias", "mobilevitv2.encoder.layer.4.downsampling_layer.conv_3x3.normalization.bias"),
    ("layer_3.1.local_rep.0.block.conv.weight", "mobilevitv2.encoder.layer.2.conv_kxk.convolution.weight"),
    ("layer_3.1.local_rep.1.block.conv.weight", "mobilevitv2.encoder.layer.2.conv_1x1.convolution.weight"),
    ("layer_4.1.global_rep.3.pre_norm_attn.0.weight", "mobilevitv2.encoder.layer.3.transformer.layer.3.layernorm_before.weight"),
    ("layer_4.1.global_rep.3.pre_norm_attn.1.qkv_proj.block.conv.bias",
     "mobilevitv2.encoder.layer.3.transformer.layer.3.attention.qkv_proj.convolution.bias"),
    ("layer_4.1.global_rep.0.pre_norm_ffn.3.block.conv.weight",
     "mobilevitv2.encoder.layer.3.transformer.layer.0.ffn.conv2.convolution.weight"),
    ("layer_4.1.global_rep.4.bias", "mobilevitv2.encoder.layer.3.layernorm.bias"),
    ("layer_5.1.conv_proj.block.norm.weight", "mobilevitv2.encoder.layer.4.conv_projection.normalization.weight"),
    ("classifier.1.weight", "classifier.weight"),
    ("seg_head.aspp.aspp_layer.convs.4.aspp_pool.conv_1x1.block.conv.weight",
     "segmentation_head.aspp.convs.4.conv_1x1.convolution.weight"),
    ("seg_head.classifier.block.conv.bias", "segmentation_head.classifier.convolution.bias"),
    ("layer_3.1.local_rep.conv_3x3.block.conv.weight", None),  # v1's naming
    ("classifier.fc.weight", None),
])
def test_rename_key(source, target):
    assert rename_key(source) == target


@NEEDS_FIXTURES
@pytest.mark.skipif(shared_fixtures_dir("mlcvnets_ssd") is None,
                    reason="../shared/fixtures/mlcvnets_ssd not found: the SSD rename rules cannot be checked")
def test_every_rename_rule_is_used_and_every_key_has_a_rule_or_a_reason():
    keys = [k for name in NAMES for k, _, _ in json.loads((FIXTURES / f"{name}.json").read_text())["state_dict"]]
    keys += ssd_fixture_keys("ssdlite_mobilevitv2_")  # the SSD rules are used by the detectors' layout
    for pattern, template in RENAME_TABLE.rules:
        assert any(re.fullmatch(pattern, k) for k in keys), f"rule never used: {pattern} -> {template}"
    assert all(rename_key(k) or RENAME_TABLE.drop_reason(k) for k in keys)


@NEEDS_FIXTURES
def test_the_registry_tells_v1_from_v2_checkpoints():
    v1 = shared_fixtures_dir("mlcvnets")
    v2_keys = {k: torch.zeros(1) for k, _, _ in json.loads((FIXTURES / "deeplabv3_mobilevitv2_050_voc.json").read_text())["state_dict"]}
    assert auto.family_for_checkpoint(v2_keys).model_type == "mobilevitv2"
    if v1 is not None:
        v1_keys = {k: torch.zeros(1) for k, _, _ in json.loads((v1 / "mobilevit_xxs.json").read_text())["state_dict"]}
        assert auto.family_for_checkpoint(v1_keys).model_type == "mobilevit"


# ---------------------------------------------------------------------------------------------------------
# Every fixture: convert, then our plain and fast paths against ml-cvnets
# ---------------------------------------------------------------------------------------------------------
def _check_against_mlcvnets(name, converted):
    folder = converted(name)
    segmentation = is_segmentation(name)
    expected = load_file(str(FIXTURES / f"{name}.expected.safetensors"))
    reference = expected["logits_lowres" if segmentation else "logits"]
    cls = MobileViTV2ForSemanticSegmentation if segmentation else MobileViTV2ForImageClassification
    model = cls.from_pretrained(str(folder)).eval()
    for fast in (False, True):
        logits = logits_of(model, expected["pixel_values"], fast)
        assert logits.shape == reference.shape
        assert (logits - reference).abs().max().item() <= ATOL, (name, fast)
        if "pixel_values_odd" in expected:  # 250x310: layer_3's block resizes 32x39 to 32x40, align_corners=True
            odd = logits_of(model, expected["pixel_values_odd"], fast)
            assert (odd - expected["logits_odd"]).abs().max().item() <= ATOL, (name, fast)
        if segmentation and "logits" in expected:  # ml-cvnets' own full-resolution output
            full = F.interpolate(logits, size=expected["logits"].shape[-2:], mode="bilinear", align_corners=True)
            assert (full - expected["logits"]).abs().max().item() <= ATOL, (name, fast)

    manifest = json.loads((FIXTURES / f"{name}.json").read_text())
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "mobilevitv2" and config["architectures"] == [cls.__name__]
    assert model.config.width_multiplier == manifest["options"]["model.classification.mitv2.width_multiplier"]
    assert model.num_parameters() == manifest.get("parameter_count_without_aux_head", manifest["parameter_count"])
    size = manifest["image_size"]
    processor = json.loads((folder / "preprocessor_config.json").read_text())
    assert processor["crop_size"] == {"height": size, "width": size}
    if segmentation:  # ml-cvnets v0.2's VOC / ADE20k yaml: resize to [512, 512], no crop
        assert processor["size"] == {"height": size, "width": size} and processor["do_center_crop"] is False
    else:  # ImageNet: shortest edge 288, centre crop 256
        assert processor["size"] == {"shortest_edge": size + 32} and processor["do_center_crop"] is True
    # v0.2 reads with Pillow: RGB, bicubic (antialiased)
    assert processor["do_flip_channel_order"] is False and processor["logits_align_corners"] is True
    assert processor["resample"] == 3 and processor["resize_antialias"] is True
    assert "**RGB**" in (folder / "README.md").read_text()
    card = (folder / "README.md").read_text()
    assert sha256_of_file(folder.parent / f"{name}.pt") in card and "mehta2022separable" in card
    assert f"{model.num_parameters():,}" in card
    assert ("align_corners=True, as the checkpoints were trained" in card) == segmentation
    if segmentation:
        options = manifest["options"]
        assert config["output_stride"] == options["model.segmentation.output_stride"]
        assert config["atrous_rates"] == options["model.segmentation.deeplabv3.aspp_rates"]
        assert config["aspp_out_channels"] == options["model.segmentation.deeplabv3.aspp_out_channels"]
    labels = {1000: imagenet_1k_id2label(), 21: pascal_voc_id2label(), 150: ade20k_id2label()}[manifest["num_classes"]]
    assert config["id2label"] == {str(k): v for k, v in labels.items()}


@NEEDS_FIXTURES
@pytest.mark.parametrize("name", FAST_NAMES)
def test_converted_folder_matches_mlcvnets(name, converted):
    _check_against_mlcvnets(name, converted)


@pytest.mark.slow  # the wider models: ~1 min together on 2 cores
@NEEDS_FIXTURES
@pytest.mark.parametrize("name", SLOW_NAMES)
def test_converted_folder_matches_mlcvnets_wider_models(name, converted):
    _check_against_mlcvnets(name, converted)


@NEEDS_FIXTURES
def test_stock_transformers_on_the_converted_folders(converted):
    """docs/mobilevitv2.md's numbers: stock equals ml-cvnets for classification at 256, not at an odd size, and not for
    DeepLabV3 (it does not dilate the block's depthwise conv)."""
    expected = load_file(str(FIXTURES / "mobilevitv2_050.expected.safetensors"))
    stock = transformers.MobileViTV2ForImageClassification.from_pretrained(str(converted("mobilevitv2_050"))).eval()
    assert (logits_of(stock, expected["pixel_values"]) - expected["logits"]).abs().max().item() <= ATOL
    assert (logits_of(stock, expected["pixel_values_odd"]) - expected["logits_odd"]).abs().max().item() > 0.2
    expected = load_file(str(FIXTURES / "deeplabv3_mobilevitv2_050_voc.expected.safetensors"))
    stock, info = transformers.MobileViTV2ForSemanticSegmentation.from_pretrained(
        str(converted("deeplabv3_mobilevitv2_050_voc")), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert (logits_of(stock.eval(), expected["pixel_values"]) - expected["logits_lowres"]).abs().max().item() > 1.0


# ---------------------------------------------------------------------------------------------------------
# What the tensors say, what the release recipe adds, and the forms a checkpoint comes in
# ---------------------------------------------------------------------------------------------------------
@NEEDS_FIXTURES
def test_aux_head_is_dropped_and_reported(converted, capsys):
    checkpoint = converted("deeplabv3_mobilevitv2_050_voc").parent / "deeplabv3_mobilevitv2_050_voc.pt"
    result = convert_checkpoint(checkpoint, checkpoint.parent / "again", progress=False)
    aux = [k for k in fresh_state_dict("deeplabv3_mobilevitv2_050_voc") if k.startswith("seg_head.aux_head.")]
    assert len(aux) == 8 and sorted(sum(result.dropped.values(), [])) == sorted(aux)
    summary = result.summary()
    assert "dropped     8 keys on purpose: auxiliary segmentation head" in summary
    assert "family      MobileViT v2 (mobilevitv2)" in summary and "variant     mobilevitv2-0.5" in summary
    assert "resolution  512x512, output stride 16" in summary and "pascal-voc (21 classes)" in summary


@NEEDS_FIXTURES
def test_ade20k_recipe_and_151_classes_with_background(tmp_path):
    """150 classes (ml-cvnets v0.2) get output stride 8 and ADE20k's names; a 151-class head (background kept)
    gets "background" first. --output-stride overrides the recipe."""
    sd = fresh_state_dict("deeplabv3_mobilevitv2_100_ade20k")
    torch.save(sd, tmp_path / "ade.pt")
    result = convert_checkpoint(tmp_path / "ade.pt", tmp_path / "ade150", progress=False, output_stride=16)
    config = json.loads((tmp_path / "ade150" / "config.json").read_text())
    assert (config["output_stride"], config["atrous_rates"]) == (16, [12, 24, 36]) and result.output_stride == 16
    assert config["id2label"]["0"] == "wall" and len(config["id2label"]) == 150
    for key in ("seg_head.classifier.block.conv", "seg_head.aux_head.2.block.conv"):
        sd[f"{key}.weight"] = torch.cat([0.05 * torch.randn_like(sd[f"{key}.weight"][:1]), sd[f"{key}.weight"]])
        sd[f"{key}.bias"] = torch.cat([torch.zeros(1), sd[f"{key}.bias"]])
    torch.save(sd, tmp_path / "ade151.pt")
    result = convert_checkpoint(tmp_path / "ade151.pt", tmp_path / "ade151", progress=False)
    config = json.loads((tmp_path / "ade151" / "config.json").read_text())
    assert (config["output_stride"], len(config["id2label"])) == (8, 151) and result.output_stride == 8
    assert config["id2label"]["0"] == "background" and config["id2label"]["1"] == "wall"
    assert "ade20k-with-background (151 classes)" in result.labels


@NEEDS_FIXTURES
def test_wrapped_ddp_and_ema_forms_give_the_same_folder(tmp_path, converted):
    name = "mobilevitv2_050"
    reference = load_file(str(converted(name) / "model.safetensors"))
    sd = fresh_state_dict(name)
    decoy = {k: torch.zeros_like(v) for k, v in sd.items()}
    forms = {
        "ddp": ({f"module.{k}": v for k, v in sd.items()}, []),
        "training_ema": ({"epoch": 1, "model_state_dict": decoy, "ema_state_dict": sd}, ["--weights", "ema"]),
        "model_ema": ({"model_ema": {f"module.{k}": v for k, v in sd.items()}}, []),
    }
    for form, (obj, extra) in forms.items():
        torch.save(obj, tmp_path / f"{form}.pt")
        assert convert_cli(tmp_path / f"{form}.pt", tmp_path / form, *extra) == 0, form
        tensors = load_file(str(tmp_path / form / "model.safetensors"))
        assert tensors.keys() == reference.keys() and all(torch.equal(tensors[k], reference[k]) for k in reference), form


@NEEDS_FIXTURES
def test_384_release_and_contradictions_fail_clearly(tmp_path, converted, capsys):
    checkpoint = converted("mobilevitv2_050").parent / "mobilevitv2_050.pt"
    assert convert_cli(checkpoint, tmp_path / "384", "--image-size", "384", "--variant", "mobilevitv2_050") == 0
    processor = json.loads((tmp_path / "384" / "preprocessor_config.json").read_text())
    # the 384 fine-tuning recipe (finetune_higher_res_in1k/mobilevit_v2.yaml): shortest edge 384, crop 384
    assert processor["crop_size"] == {"height": 384, "width": 384} and processor["size"] == {"shortest_edge": 384}
    assert "| resolution | 384x384 |" in (tmp_path / "384" / "README.md").read_text()
    cases = [(["--variant", "mobilevitv2-1.0"], "--variant mobilevitv2-1.0 was given, but the checkpoint's tensors "
                                                 "are those of a mobilevitv2-0.5 model"),
             (["--variant", "small"], "variant: expected one of"),
             (["--output-stride", "16"], "output_stride: only segmentation checkpoints have one"),
             (["--image-size", "16"], "image_size: expected an integer from 32 to 8192")]
    for extra, message in cases:
        with pytest.raises(ValueError, match=re.escape(message)):  # ConversionError, or the variant's ValueError
            convert_checkpoint(checkpoint, tmp_path / "bad", progress=False,
                               **{extra[0].lstrip("-").replace("-", "_"): int(extra[1]) if extra[1].isdigit() else extra[1]})
        assert convert_cli(checkpoint, tmp_path / "bad", *extra) == 2
        assert message in capsys.readouterr().err and not (tmp_path / "bad").exists()


@NEEDS_FIXTURES
def test_push_to_hub_uploads_the_finished_v2_folder(tmp_path, converted, monkeypatch):
    from mobilevit import conversion

    calls = []
    monkeypatch.setattr(conversion, "push_folder_to_hub", lambda folder, repo_id, **kw: calls.append(
        (repo_id, sorted(p.name for p in Path(folder).iterdir()), kw["commit_message"])) or f"https://hub.test/{repo_id}/1")
    checkpoint = converted("mobilevitv2_050").parent / "mobilevitv2_050.pt"
    result = convert_checkpoint(checkpoint, tmp_path / "out", push_to_hub="me/mobilevitv2-0.5", progress=False)
    assert calls == [("me/mobilevitv2-0.5", ["README.md", "config.json", "model.safetensors", "preprocessor_config.json"],
                      "Add MobileViT v2 mobilevitv2-0.5 (image-classification) converted from mobilevitv2_050.pt")]
    assert result.pushed_to.endswith("/1")
    assert 'from_pretrained("me/mobilevitv2-0.5")' in (tmp_path / "out" / "README.md").read_text()


# ---------------------------------------------------------------------------------------------------------
# `mobilevit convert --fix-preprocessing FOLDER`: a folder converted by stock transformers (BGR, bilinear) gets
# ml-cvnets v0.2's channel order and resampling; nothing else in its preprocessor_config.json changes
# ---------------------------------------------------------------------------------------------------------
def fix_cli(*args) -> int:
    from mobilevit.cli import main as cli_main

    return cli_main(["convert", "--fix-preprocessing", *map(str, args)])


def test_fix_preprocessing_changes_the_channel_order_and_resampling_only(stock_v2_folder, capsys, caplog):
    path = stock_v2_folder / "preprocessor_config.json"
    before = json.loads(path.read_text())
    assert before["do_flip_channel_order"] is True and before["resample"] == 2
    assert fix_cli(stock_v2_folder) == 0
    printed = capsys.readouterr().out
    assert f"{stock_v2_folder}: preprocessor_config.json now reads pixels as ml-cvnets v0.2: RGB, Pillow bicubic" in printed
    for line in ("do_flip_channel_order: True -> False", "resample: 2 -> 3", "resize_antialias: False -> True"):
        assert line in printed
    after = json.loads(path.read_text())
    assert after == dict(before, do_flip_channel_order=False, resample=3, resize_antialias=True)
    assert not [p for p in stock_v2_folder.iterdir() if p.name.startswith(".")]  # no temporary file left
    with caplog.at_level("WARNING", logger="mobilevit.auto"):
        _, processor, _ = auto.load_model_and_processor(stock_v2_folder)
    assert not caplog.records  # RGB now: no notice
    assert dict(processor.size) == {"shortest_edge": 96} and processor.do_reduce_labels is True  # kept
    assert processor.setting("do_flip_channel_order") is False and processor.resample == 3
    # a second run finds nothing to do and leaves the file alone
    written = path.stat().st_mtime_ns, path.read_bytes()
    assert fix_cli(stock_v2_folder) == 0
    assert "already reads pixels as ml-cvnets v0.2: RGB, Pillow bicubic; nothing changed" in capsys.readouterr().out
    assert (path.stat().st_mtime_ns, path.read_bytes()) == written


def test_fix_preprocessing_of_legacy_and_missing_configs(stock_v2_folder, saved_classifier, capsys):
    path = stock_v2_folder / "preprocessor_config.json"
    path.write_text(json.dumps({"crop_size": 64, "do_flip_channels": True, "size": 96,
                                "feature_extractor_type": "MobileViTFeatureExtractor"}))
    assert fix_cli(stock_v2_folder) == 0
    fixed = json.loads(path.read_text())
    assert "do_flip_channels" not in fixed and fixed["do_flip_channel_order"] is False and fixed["size"] == 96
    path.unlink()  # no processor config at all: the family's whole evaluation preprocessing
    assert fix_cli(stock_v2_folder) == 0 and "preprocessor_config.json: 'absent' -> 'written whole'" in capsys.readouterr().out
    assert json.loads(path.read_text())["resample"] == 3
    assert fix_cli(saved_classifier) == 0  # a v1 folder is BGR and bilinear already
    assert "ml-cvnets v0.1: BGR, OpenCV bilinear; nothing changed" in capsys.readouterr().out


def test_fix_preprocessing_replaces_the_file_whole_or_not_at_all(stock_v2_folder, monkeypatch, capsys):
    import os

    path = stock_v2_folder / "preprocessor_config.json"
    before, files = path.read_bytes(), sorted(p.name for p in stock_v2_folder.iterdir())

    def interrupted(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", interrupted)
    assert fix_cli(stock_v2_folder) == 1
    err = capsys.readouterr().err
    assert "could not be written ([Errno 28] No space left on device); the old file is unchanged" in err
    assert path.read_bytes() == before
    assert sorted(p.name for p in stock_v2_folder.iterdir()) == files  # the temporary file is gone too


@pytest.mark.parametrize("args, code, message", [
    (["{missing}"], 1, "fix_preprocessing: expected a model folder, got '{missing}', which does not exist"),
    (["{file}"], 1, "which is a file"),
    (["{empty}"], 1, "is not a saved model folder (it has no config.json)"),
    (["{folder}", "--checkpoint", "x.pt"], 2, "--fix-preprocessing: expected a model folder alone"),
])
def test_fix_preprocessing_refuses_what_it_cannot_fix(stock_v2_folder, tmp_path, capsys, args, code, message):
    (tmp_path / "file.json").write_text("{}")
    (tmp_path / "empty").mkdir()
    names = {"missing": tmp_path / "missing", "file": tmp_path / "file.json", "empty": tmp_path / "empty",
             "folder": stock_v2_folder}
    args = [a.format(**names) for a in args]
    assert fix_cli(*args) == code
    err = capsys.readouterr().err
    assert message.format(**names) in err and len(err.strip().splitlines()) == 1, err
    (stock_v2_folder / "preprocessor_config.json").write_text('{"size": -5}')
    assert fix_cli(stock_v2_folder) == 1
    assert "cannot be read (size: expected a positive int" in capsys.readouterr().err


def test_convert_needs_a_checkpoint_and_an_output_unless_fixing(capsys):
    from mobilevit.cli import main as cli_main

    assert cli_main(["convert", "--output-dir", "somewhere"]) == 2
    assert "--checkpoint: expected a value (or --fix-preprocessing FOLDER alone)" in capsys.readouterr().err
