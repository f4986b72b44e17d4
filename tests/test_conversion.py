"""ml-cvnets -> Hub conversion: the six released layouts against ml-cvnets' own logits, every checkpoint form,
and every way a conversion must fail (clearly, leaving nothing behind)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from mobilevit import conversion
from mobilevit.conversion import ConversionError, convert_checkpoint, main
from mobilevit.conversion_utils import sha256_of_file, unwrap_state_dict
from mobilevit.models.mobilevit.conversion_mobilevit import RENAME_TABLE, rename_key
from mobilevit.labels import imagenet_1k_id2label, pascal_voc_id2label
from mobilevit import MobileViTForImageClassification, MobileViTForSemanticSegmentation
from mobilevit.testing_utils import shared_fixtures_dir, ssd_fixture_keys

REPO = Path(__file__).resolve().parent.parent
FIXTURES = shared_fixtures_dir()
NEEDS_FIXTURES = pytest.mark.skipif(
    FIXTURES is None, reason="../shared/fixtures/mlcvnets not found: the ml-cvnets reference checkpoints and logits "
                             "are needed (set $MOBILEVIT_FIXTURES to their folder)")
NAMES = ["mobilevit_xxs", "mobilevit_xs", "mobilevit_s",
         "deeplabv3_mobilevit_xxs", "deeplabv3_mobilevit_xs", "deeplabv3_mobilevit_s"]
VARIANT_OF = {"xxs": "xx-small", "xs": "x-small", "s": "small"}
ATOL = 1e-4


def is_segmentation(name: str) -> bool:
    return name.startswith("deeplabv3_")


@lru_cache(maxsize=None)
def mlcvnets_state_dict(name: str) -> dict[str, torch.Tensor]:
    """The fixture's deterministic weights, checked against the manifest (a fresh copy per call below)."""
    sys.path.insert(0, str(FIXTURES))
    import weights

    manifest = FIXTURES / f"{name}.json"
    sd = weights.state_dict(str(manifest))
    assert weights.check(str(manifest), sd), f"{name}: weights.py did not reproduce the fixture weights"
    return sd


def fresh_state_dict(name: str) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in mlcvnets_state_dict(name).items()}


def save_checkpoint(obj, path: Path) -> Path:
    torch.save(obj, path)
    return path


def convert_cli(checkpoint: Path, output_dir: Path, *extra: str) -> int:
    return main(["--checkpoint", str(checkpoint), "--output-dir", str(output_dir), "--no-progress", *extra])


def leftovers(parent: Path, output_dir: Path) -> list[str]:
    """Temporary folders a conversion into `output_dir` could have left in `parent`."""
    return [p.name for p in parent.iterdir() if p.name.startswith(f".{output_dir.name}.")]


def logits_of(model_class, folder: Path, pixel_values: torch.Tensor) -> torch.Tensor:
    model = model_class.from_pretrained(str(folder)).eval()
    with torch.inference_mode():
        return model(pixel_values=pixel_values).logits


# ---------------------------------------------------------------------------------------------------------
# The rename table on its own (no fixtures needed)
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("source, target", [
    ("conv_1.block.conv.weight", "mobilevit.conv_stem.convolution.weight"),
    ("encoder.conv_1.block.norm.running_var", "mobilevit.conv_stem.normalization.running_var"),
    ("layer_2.1.block.exp_1x1.block.norm.bias", "mobilevit.encoder.layer.1.layer.1.expand_1x1.normalization.bias"),
    ("layer_4.0.block.red_1x1.block.conv.weight",
     "mobilevit.encoder.layer.3.downsampling_layer.reduce_1x1.convolution.weight"),
    ("layer_3.1.local_rep.conv_3x3.block.conv.weight", "mobilevit.encoder.layer.2.conv_kxk.convolution.weight"),
    ("layer_5.1.global_rep.2.pre_norm_mha.1.qkv_proj.bias",
     "mobilevit.encoder.layer.4.transformer.layer.2.attention.attention.{qkv}.bias"),
    ("layer_5.1.global_rep.2.pre_norm_ffn.4.weight",
     "mobilevit.encoder.layer.4.transformer.layer.2.output.dense.weight"),
    ("layer_5.1.global_rep.3.bias", "mobilevit.encoder.layer.4.layernorm.bias"),
    ("classifier.fc.weight", "classifier.weight"),
    ("seg_head.aspp.aspp_layer.convs.4.aspp_pool.conv_1x1.block.norm.weight",
     "segmentation_head.aspp.convs.4.conv_1x1.normalization.weight"),
    ("seg_head.classifier.classifier.block.conv.bias", "segmentation_head.classifier.convolution.bias"),
    ("seg_head.classifier.block.conv.bias", "segmentation_head.classifier.convolution.bias"),  # cvnets >= v0.2
    ("layer_6.0.block.conv.weight", None),
    ("fc.weight", None),
])
def test_rename_key(source, target):
    assert rename_key(source) == target


