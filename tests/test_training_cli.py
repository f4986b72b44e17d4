"""`mobilevit train` on the command line: bad input fails before training, outputs are never clobbered, and
the same command under torchrun (2 processes, gloo on CPU) trains with DDP and writes one loadable folder."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mobilevit.cli import main

REPO = Path(__file__).resolve().parent.parent


def _image_folder(root: Path, per_class: int = 8) -> Path:
    rng = np.random.default_rng(0)
    for name, colour in (("red", (220, 30, 30)), ("blue", (30, 30, 220))):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.clip(np.array(colour) + rng.normal(0, 20, (36, 36, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def test_batch_size_zero_is_refused_before_training(tmp_path, capsys):
    code = main(["train", "--data", str(_image_folder(tmp_path / "data")), "--batch-size", "0",
                 "--output-dir", str(tmp_path / "out")])
    assert code == 2
    assert "batch_size: expected a positive integer, got 0" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_non_empty_output_dir_is_refused_without_overwrite(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    code = main(["train", "--data", str(_image_folder(tmp_path / "data")), "--output-dir", str(out)])
    assert code == 1 and "--overwrite" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "precious"


def test_folder_without_images_is_refused(tmp_path, capsys):
    (tmp_path / "data" / "cat").mkdir(parents=True)
    code = main(["train", "--data", str(tmp_path / "data"), "--output-dir", str(tmp_path / "out")])
    assert code == 1 and "found no images" in capsys.readouterr().err


@pytest.mark.slow
def test_torchrun_two_processes_train_one_loadable_model(tmp_path):
    data, out = _image_folder(tmp_path / "data"), tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
               "-m", "mobilevit", "train", "--data", str(data), "--epochs", "1", "--batch-size", "4",
               "--image-size", "32", "--multi-scale-range", "32,64", "--output-dir", str(out)]
    completed = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["training"]["world_size"] == 2 and metrics["training"]["multi_scale"] is True
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "out"]  # one output, no leftovers

    from transformers import pipeline

    from mobilevit import MobileViTForImageClassification
    from mobilevit import MobileViTImageProcessor

    model = MobileViTForImageClassification.from_pretrained(out)
    processor = MobileViTImageProcessor.from_pretrained(out)
    classifier = pipeline("image-classification", model=model, image_processor=processor, device="cpu")
    prediction = classifier(Image.open(data / "red" / "0.png"), top_k=2)
    assert {p["label"] for p in prediction} == {"red", "blue"}


# -- every argument checked before anything is written; outputs never touch inputs ---------------------------------
from mobilevit.errors import EXIT_DATA, EXIT_USAGE


def _train(capsys, *argv) -> tuple[int, str]:
    code = main(["train", *map(str, argv)])
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.startswith("mobilevit train: error: ")]
    assert "Traceback" not in err and (code == 0 or len(lines) == 1), err
    return code, lines[0] if lines else ""


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("layout, message", [
    (("data", "data"), "output_dir: expected a folder other than the input data, got the same path"),
    (("data", "data/out"), "output_dir: expected a folder outside the input data"),
    (("data/red", "data"), "output_dir: expected a folder that does not hold the input data"),
    (("out.partial", "out"), "output_dir (its checkpoint folder): expected a folder other than the input data"),
])
def test_an_output_that_would_touch_the_data_is_refused_even_with_overwrite(tmp_path, capsys, monkeypatch, layout,
                                                                            message):
    """`train --data D --output-dir D --overwrite` deleted the training images."""
    monkeypatch.chdir(tmp_path)
    data_dir, output_dir = layout
    _image_folder(tmp_path / Path(data_dir).parts[0])
    before = _snapshot(tmp_path)
    code, line = _train(capsys, "--data", data_dir, "--output-dir", output_dir, "--overwrite")
    assert code == EXIT_USAGE and message in line
    assert _snapshot(tmp_path) == before  # nothing deleted, nothing written


@pytest.mark.parametrize("argv, message", [
    (["--image-size", "31"], "image_size: expected at least 32 (the network downsamples 32x), got 31"),
    (["--threads", "0"], "threads: expected a positive integer, got 0"),
    (["--crop-scale", "0,2"], "crop_scale: expected MIN,MAX with 0 < MIN <= MAX <= 1, got (0.0, 2.0)"),
    (["--multi-scale-range", "16,64"], "multi_scale_range: expected MIN,MAX with 32 <= MIN <= MAX, got 16,64"),
    (["--flip-prob", "1.5"], "flip_prob: expected a probability in [0, 1], got 1.5"),
    (["--num-workers", "-1"], "num_workers: expected an integer >= 0, got -1"),
    (["--variant", "huge"], "variant: expected a released size"),
    (["--task", "depth-estimation"], "task: expected one of"),
    (["--labels", "a,a"], "labels: expected distinct class names, got 'a' more than once"),
])
def test_bad_arguments_stop_before_anything_is_written(tmp_path, capsys, argv, message):
    data = _image_folder(tmp_path / "data")
    code, line = _train(capsys, "--data", data, "--output-dir", tmp_path / "out", *argv)
    assert code == EXIT_USAGE and message in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no out/, no out.partial/


@pytest.mark.parametrize("argv, message", [
    (["--model", "nowhere"], "model: expected a local checkpoint folder (config.json + model.safetensors), got "
                             "'nowhere', which is not there"),
    (["--resume", "nowhere/checkpoint-3"], "resume: expected a whole checkpoint folder (checkpoint-<step>), got "
                                           "'nowhere/checkpoint-3': not a folder"),
])
def test_missing_folders_are_data_errors(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    _image_folder(tmp_path / "data")
    code, line = _train(capsys, "--data", "data", "--output-dir", "out", *argv)
    assert code == EXIT_DATA and message in line, line


def test_a_rejected_run_leaves_nothing_and_the_corrected_rerun_trains(tmp_path, capsys, monkeypatch):
    """A rejected argument left `<out>.partial/`, and the corrected rerun was then refused ("holds checkpoints
    of an unfinished run" when it held none). The run uses one torch thread unless told otherwise."""
    import torch

    threads = []
    monkeypatch.setattr(torch, "set_num_threads", threads.append)  # recorded, not applied to the test process
    data, out = _image_folder(tmp_path / "data"), tmp_path / "out"
    settings = ["--data", data, "--output-dir", out, "--epochs", "1", "--batch-size", "8", "--no-multi-scale"]
    assert _train(capsys, *settings, "--image-size", "31")[0] == EXIT_USAGE
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
    code, line = _train(capsys, *settings, "--image-size", "32")
    assert code == 0, line
    assert (out / "model.safetensors").is_file() and sorted(p.name for p in tmp_path.iterdir()) == ["data", "out"]
    assert threads == [1]


def test_an_earlier_runs_leftovers_without_a_whole_checkpoint_do_not_block_a_new_run(tmp_path):
    from mobilevit.training import TrainJob
    from mobilevit.training.job import validate_job

    data = _image_folder(tmp_path / "data")
    cut_off = tmp_path / "out.partial" / "checkpoints" / "checkpoint-4"
    cut_off.mkdir(parents=True)
    (cut_off / "config.json").write_text("{}")  # what a kill during the first checkpoint leaves
    job = validate_job(TrainJob(task="classification", data=data, output_dir=tmp_path / "out"))
    assert job.output_dir == tmp_path / "out"
    (tmp_path / "out.partial" / "notes.txt").write_text("mine")  # something this tool never writes there
    with pytest.raises(ValueError, match=r"holds files this tool did not write \(notes.txt\)"):
        validate_job(TrainJob(task="classification", data=data, output_dir=tmp_path / "out"))
