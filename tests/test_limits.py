"""Every number a user gives has a limit from the machine or the model, checked before any work (issue 27,
"resource exhaustion"): mobilevit/limits.py is the one place; each tool's argument check calls it."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mobilevit import auto, limits
from mobilevit.errors import EXIT_DATA, EXIT_USAGE, UserError

REPO = Path(__file__).resolve().parent.parent
MEMORY_LIMIT = 8 * 2**30  # address space for the subprocesses below: a value that slipped through fails there


def _image_folder(root: Path, per_class: int = 8) -> Path:
    rng = np.random.default_rng(0)
    for name in ("red", "blue"):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (36, 36, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


# -- the checks themselves ------------------------------------------------------------------------------------------
def test_checks_name_the_limit_and_refuse_non_finite_numbers():
    with pytest.raises(UserError, match=r"threads: expected an integer from 1 to \d+ \(the CPUs this process may "
                                        r"use\), got 100000") as caught:
        limits.check_threads("threads", 100000)
    assert caught.value.exit_code == EXIT_USAGE
    assert limits.check_threads("threads", limits.usable_cpus()) == limits.usable_cpus()
    for value in (float("inf"), float("nan"), -1.0, 0.0):
        with pytest.raises(UserError, match="expected a finite number > 0"):
            limits.check_number("learning_rate", value, 0, above=True)
    with pytest.raises(UserError, match=r"seed: expected an integer from 0 to 4294967295"):
        limits.check_seed("seed", -1)
    with pytest.raises(UserError, match=r"epochs: expected a finite number in \(0, 10000\], got inf"):
        limits.check_epochs("epochs", float("inf"))
    with pytest.raises(UserError, match="from 32 to 8192"):
        limits.check_image_side("image_size", 8193)


def test_available_memory_follows_the_address_space_limit():
    script = textwrap.dedent(f"""
        import resource
        from mobilevit import limits
        resource.setrlimit(resource.RLIMIT_AS, ({MEMORY_LIMIT}, {MEMORY_LIMIT}))
        print(limits.available_memory())
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert 0 < int(out.stdout) < MEMORY_LIMIT


def test_activation_estimate_scales_with_pixels_and_training_keeps_more():
    config = auto.new_config("xx-small", "image-classification")
    small = auto.memory_per_image(config, "image-classification", 128, 128, training=True)
    large = auto.memory_per_image(config, "image-classification", 256, 256, training=True)
    inference = auto.memory_per_image(config, "image-classification", 256, 256, training=False)
    assert 3.5 < large / small < 4.5  # activations grow with the pixels
    assert inference < large / 4
    assert 40e6 < large < 200e6  # measured: training xx-small at 256x256 takes about 80 MB of activations per image


def test_fits_in_memory_names_the_most_that_fits():
    with pytest.raises(UserError, match=r"batch_size: expected at most \d+ \(training .* keeps about 1.0 GB per "
                                        r"image, and this process may use about .*\), got 1000000"):
        limits.check_fits_in_memory("batch_size", 1_000_000, 1e9, "training ... keeps about")
    limits.check_fits_in_memory("batch_size", 1, 1e3, "tiny")


# -- every tool, as a user runs it, under a memory limit ------------------------------------------------------------
_RUNNER = textwrap.dedent("""
    import contextlib, io, json, resource, sys
    resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
    from mobilevit.cli import main
    results = []
    for argv in json.loads(sys.argv[1]):
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                code = main(argv)
            except BaseException as exc:  # a traceback: what the test must not see
                code = repr(exc)
        results.append([code, err.getvalue()])
    print(json.dumps(results))
""")


