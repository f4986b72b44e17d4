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


@pytest.fixture(scope="module")
def digits():
    data = load_digits_dataset(image_size=32)
    return data["train"].select(range(320)), data["validation"].select(range(90))


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
    settings = dict(epochs=2, multi_scale=True, multi_scale_range=(32, 64))
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
