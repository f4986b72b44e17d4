"""`mobilevit train` on the command line: bad input fails before training, outputs are never clobbered, and
the same command under torchrun (2 processes, gloo on CPU) trains with DDP and writes one loadable folder."""

import json
import re
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mobilevit import limits
from mobilevit.cli import main
from mobilevit.testing_utils import colour_class_folders

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
    (["--image-size", "31"], "image_size: expected an integer from 32 to 8192 (the network downsamples 32x"),
    (["--threads", "0"], "threads: expected an integer from 1 to "),
    (["--crop-scale", "0,2"], "crop_scale: expected MIN,MAX of finite numbers with 0 < MIN <= MAX <= 1"),
    (["--multi-scale-range", "16,64"], "multi_scale_range: expected an integer from 32 to 8192"),
    (["--flip-prob", "1.5"], "flip_prob: expected a finite number in [0, 1], got 1.5"),
    (["--num-workers", "-1"], "num_workers: expected an integer from 0 to "),
    (["--variant", "huge"], "variant: expected a released size"),
    (["--task", "detection"], "task: expected one of"),
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
    of an unfinished run" when it held none). The run asks for every CPU it may use unless told otherwise (the
    thread policy may lower it per step, and puts it back)."""
    import torch

    threads = []
    monkeypatch.setattr(torch, "set_num_threads", threads.append)  # recorded, not applied to the test process
    monkeypatch.setenv("MOBILEVIT_THREAD_POLICY", "0")  # on a busy machine it sets threads for one forward too
    data, out = _image_folder(tmp_path / "data"), tmp_path / "out"
    settings = ["--data", data, "--output-dir", out, "--epochs", "1", "--batch-size", "8", "--no-multi-scale"]
    assert _train(capsys, *settings, "--image-size", "31")[0] == EXIT_USAGE
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
    code, line = _train(capsys, *settings, "--image-size", "32")
    assert code == 0, line
    assert (out / "model.safetensors").is_file() and sorted(p.name for p in tmp_path.iterdir()) == ["data", "out"]
    assert threads[0] == limits.usable_cpus()


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


# -- issue 27: no silent wrong model, no traceback, no misleading noise ----------------------------------------------
import shutil

FAST = ["--epochs", "1", "--batch-size", "4", "--image-size", "32", "--no-multi-scale"]


def _classes(root: Path, names) -> Path:
    return colour_class_folders(root, names, seed=1)


def _labels_of(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text())["id2label"]


@pytest.fixture(scope="module")
def abc_run(tmp_path_factory):
    """A 3-class run whose checkpoints were kept, and its finished folder."""
    root = tmp_path_factory.mktemp("abc")
    data = _classes(root / "abc", ["a", "b", "c"])
    assert main(["train", "--data", str(data), *FAST, "--output-dir", str(root / "model"), "--keep-checkpoints"]) == 0
    return root


def test_resume_after_the_class_folders_changed_is_an_error(abc_run, tmp_path, capsys):
    """a, b, c -> b, c, d resumed with rc 0 although the checkpoint's config records other labels."""
    out = tmp_path / "model"
    shutil.copytree(abc_run / "model.partial", tmp_path / "model.partial")
    data = _classes(tmp_path / "bcd", ["b", "c", "d"])
    code, line = _train(capsys, "--data", data, *FAST, "--output-dir", out, "--resume")
    assert code == EXIT_DATA and "holds the class 'd', which the checkpoint" in line and "lacks" in line
    assert not out.exists()


@pytest.mark.parametrize("argv, message", [
    (["--task", "segmentation", "--labels", "a,b,c"], "holds an image-classification model; this run trains "
                                                      "semantic-segmentation"),
    (["--variant", "mobilevitv2-0.5"], "holds a model of type 'mobilevit'; this run trains 'mobilevitv2'"),
])
def test_resume_from_a_checkpoint_of_another_task_or_family_is_one_line_and_leaves_nothing(abc_run, tmp_path,
                                                                                          capsys, argv, message):
    checkpoint = sorted((abc_run / "model.partial" / "checkpoints").iterdir())[-1]
    data = abc_run / "abc"
    if "segmentation" in argv:
        data = tmp_path / "seg"
        _segmentation_folder(data)
    code, line = _train(capsys, "--data", data, *FAST, "--output-dir", tmp_path / "out", "--resume", checkpoint,
                        *argv)
    assert code == EXIT_DATA and message in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == (["seg"] if "segmentation" in argv else [])


def _segmentation_folder(path: Path) -> None:
    import datasets

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)) for _ in range(6)]
    masks = [Image.fromarray(rng.integers(0, 3, (40, 40), dtype=np.uint8)) for _ in range(6)]
    features = datasets.Features({"image": datasets.Image(), "annotation": datasets.Image()})
    datasets.Dataset.from_dict({"image": images, "annotation": masks}, features=features).save_to_disk(str(path))


