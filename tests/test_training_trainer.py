"""Short training runs through `train_and_save`: the metric improves, the folder is complete and loads,
and a run interrupted after a checkpoint and resumed ends with the same weights as an uninterrupted one."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from mobilevit import MobileViTForImageClassification, MobileViTForSemanticSegmentation
from mobilevit.training import TrainJob, train_and_save
from mobilevit.training.demo_data import SHAPES_LABELS, load_digits_dataset, load_shapes_dataset
from mobilevit.training.job import OutputExistsError, work_dir_for


def small_digits(num_train=320, num_val=90):
    data = load_digits_dataset(image_size=32)
    return data["train"].select(range(num_train)), data["validation"].select(range(num_val))


@pytest.fixture(scope="module")
def digits():
    return small_digits()


def _digits_job(digits, output_dir, **overrides):
    import datasets

    train, val = digits
    settings = dict(task="image-classification", data=datasets.DatasetDict({"train": train, "validation": val}),
                    output_dir=output_dir, epochs=4, batch_size=16, learning_rate=3e-3, image_size=32,
                    eval_resize=32, crop_scale=(0.6, 1.0), flip_prob=0.0, multi_scale=False, logging_steps=100)
    settings.update(overrides)
    return TrainJob(**settings)


@pytest.mark.slow
def test_short_classification_run_improves_accuracy_and_saves_a_loadable_folder(digits, tmp_path):
    result = train_and_save(_digits_job(digits, tmp_path / "out"))
    history = result.metrics["history"]
    assert [row["epoch"] for row in history] == [1, 2, 3, 4]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["train_accuracy"] > max(0.3, history[0]["train_accuracy"])  # chance is 0.1
    assert history[-1]["eval_accuracy"] > history[0]["eval_accuracy"]
    folder = tmp_path / "out"
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "README.md", "metrics.json",
                 "training_history.png"):
        assert (folder / name).is_file(), name
    assert not work_dir_for(folder).exists()  # checkpoints cleaned up after success
    config = json.loads((folder / "config.json").read_text())
    assert config["id2label"]["3"] == "3"
    reloaded = MobileViTForImageClassification.from_pretrained(folder).eval()
    pixels = torch.rand(2, 3, 32, 32)
    result.model.eval()
    assert torch.allclose(reloaded(pixels).logits, result.model(pixels).logits, atol=1e-5)
    with pytest.raises(OutputExistsError, match="overwrite"):
        train_and_save(_digits_job(digits, folder))


@pytest.mark.slow
def test_short_segmentation_run_improves_mean_iou(tmp_path):
    shapes = load_shapes_dataset(image_size=48, num_train=96, num_val=24, num_test=0)
    shapes.pop("test")
    job = TrainJob(task="semantic-segmentation", data=shapes, output_dir=tmp_path / "seg", epochs=3, batch_size=16,
                   learning_rate=3e-3, image_size=48, eval_resize=48, labels=SHAPES_LABELS, logging_steps=100,
                   config_overrides={"output_stride": 8, "aspp_out_channels": 64})
    result = train_and_save(job)
    history = result.metrics["history"]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    # 18 steps are too few to leave "all background" on held-out scenes, but not on the metric over training
    # batches, nor on the held-out loss
    assert history[-1]["train_pixel_accuracy"] > history[0]["train_pixel_accuracy"] + 0.05
    assert history[-1]["eval_loss"] < history[0]["eval_loss"]
    assert set(result.metrics["validation"]) >= {"mean_iou", "pixel_accuracy", "iou_background", "iou_triangle"}
    model = MobileViTForSemanticSegmentation.from_pretrained(tmp_path / "seg")
    assert model.config.output_stride == 8 and model.config.id2label[3] == "triangle"


class _Interrupt(Exception):
    pass


class _KillAfterFirstCheckpoint(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):
        raise _Interrupt  # as if the machine died right after the checkpoint was written


@pytest.mark.slow
def test_resume_after_interruption_reproduces_the_uninterrupted_run(digits, tmp_path):
    # with the multi-scale sampler: the resumed epoch must redraw the same resolutions and crops (the
    # fixed-size path is the same sampler with a one-entry table)
    settings = dict(epochs=2, multi_scale=True, multi_scale_range=(32, 64),
                    threads=1)  # one thread for both runs: the thread policy, which drops a step to one thread
    # when other processes hold the CPUs, would otherwise sum the runs in different orders (1e-6 apart)
    train_and_save(_digits_job(digits, tmp_path / "straight", **settings))
    with pytest.raises(_Interrupt):
        train_and_save(_digits_job(digits, tmp_path / "resumed", callbacks=[_KillAfterFirstCheckpoint()], **settings))
    assert not (tmp_path / "resumed").exists()  # nothing half-written in the output
    with pytest.raises(OutputExistsError, match="resume"):  # a restart must say what to do with the checkpoints
        train_and_save(_digits_job(digits, tmp_path / "resumed", **settings))
    train_and_save(_digits_job(digits, tmp_path / "resumed", resume=True, **settings))
    straight = load_file(tmp_path / "straight" / "model.safetensors")
    resumed = load_file(tmp_path / "resumed" / "model.safetensors")
    assert straight.keys() == resumed.keys()
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], rtol=0, atol=1e-6, msg=key)


# A training process that stops, in its second checkpoint, right after the weights were written (before the
# optimizer, scheduler, RNG and trainer state), signals that, and waits there to be killed.
_KILLED_TRAINING = """
import importlib.util, sys, time
from pathlib import Path
from transformers import Trainer