def test_unwrap_forms_and_ambiguity():
    sd = {"conv_1.block.conv.weight": torch.zeros(1)}
    other = {"conv_1.block.conv.weight": torch.ones(1)}
    assert unwrap_state_dict(sd)[0] is not sd and unwrap_state_dict(sd)[1] == "bare state dict"
    assert unwrap_state_dict({"model": sd})[1] == "['model']"
    assert unwrap_state_dict({"model": {"state_dict": sd}})[1] == "['model'] -> ['state_dict']"
    both = {"model_state_dict": other, "ema_state_dict": sd, "epoch": 3}
    with pytest.raises(ConversionError, match="--weights model or --weights ema"):
        unwrap_state_dict(both)
    assert torch.equal(unwrap_state_dict(both, "ema")[0]["conv_1.block.conv.weight"], torch.zeros(1))
    assert torch.equal(unwrap_state_dict(both, "model")[0]["conv_1.block.conv.weight"], torch.ones(1))
    with pytest.raises(ConversionError, match="expected a state dict or a dict holding one"):
        unwrap_state_dict({"optimizer": {"lr": torch.zeros(1), "step": 1}})
    with pytest.raises(ConversionError, match="'ema' asked for"):
        unwrap_state_dict(sd, "ema")
    with pytest.raises(ConversionError, match="weights: expected"):
        unwrap_state_dict(sd, "best")


# ---------------------------------------------------------------------------------------------------------
# The six released layouts: convert, load with this package and with stock transformers, match ml-cvnets
# ---------------------------------------------------------------------------------------------------------
@NEEDS_FIXTURES
@pytest.mark.skipif(shared_fixtures_dir("mlcvnets_ssd") is None,
                    reason="../shared/fixtures/mlcvnets_ssd not found: the SSD rename rules cannot be checked")
def test_every_rename_rule_is_used_by_a_released_layout():
    keys = [k for name in NAMES for k, _, _ in json.loads((FIXTURES / f"{name}.json").read_text())["state_dict"]]
    keys += ssd_fixture_keys("ssdlite_mobilevit_")  # the SSD rules are used by the detectors' layout
    for pattern, template in RENAME_TABLE.rules:
        assert any(re.fullmatch(pattern, k) for k in keys), f"rule never used: {pattern} -> {template}"


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """Each fixture checkpoint saved as a .pt and converted once with the command line (in-process)."""
    if FIXTURES is None:
        pytest.skip("../shared/fixtures/mlcvnets not found")
    root = tmp_path_factory.mktemp("converted")
    folders = {}

    def get(name):
        if name not in folders:
            checkpoint = save_checkpoint(fresh_state_dict(name), root / f"{name}.pt")
            assert convert_cli(checkpoint, root / name) == 0
            folders[name] = root / name
        return folders[name]

    return get