def _run_all(cases: list[list[str]], cwd: Path) -> list:
    """Each argv through `mobilevit.cli.main` in one subprocess under MEMORY_LIMIT (imports paid once)."""
    out = subprocess.run([sys.executable, "-c", _RUNNER.format(limit=MEMORY_LIMIT), json.dumps(cases)], cwd=cwd,
                         capture_output=True, text=True, timeout=900,
                         env={**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_unbounded_values_are_refused_before_any_work(tmp_path, saved_classifier):
    data = _image_folder(tmp_path / "data")
    wide = tmp_path / "wide"  # a processor config that would resize every photo to 100000 pixels a side
    wide.mkdir()
    for name in ("config.json", "model.safetensors", "preprocessor_config.json"):
        (wide / name).write_bytes((saved_classifier / name).read_bytes())
    processor = json.loads((wide / "preprocessor_config.json").read_text())
    processor["size"] = {"shortest_edge": 100000}
    (wide / "preprocessor_config.json").write_text(json.dumps(processor))
    train = ["train", "--data", str(data), "--epochs", "1", "--batch-size", "8", "--output-dir", str(tmp_path / "out")]
    cases = {
        "image-size": (train + ["--image-size", "100000"], EXIT_USAGE, "image_size: expected an integer from 32 to 8192"),
        "multi-scale-range": (train + ["--multi-scale-range", "32,100000"], EXIT_USAGE,
                              "multi_scale_range: expected an integer from 32 to 8192"),
        "batch in memory": (train + ["--image-size", "4096"], EXIT_USAGE,
                            "batch_size: expected at most"),
        "eval batch in memory": (train + ["--eval-batch-size", "1000000000"], EXIT_USAGE,
                                 "eval_batch_size: expected at most"),
        "epochs": (train + ["--epochs", "1e9"], EXIT_USAGE, "epochs: expected a finite number in (0, 10000]"),
        "processor": (["predict", str(data / "red" / "0.png"), "--model", str(wide)], EXIT_DATA,
                      "size.shortest_edge expected 1 to 9216 pixels"),
        "benchmark batch": (["benchmark", "--variants", "xx-small", "--batch-sizes", "100000"], EXIT_USAGE,
                            "batch_sizes: expected at most"),
        "benchmark repeats": (["benchmark", "--variants", "xx-small", "--repeats", "1000000000"], EXIT_USAGE,
                              "repeats: expected an integer from 1 to 10000"),
        "export threads": (["export", "--format", "onnx", "--model", str(saved_classifier), "--output",
                            str(tmp_path / "m.onnx"), "--threads", "100000"], EXIT_USAGE, "--threads: expected an "
                           "integer from 1 to"),
    }
    results = _run_all([argv for argv, _, _ in cases.values()], tmp_path)
    for (name, (_, code, message)), (got, err) in zip(cases.items(), results):
        assert got == code and message in err and len(err.strip().splitlines()) == 1, (name, got, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "wide"]  # nothing written


def test_workers_threads_and_background_load_are_bounded_by_the_cpus(tmp_path):
    """Checked without starting anything: on main these values were accepted, and the runs then forked
    100000 workers or busy processes."""
    from mobilevit.benchmark import BenchmarkError, check_settings
    from mobilevit.training import TrainJob
    from mobilevit.training.job import TrainError, validate_job

    data = _image_folder(tmp_path / "data")
    for field in ("num_workers", "threads"):
        with pytest.raises(TrainError, match=rf"{field}: expected an integer from \d to {limits.usable_cpus()}"):
            validate_job(TrainJob(task="classification", data=data, output_dir=tmp_path / "out", **{field: 100000}))
    settings = dict(variants=["xx-small"], batch_sizes=[1], threads=1, task="image-classification", image_size=64,
                    repeats=1, warmup=0, candidates=["mobilevit"], allocator="tuned")
    with pytest.raises(BenchmarkError, match=r"background_load: expected an integer from 0 to \d+ \(one per CPU"):
        check_settings(**settings, background_load=100000)
    with pytest.raises(BenchmarkError, match="threads: expected an integer from 1 to"):
        check_settings(**{**settings, "threads": 100000})


def test_a_batch_never_exceeds_the_data(tmp_path, capsys):
    """batch_size 100000 on 16 images filled each batch by repeating examples, up to 23 GB."""
    from mobilevit.cli import main
    from mobilevit.training.sampler import MultiScaleBatchSampler

    sampler = MultiScaleBatchSampler(16, 100000, 64, multi_scale=True)
    assert max(batch for _, _, batch in sampler.table) == 16
    assert all(len(batch) <= 16 for batch in sampler)
    data = _image_folder(tmp_path / "data")
    code = main(["train", "--data", str(data), "--epochs", "1", "--batch-size", "100000", "--image-size", "32",
                 "--output-dir", str(tmp_path / "out")])
    assert code == 0
    assert "batch_size: 100000 is more than the 14 training examples; batches of 14" in capsys.readouterr().err
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["training"]["batch_size"] == 14