def test_a_validation_class_the_training_split_lacks_is_an_error(tmp_path, capsys):
    data = tmp_path / "data"
    _classes(data / "train", ["a", "b"])
    _classes(data / "validation", ["a", "b", "c"])
    code, line = _train(capsys, "--data", data, *FAST, "--output-dir", tmp_path / "out")
    assert code == EXIT_DATA and "[validation]: holds the class 'c', which the training split lacks" in line


def test_a_diverging_run_stops_with_one_line_naming_the_step(tmp_path, capsys):
    """--lr inf exited 0 with NaN weights and printed a validation accuracy."""
    data = _classes(tmp_path / "data", ["a", "b"])
    code, line = _train(capsys, "--data", data, *FAST, "--learning-rate", "1e30", "--output-dir", tmp_path / "out")
    assert code == EXIT_DATA and re.search(r"training: the (loss became nan|weight .* became NaN or infinite) at "
                                           r"step \d+", line), line
    assert not (tmp_path / "out").exists()
    for value in ("inf", "nan"):
        code, line = _train(capsys, "--data", data, *FAST, "--learning-rate", value, "--output-dir", tmp_path / "o")
        assert code == EXIT_USAGE and "learning_rate: expected a finite number > 0" in line


def test_fine_tuning_keeps_the_head_for_the_same_classes_and_says_when_it_is_new(abc_run, tmp_path, capsys):
    """transformers' 'You passed num_labels=...' and a LOAD REPORT table for the head re-initialised on purpose."""
    model = abc_run / "model"
    shuffled = tmp_path / "cab"  # the same classes, as a data set whose own order differs
    import datasets

    images = [str(p) for name in ("c", "a", "b") for p in sorted((abc_run / "abc" / name).glob("*.png"))]
    labels = [i for i in range(3) for _ in range(6)]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["c", "a", "b"])})
    datasets.Dataset.from_dict({"image": images, "label": labels}, features=features).save_to_disk(str(shuffled))
    assert main(["train", "--data", str(shuffled), *FAST, "--model", str(model), "--output-dir",
                 str(tmp_path / "same")]) == 0
    err = capsys.readouterr().err
    assert "head is new" not in err and "num_labels=" not in err and "LOAD REPORT" not in err
    assert _labels_of(tmp_path / "same") == _labels_of(model)  # the model's ids, the data matched by name
    data = _classes(tmp_path / "xy", ["x", "y"])
    assert main(["train", "--data", str(data), *FAST, "--model", str(model), "--output-dir", str(tmp_path / "new")]) == 0
    err = capsys.readouterr().err
    assert "mobilevit train: model: the image-classification head is new, for the data's 2 classes" in err
    assert "num_labels=" not in err and "LOAD REPORT" not in err and "Downloading" not in err


def test_training_from_a_folder_uses_its_processors_size_and_saves_a_config_that_agrees(abc_run, tmp_path):
    """The demo saved image_size 256 beside a 64 / 96 processor; training from it ran at 256."""
    old = tmp_path / "old"
    shutil.copytree(abc_run / "model", old)
    config = json.loads((old / "config.json").read_text())
    (old / "config.json").write_text(json.dumps({**config, "image_size": 256}))
    assert main(["train", "--data", str(abc_run / "abc"), "--epochs", "1", "--batch-size", "4", "--model", str(old),
                 "--output-dir", str(tmp_path / "out")]) == 0
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["training"]["image_size"] == 32
    saved = json.loads((tmp_path / "out" / "config.json").read_text())["image_size"]
    crop = json.loads((tmp_path / "out" / "preprocessor_config.json").read_text())["crop_size"]
    assert saved == crop["height"] == 32


@pytest.mark.parametrize("argv, code, message", [
    (["--epochs", "inf"], EXIT_USAGE, "epochs: expected a finite number in (0, 10000], got inf"),
    (["--seed", "-1"], EXIT_USAGE, "seed: expected an integer from 0 to 4294967295"),
    (["--weight-decay", "inf"], EXIT_USAGE, "weight_decay: expected a finite number >= 0, got inf"),
    (["--crop-ratio", "1e-9,1e9"], EXIT_USAGE, "crop_ratio: expected MIN,MAX of finite numbers"),
])
def test_numbers_that_tracebacked_are_one_line(tmp_path, capsys, argv, code, message):
    data = _classes(tmp_path / "data", ["a", "b"])
    got, line = _train(capsys, "--data", data, *FAST, "--output-dir", tmp_path / "out", *argv)
    assert got == code and message in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