@NEEDS_FIXTURES
@pytest.mark.parametrize("name", NAMES)
def test_converted_folder_matches_mlcvnets(name, converted):
    folder = converted(name)
    segmentation = is_segmentation(name)
    expected = load_file(str(FIXTURES / f"{name}.expected.safetensors"))
    reference = expected["logits_lowres" if segmentation else "logits"]
    ours = MobileViTForSemanticSegmentation if segmentation else MobileViTForImageClassification
    stock = (transformers.MobileViTForSemanticSegmentation if segmentation
             else transformers.MobileViTForImageClassification)
    for model_class in (ours, stock):
        logits = logits_of(model_class, folder, expected["pixel_values"])
        assert logits.shape == reference.shape
        assert (logits - reference).abs().max().item() <= ATOL, model_class
        if "pixel_values_odd" in expected:  # 250x310: ml-cvnets resizes feature maps to a multiple of the patch
            odd = logits_of(model_class, folder, expected["pixel_values_odd"])
            assert (odd - expected["logits_odd"]).abs().max().item() <= ATOL, model_class

    config = json.loads((folder / "config.json").read_text())
    labels = pascal_voc_id2label() if segmentation else imagenet_1k_id2label()
    assert config["id2label"] == {str(k): v for k, v in labels.items()}
    assert config["label2id"]["background" if segmentation else "tench, Tinca tinca"] == 0
    assert config["architectures"] == [ours.__name__] and config["model_type"] == "mobilevit"
    manifest = json.loads((FIXTURES / f"{name}.json").read_text())
    model = ours.from_pretrained(str(folder))
    assert model.config.variant == VARIANT_OF[name.rsplit("_", 1)[1]]
    assert sum(p.numel() for p in model.parameters()) == manifest["parameter_count"]

    processor = json.loads((folder / "preprocessor_config.json").read_text())
    size = 512 if segmentation else 256
    assert processor["crop_size"] == {"height": size, "width": size}
    assert processor["size"] == {"shortest_edge": size + 32}
    assert processor["do_flip_channel_order"] is True and processor.get("do_normalize") in (None, False)
    # ml-cvnets v0.1 read with OpenCV: BGR, bilinear without antialiasing
    assert processor["resample"] == 2 and processor["resize_antialias"] is False
    assert processor["image_mean"] == [0.5, 0.5, 0.5]  # stock transformers' default, written as stock writes it

    card = (folder / "README.md").read_text()
    sha = sha256_of_file(folder.parent / f"{name}.pt")
    assert sha in card and f"{manifest['parameter_count']:,}" in card and "BGR" in card and "mehta2022mobilevit" in card


# ---------------------------------------------------------------------------------------------------------
# The forms a checkpoint comes in all give the same folder
# ---------------------------------------------------------------------------------------------------------
@NEEDS_FIXTURES
def test_wrapped_prefixed_ema_and_safetensors_forms_give_the_same_folder(tmp_path, converted):
    name = "mobilevit_xxs"
    reference = load_file(str(converted(name) / "model.safetensors"))
    reference_config = json.loads((converted(name) / "config.json").read_text())
    sd = fresh_state_dict(name)
    decoy = {k: torch.zeros_like(v) for k, v in sd.items()}
    forms = {
        "model": ({"model": sd}, []),
        "state_dict": ({"state_dict": sd, "epoch": 300}, []),
        "ddp": ({f"module.{k}": v for k, v in sd.items()}, []),
        # an ml-cvnets training checkpoint: raw and EMA weights side by side, plus optimizer state
        "training_ema": ({"iterations": 10, "epoch": 1, "model_state_dict": decoy, "ema_state_dict": sd,
                          "optim_state_dict": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0]}]},
                          "best_metric": 0.5}, ["--weights", "ema"]),
        "model_ema": ({"model_ema": {f"module.{k}": v for k, v in sd.items()}}, []),
    }
    for form, (obj, extra) in forms.items():
        checkpoint = save_checkpoint(obj, tmp_path / f"{form}.pt")
        assert convert_cli(checkpoint, tmp_path / form, *extra) == 0, form
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "st.safetensors"))
    assert convert_cli(tmp_path / "st.safetensors", tmp_path / "safetensors") == 0
    for form in [*forms, "safetensors"]:
        tensors = load_file(str(tmp_path / form / "model.safetensors"))
        assert tensors.keys() == reference.keys(), form
        assert all(torch.equal(tensors[k], reference[k]) for k in reference), form
        assert json.loads((tmp_path / form / "config.json").read_text()) == reference_config, form


