"""Checkpoints a killed run cut off are told from whole ones; resume skips (and reports) them. The exact
leftovers of a kill at each step of Trainer's checkpoint writing are made here; test_training_trainer.py
SIGKILLs a real training process while it writes one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from mobilevit.training import TrainJob
from mobilevit.training.checkpoints import checkpoint_problem, scan_checkpoints
from mobilevit.training.job import OutputExistsError, TrainError, _prepare_work_dir, validate_job

# Trainer's order: config.json and the weights, optimizer and scheduler, the RNG state, trainer_state.json last
WRITE_ORDER = ("config.json", "model.safetensors", "training_args.bin", "optimizer.pt", "scheduler.pt",
               "rng_state.pth", "trainer_state.json")


def write_checkpoint(folder: Path, files=WRITE_ORDER) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in files:
        path = folder / name
        if name == "config.json":
            path.write_text(json.dumps({"model_type": "mobilevit"}))
        elif name == "trainer_state.json":
            path.write_text(json.dumps({"global_step": 4, "log_history": []}))
        elif name == "model.safetensors":
            save_file({"w": torch.zeros(64, 64)}, str(path))
        else:
            torch.save({"state": torch.zeros(1000)}, path)
    return folder


def cut_off(path: Path, keep: float = 0.5) -> None:
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * keep)])


def test_a_whole_checkpoint_has_no_problem(tmp_path):
    assert checkpoint_problem(write_checkpoint(tmp_path / "checkpoint-4")) is None


@pytest.mark.parametrize("written", range(1, len(WRITE_ORDER)))
def test_a_kill_after_any_file_leaves_an_incomplete_checkpoint(tmp_path, written):
    folder = write_checkpoint(tmp_path / "checkpoint-8", WRITE_ORDER[:written])
    problem = checkpoint_problem(folder)
    assert problem is not None and (written < len(WRITE_ORDER) - 1 or "trainer_state" in problem)


@pytest.mark.parametrize("name, message", [
    ("model.safetensors", "model.safetensors is cut off ("),
    ("optimizer.pt", "optimizer.pt is cut off"),
    ("scheduler.pt", "scheduler.pt is cut off"),
    ("rng_state.pth", "rng_state.pth is cut off"),
    ("trainer_state.json", "trainer_state.json is cut off"),
])
def test_a_kill_in_the_middle_of_a_file_is_noticed(tmp_path, name, message):
    folder = write_checkpoint(tmp_path / "checkpoint-8")
    cut_off(folder / name)
    assert message in checkpoint_problem(folder)


def test_scan_sorts_by_step_and_separates_the_incomplete(tmp_path):
    for step in (12, 4, 8):
        write_checkpoint(tmp_path / f"checkpoint-{step}")
    write_checkpoint(tmp_path / "checkpoint-16", ("config.json",))  # the leftover: only config.json
    (tmp_path / "runs").mkdir()
    whole, incomplete = scan_checkpoints(tmp_path)
    assert [p.name for p in whole] == ["checkpoint-4", "checkpoint-8", "checkpoint-12"]
    assert [(p.name, problem) for p, problem in incomplete] == [
        ("checkpoint-16", "no trainer_state.json (Trainer writes it last)")]


def _job(tmp_path, **overrides):
    data = tmp_path / "data"
    for name in ("a", "b"):
        (data / name).mkdir(parents=True, exist_ok=True)
        (data / name / "0.png").write_bytes(b"")  # never read by validate_job
    return TrainJob(task="classification", data=data, output_dir=tmp_path / "out", **overrides)


def test_resume_skips_reports_and_removes_cut_off_checkpoints(tmp_path, capsys):
    checkpoints = tmp_path / "out.partial" / "checkpoints"
    write_checkpoint(checkpoints / "checkpoint-4")
    write_checkpoint(checkpoints / "checkpoint-8")
    write_checkpoint(checkpoints / "checkpoint-12", ("config.json",))
    job = validate_job(_job(tmp_path, resume=True))
    assert _prepare_work_dir(job, tmp_path / "out.partial") == str(checkpoints / "checkpoint-8")
    err = capsys.readouterr().err
    assert "resume: skipping checkpoint-12, incomplete (no trainer_state.json" in err
    assert "resume: continuing from checkpoint-8" in err
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint-4", "checkpoint-8"]


def test_resume_without_a_whole_checkpoint_starts_over(tmp_path, capsys):
    write_checkpoint(tmp_path / "out.partial" / "checkpoints" / "checkpoint-4", WRITE_ORDER[:3])
    job = validate_job(_job(tmp_path, resume=True))
    assert _prepare_work_dir(job, tmp_path / "out.partial") is None
    assert "no whole checkpoint" in capsys.readouterr().err


def test_an_unfinished_run_needs_resume_or_overwrite_and_a_given_checkpoint_must_be_whole(tmp_path):
    checkpoints = tmp_path / "out.partial" / "checkpoints"
    write_checkpoint(checkpoints / "checkpoint-4")
    with pytest.raises(OutputExistsError, match=r"holds checkpoints of an unfinished run \(checkpoint-4\)"):
        validate_job(_job(tmp_path))
    job = validate_job(_job(tmp_path, overwrite=True))
    assert _prepare_work_dir(job, tmp_path / "out.partial") is None and not (tmp_path / "out.partial").exists()
    write_checkpoint(checkpoints / "checkpoint-4", ("config.json",))
    with pytest.raises(TrainError, match=r"resume: expected a whole checkpoint folder .*: no trainer_state.json"):
        validate_job(_job(tmp_path, resume=str(checkpoints / "checkpoint-4")))