spec = importlib.util.spec_from_file_location("training_tests", {test_file!r})
tests = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tests)
original, saves = Trainer._save_optimizer_and_scheduler, []

def stop_inside_the_second_checkpoint(self, output_dir):
    saves.append(output_dir)
    if len(saves) == 2:
        Path({signal!r}).write_text(output_dir)
        time.sleep(600)
    return original(self, output_dir)

Trainer._save_optimizer_and_scheduler = stop_inside_the_second_checkpoint
tests.train_and_save(tests._digits_job(tests.small_digits(*{sizes!r}), Path({output!r}), **{settings!r}))
"""


@pytest.mark.slow
def test_sigkill_while_a_checkpoint_is_written_then_resume_from_the_last_whole_one(tmp_path, capsys):
    """A SIGKILL while Trainer wrote checkpoint-N left it without trainer_state.json, and --resume then failed.
    Here a real training process is killed there; the resumed run skips (and reports) the cut-off checkpoint,
    resumes from the last whole one and ends with the weights of an uninterrupted run."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    sizes, settings = (128, 32), dict(epochs=2, multi_scale=False)
    digits = small_digits(*sizes)
    signal_file, output = tmp_path / "inside-checkpoint", tmp_path / "resumed"
    script = _KILLED_TRAINING.format(test_file=__file__, signal=str(signal_file), output=str(output), sizes=sizes,
                                     settings=settings)
    repo = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=str(repo), OMP_NUM_THREADS=str(torch.get_num_threads()), HF_HUB_OFFLINE="1",
               HF_DATASETS_OFFLINE="1")
    child = subprocess.Popen([sys.executable, "-c", script], env=env, cwd=tmp_path, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 600
        while not signal_file.exists():
            assert child.poll() is None, child.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "the training process never reached its second checkpoint"
            time.sleep(0.2)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait()
        child.stderr.close()
    cut_off = Path(signal_file.read_text())
    assert sorted(p.name for p in cut_off.iterdir()) == ["config.json", "model.safetensors", "training_args.bin"]
    assert not output.exists()

    train_and_save(_digits_job(digits, tmp_path / "straight", **settings))
    with pytest.raises(OutputExistsError, match="resume"):  # the first checkpoint is whole: say what to do with it
        train_and_save(_digits_job(digits, output, **settings))
    capsys.readouterr()
    result = train_and_save(_digits_job(digits, output, resume=True, **settings))
    err = capsys.readouterr().err
    assert f"resume: skipping {cut_off.name}, incomplete (no trainer_state.json" in err
    assert "resume: continuing from checkpoint-8" in err
    assert [row["epoch"] for row in result.metrics["history"]] == [1, 2]
    straight = load_file(tmp_path / "straight" / "model.safetensors")
    resumed = load_file(output / "model.safetensors")
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], rtol=0, atol=1e-6, msg=key)


def test_bf16_trains_in_bfloat16_autocast_and_evaluates_in_float32(tmp_path):
    """`--bf16`: the training forward under bfloat16 autocast, evaluation and the saved weights float32."""
    seen = []  # (training, dtype of the logits) per forward
    train, val = small_digits(num_train=32, num_val=16)
    job = _digits_job((train, val), tmp_path / "out", epochs=1, bf16=True, threads=1)

    class Spy(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            model.register_forward_hook(lambda module, inputs, output: seen.append((module.training,
                                                                                     output.logits.dtype)))

    job.callbacks = [Spy()]
    result = train_and_save(job)
    assert (True, torch.bfloat16) in seen and (False, torch.float32) in seen
    assert not any(training and dtype != torch.bfloat16 for training, dtype in seen)
    assert not any(not training and dtype != torch.float32 for training, dtype in seen)
    assert result.metrics["training"]["bf16"] is True
    saved = load_file(tmp_path / "out" / "model.safetensors").values()
    assert all(t.dtype == torch.float32 for t in saved if t.is_floating_point())