# ---------------------------------------------------------------------------------------------------------
# Failures: a clear message, and no output folder
# ---------------------------------------------------------------------------------------------------------
def broken_checkpoints(tmp_path: Path) -> dict[str, tuple[Path, list[str], str]]:
    good = fresh_state_dict("mobilevit_xxs")
    cases = {}
    full = save_checkpoint(good, tmp_path / "full.pt")
    (tmp_path / "truncated.pt").write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    cases["truncated"] = (tmp_path / "truncated.pt", [], "is a PyTorch zip checkpoint that cannot be read: the file "
                                                         "is truncated or corrupt")
    resnet = {"conv1.weight": torch.randn(64, 3, 7, 7), "bn1.weight": torch.ones(64), "bn1.bias": torch.zeros(64),
              "layer1.0.conv1.weight": torch.randn(64, 64, 3, 3), "fc.weight": torch.randn(1000, 512),
              "fc.bias": torch.zeros(1000)}
    cases["other architecture"] = (save_checkpoint(resnet, tmp_path / "resnet.pt"), [],
                                   "does not look like a checkpoint of a known layout (ml-cvnets MobileViT v1")
    missing = dict(good)
    del missing["layer_3.1.global_rep.0.pre_norm_ffn.1.bias"]
    cases["missing key"] = (save_checkpoint(missing, tmp_path / "missing.pt"), [],
                            "nothing in the checkpoint fills:\n  "
                            "mobilevit.encoder.layer.2.transformer.layer.0.intermediate.dense.bias")
    extra = dict(good, **{"layer_3.1.adapter.weight": torch.zeros(4)})
    cases["extra key"] = (save_checkpoint(extra, tmp_path / "extra.pt"), [],
                          "1 keys that no rename rule matches:\n  layer_3.1.adapter.weight")
    poisoned = dict(good)  # was "1 tensors differ after reloading": a NaN never equals itself
    first = next(key for key, tensor in good.items() if tensor.is_floating_point())
    poisoned[first] = good[first].clone().fill_(float("nan"))
    cases["nan weight"] = (save_checkpoint(poisoned, tmp_path / "nan.pt"), [],
                           f"checkpoint: 1 tensors hold NaN or infinity (e.g. {first})")
    cases["wrong variant"] = (full, ["--variant", "small"], "--variant small was given, but the checkpoint's "
                                                              "tensors are those of a xx-small model")
    cases["wrong task"] = (full, ["--task", "segmentation"], "--task semantic-segmentation was given")
    both = {"model_state_dict": good, "ema_state_dict": good}
    cases["ambiguous ema"] = (save_checkpoint(both, tmp_path / "both.pt"), [], "--weights model or --weights ema")
    return cases


USAGE_CASES = ("wrong variant", "wrong task", "ambiguous ema")


@NEEDS_FIXTURES
def test_bad_checkpoints_fail_clearly_and_leave_nothing(tmp_path, capsys):
    out_parent = tmp_path / "out"
    out_parent.mkdir()
    for case, (checkpoint, extra, message) in broken_checkpoints(tmp_path).items():
        output_dir = out_parent / case.replace(" ", "_")
        with pytest.raises(ConversionError) as info:
            convert_checkpoint(checkpoint, output_dir, progress=False,
                               **{a.lstrip("-"): v for a, v in zip(extra[::2], extra[1::2])})
        assert message in str(info.value), (case, str(info.value))
        assert not output_dir.exists() and not leftovers(out_parent, output_dir), case
        # the command line reports the same message; a contradicting option is a usage error (2), a checkpoint
        # that cannot be used a data error (1)
        assert convert_cli(checkpoint, output_dir, *extra) == (2 if case in USAGE_CASES else 1), case
        err = capsys.readouterr().err
        assert err.startswith("convert_mlcvnets_checkpoint: error: ") and message.splitlines()[0] in err, case
        assert not output_dir.exists() and not leftovers(out_parent, output_dir), case


@NEEDS_FIXTURES
def test_existing_folder_is_refused_unless_overwrite(tmp_path, capsys):
    checkpoint = save_checkpoint(fresh_state_dict("mobilevit_xxs"), tmp_path / "mobilevit_xxs.pt")
    output_dir = tmp_path / "mobilevit-xx-small"
    output_dir.mkdir()
    (output_dir / "keep.txt").write_text("mine")
    assert convert_cli(checkpoint, output_dir) == 1
    assert "which holds files (pass --overwrite to replace it)" in capsys.readouterr().err
    assert sorted(p.name for p in output_dir.iterdir()) == ["keep.txt"]
    assert convert_cli(checkpoint, output_dir, "--overwrite") == 0
    assert sorted(p.name for p in output_dir.iterdir()) == [
        "README.md", "config.json", "model.safetensors", "preprocessor_config.json"]
    assert not leftovers(tmp_path, output_dir)
    summary = capsys.readouterr().out
    assert "variant     xx-small" in summary and "311 checkpoint keys -> 347 model keys" in summary


