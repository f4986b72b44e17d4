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
    assert code == 2 and "--overwrite" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "precious"


def test_folder_without_images_is_refused(tmp_path, capsys):
    (tmp_path / "data" / "cat").mkdir(parents=True)
    code = main(["train", "--data", str(tmp_path / "data"), "--output-dir", str(tmp_path / "out")])
    assert code == 2 and "found no images" in capsys.readouterr().err


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