@NEEDS_FIXTURES
def test_aux_head_is_dropped_on_purpose_and_missing_counters_are_filled(tmp_path):
    sd = fresh_state_dict("deeplabv3_mobilevit_xxs")
    aux = {"seg_head.aux_head.aux_projection.block.conv.weight": torch.randn(256, 64, 3, 3),
           "seg_head.aux_head.aux_projection.block.norm.weight": torch.ones(256),
           "seg_head.aux_head.aux_classifier.block.conv.weight": torch.randn(21, 256, 1, 1),
           "seg_head.aux_head.aux_classifier.block.conv.bias": torch.zeros(21)}
    sd = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")} | aux
    result = convert_checkpoint(save_checkpoint(sd, tmp_path / "aux.pt"), tmp_path / "out", progress=False)
    assert result.task == "semantic-segmentation" and result.variant == "xx-small"
    assert sorted(sum(result.dropped.values(), [])) == sorted(aux)
    assert result.filled_defaults and all(k.endswith("num_batches_tracked") for k in result.filled_defaults)
    assert "dropped     4 keys on purpose: auxiliary segmentation head" in result.summary()
    expected = load_file(str(FIXTURES / "deeplabv3_mobilevit_xxs.expected.safetensors"))
    logits = logits_of(MobileViTForSemanticSegmentation, tmp_path / "out", expected["pixel_values"])
    assert (logits - expected["logits_lowres"]).abs().max().item() <= ATOL


@NEEDS_FIXTURES
def test_a_fine_tuned_head_gets_generic_labels(tmp_path):
    sd = fresh_state_dict("mobilevit_xxs")
    sd["classifier.fc.weight"], sd["classifier.fc.bias"] = torch.randn(10, 320) * 0.05, torch.zeros(10)
    result = convert_checkpoint(save_checkpoint(sd, tmp_path / "ten.pt"), tmp_path / "out", progress=False)
    assert "10 classes, no known image-classification data set has that many" in result.labels
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["id2label"] == {str(i): f"LABEL_{i}" for i in range(10)}
    card = (tmp_path / "out" / "README.md").read_text()
    assert "| classes | 10 |" in card and "datasets:" not in card


@NEEDS_FIXTURES
def test_push_to_hub_uploads_the_finished_folder(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(conversion, "push_folder_to_hub",
                        lambda folder, repo_id, **kw: calls.append((Path(folder), repo_id, sorted(
                            p.name for p in Path(folder).iterdir()))) or f"https://hub.test/{repo_id}/commit/1")
    checkpoint = save_checkpoint(fresh_state_dict("mobilevit_xxs"), tmp_path / "mobilevit_xxs.pt")
    result = convert_checkpoint(checkpoint, tmp_path / "out", push_to_hub="me/mobilevit-xx-small", progress=False)
    assert calls == [(tmp_path / "out", "me/mobilevit-xx-small",
                      ["README.md", "config.json", "model.safetensors", "preprocessor_config.json"])]
    assert result.pushed_to.endswith("/commit/1")
    assert 'from_pretrained("me/mobilevit-xx-small")' in (tmp_path / "out" / "README.md").read_text()


@pytest.mark.slow  # a fresh interpreter importing torch and transformers: ~10 s of the fast suite's budget
@NEEDS_FIXTURES
def test_script_runs_as_a_real_command(tmp_path):
    checkpoint = save_checkpoint(fresh_state_dict("deeplabv3_mobilevit_xxs"), tmp_path / "deeplabv3_mobilevit_xxs.pt")
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    done = subprocess.run(
        [sys.executable, str(REPO / "conversion_scripts" / "convert_mlcvnets_checkpoint.py"),
         "--checkpoint", str(checkpoint), "--output-dir", str(tmp_path / "out"), "--no-progress"],
        capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "task        semantic-segmentation" in done.stdout and "variant     xx-small" in done.stdout
    expected = load_file(str(FIXTURES / "deeplabv3_mobilevit_xxs.expected.safetensors"))
    logits = logits_of(transformers.MobileViTForSemanticSegmentation, tmp_path / "out", expected["pixel_values"])
    assert (logits - expected["logits_lowres"]).abs().max().item() <= ATOL


def test_mobilevit_convert_subcommand_is_wired(capsys):
    from mobilevit.cli import main as cli_main

    with pytest.raises(SystemExit):
        cli_main(["convert", "--help"])
    out = capsys.readouterr().out
    assert "--checkpoint" in out and "--push-to-hub" in out and "--weights" in out


# ---------------------------------------------------------------------------------------------------------
# Checked before the checkpoint is read: the output never replaces the checkpoint; unreadable files are named
# without advice that would run a pickle's code; leftovers of a killed run are removed
# ---------------------------------------------------------------------------------------------------------
def _tiny_checkpoint(path: Path) -> Path:
    return save_checkpoint({"conv_1.block.conv.weight": torch.zeros(16, 3, 3, 3)}, path)


def test_the_checkpoints_own_folder_is_never_replaced(tmp_path, capsys):
    """`convert --checkpoint D/x.pt --output-dir D --overwrite` deleted the checkpoint."""
    checkpoint = _tiny_checkpoint(tmp_path / "ckpts" / "x.pt") if (tmp_path / "ckpts").mkdir() is None else None
    before = checkpoint.read_bytes()
    for output, message, code in [
        (tmp_path / "ckpts", "output_dir: expected a folder that does not hold the input checkpoint", 2),
        (tmp_path, "replacing it would delete that input", 2),
        (checkpoint, "output_dir: expected a folder, got", 1),
        (checkpoint / "out", "output_dir: expected a folder outside the input checkpoint", 2),
    ]:
        assert convert_cli(checkpoint, output, "--overwrite") == code, output
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert checkpoint.read_bytes() == before
    assert convert_cli(tmp_path / "ckpts", tmp_path / "out") == 1
    assert "checkpoint: expected an existing file, got" in capsys.readouterr().err


@pytest.mark.parametrize("option, message", [
    (["--variant", "huge"], "variant: expected a released size"),
    (["--task", "depth-estimation"], "task: expected one of"),
])
def test_bad_options_are_usage_errors_before_reading(tmp_path, capsys, option, message):
    checkpoint = tmp_path / "never-read.pt"
    checkpoint.write_bytes(b"not even a checkpoint")
    assert convert_cli(checkpoint, tmp_path / "out", *option) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "out").exists()


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


@pytest.mark.parametrize("content, message", [
    (os.urandom(4096), "is not a PyTorch checkpoint (neither a zip archive nor a pickle)"),
    (b"", "is empty"),
    (b"weights, honestly\n", "is not a PyTorch checkpoint"),
    (None, "holds Python objects other than tensors and plain containers (Trying to load unsupported GLOBAL "
           "posix.system whose module posix is blocked)"),
    ("module", "holds Python objects other than tensors and plain containers (Unsupported global: GLOBAL "
               "torch.nn.modules.linear.Linear)"),
])
def test_unreadable_checkpoints_never_get_advice_to_run_their_code(tmp_path, capsys, monkeypatch, content, message):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "file.pt"
    if content is None:
        torch.save({"model": _RunsCode()}, path)
    elif content == "module":  # a pickled model object instead of its state dict
        torch.save(torch.nn.Linear(2, 2), path)
    else:
        path.write_bytes(content)
    assert convert_cli(path, tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert "weights_only=False" not in err and "weights_only` set to `False" not in err
    assert "safe_globals" not in err and not (tmp_path / "pwned").exists()


@NEEDS_FIXTURES
def test_a_killed_conversions_staging_folder_is_removed_by_the_next_one(tmp_path):
    from mobilevit.file_utils import _host_id

    checkpoint = save_checkpoint(fresh_state_dict("mobilevit_xxs"), tmp_path / "mobilevit_xxs.pt")
    # what `mobilevit convert --output-dir out` leaves when SIGKILLed while writing (a process id that is gone)
    stale = tmp_path / f".out.mobilevit-{_host_id()}-{2 ** 22 + 99}-123456.k3j4h5.tmp"
    stale.mkdir()
    (stale / "config.json").write_text("{}")
    (stale / "model.safetensors").write_bytes(b"\0" * 100)
    assert convert_cli(checkpoint, tmp_path / "out") == 0
    assert not stale.exists() and not leftovers(tmp_path, tmp_path / "out")
