"""`mobilevit benchmark`: a tiny smoke run (xx-small, 64x64, 2 rounds) and its outputs; never asserts on time."""

import json
import subprocess
import sys

import pytest

from mobilevit import benchmark
from mobilevit.cli import main as cli_main


def test_smoke_run_writes_table_json_and_chart(tmp_path, capsys, monkeypatch):
    options = []
    real = benchmark.time_interleaved
    monkeypatch.setattr(benchmark, "time_interleaved", lambda *a, **k: (options.append(k), real(*a, **k))[1])
    args = ["benchmark", "--variants", "xx-small", "--batch-sizes", "1", "2", "--image-size", "64",
            "--repeats", "2", "--warmup", "1", "--candidates", "mobilevit", "transformers", "--output", str(tmp_path),
            "--allocator", "default"]  # "tuned" would change the test process's malloc for good
    assert cli_main(args) == 0
    assert options == [{"lead_in": True}] * 2  # both batch sizes timed in steady state
    printed = capsys.readouterr().out
    assert "| mobilevit (this package) | xx-small |" in printed and "| transformers (stock) | xx-small |" in printed

    rows = json.loads((tmp_path / "results.json").read_text())
    assert {(r["candidate"], r["batch_size"]) for r in rows} == {
        (c, b) for c in ("mobilevit", "transformers") for b in (1, 2)
    }
    for row in rows:
        assert row["median_ms"] > 0 and row["p10_ms"] <= row["median_ms"] <= row["p90_ms"]
        assert row["params_m"] == pytest.approx(1.27, abs=0.01)  # xx-small with a 1000-class head
        assert 0.02 < row["gflops"] < 0.1  # 0.81 GFLOPs at 256x256, scaled by (64/256)^2
        assert row["speedup"] > 0
    assert (tmp_path / "results.md").read_text().startswith("| model |")
    assert (tmp_path / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # a second run refuses to replace the results before timing anything
    monkeypatch.setattr(benchmark, "build_mobilevit", lambda *a, **k: pytest.fail("a model was built"))
    assert cli_main(args) == 1
    err = capsys.readouterr().err
    assert err == (f"mobilevit benchmark: error: --output: {str(tmp_path)!r} already holds results.json, results.md, "
                   "chart.png (pass --overwrite to replace them)\n")


def test_detection_is_timed_against_its_plain_path(capsys, monkeypatch):
    """Stock transformers has no detector: the speed-up column compares with this package's plain path."""
    assert benchmark.default_candidates("object-detection")[:2] == ("mobilevit", "mobilevit-plain")
    assert "transformers" not in benchmark.default_candidates("object-detection")
    results = benchmark.benchmark(variants=["xx-small"], batch_sizes=[1], task="detection", image_size=64, repeats=2,
                                  warmup=1, candidates=["mobilevit", "mobilevit-plain"], allocator="default",
                                  progress=False)
    assert [r.candidate for r in results] == ["mobilevit", "mobilevit-plain"]
    assert results[1].speedup == 1.0 and results[0].task == "object-detection"
    assert results[0].params_m == pytest.approx(1.755, abs=0.001)  # SSDLite MobileViT-XXS, 81 classes
    assert "| vs plain path |" in benchmark.format_table(results).splitlines()[0]
    assert benchmark.check_settings(variants=["xx-small"], batch_sizes=[1], threads=1, task="detection",
                                    image_size=None, repeats=1, warmup=0, candidates=["mobilevit"],
                                    allocator="default")["image_size"] == 320


def test_flops_include_attention():
    # 0.81 GFLOPs (2 x multiply-adds) for XXS at 256x256, attention matmuls included (0.66 without them)
    model = benchmark.build_mobilevit("xx-small", "image-classification")
    assert benchmark.count_flops(model, 256) / 1e9 == pytest.approx(0.81, abs=0.03)
    assert model.__dict__.get("_fast_inference_enabled", True)  # counting switched the fast path back on


@pytest.mark.parametrize("argv, message, code", [
    (["--batch-sizes", "0"], "batch_sizes: expected positive integers, got [0]", 2),
    (["--batch-sizes", "1", "-4"], "batch_sizes: expected positive integers, got [1, -4]", 2),
    (["--variants", "huge"], "variant: expected a released size", 2),
    (["--threads", "0"], "threads: expected an integer from 1 to ", 2),
    (["--repeats", "0"], "repeats: expected an integer from 1 to 10000", 2),
    (["--warmup", "-1"], "warmup: expected an integer from 0 to 1000", 2),
    (["--background-load", "-1"], "background_load: expected an integer from 0 to ", 2),
    (["--image-size", "16"], "image_size: expected an integer from 32 to 8192 (the network downsamples 32x", 2),
    (["--task", "depth-estimation"], "task: expected one of", 2),
    (["--task", "detection", "--candidates", "mobilevit", "transformers"],
     "candidates: stock transformers has no object-detection model to time", 2),
    (["--output", "{tmp}/a-file"], "--output: expected a folder, got", 1),
    (["--output", "{tmp}/a-file/results"], "is a file", 1),
])
def test_every_bad_argument_is_one_line_before_any_model_is_built(tmp_path, capsys, monkeypatch, argv, message, code):
    (tmp_path / "a-file").write_text("not a folder")
    monkeypatch.setattr(benchmark, "build_mobilevit", lambda *a, **k: pytest.fail("a model was built"))
    assert cli_main(["benchmark", *(a.format(tmp=tmp_path) for a in argv)]) == code
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and message in captured.err, captured.err


def test_onnxruntime_is_a_default_only_when_its_extra_is_installed(capsys, monkeypatch):
    """README's main install has no onnxscript: the default candidates must not need it, and asking for
    onnxruntime without it is one line naming the extra."""
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else
                        real_find_spec(name, *a))
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import onnxscript now fails
    assert benchmark.default_candidates() == ("mobilevit", "transformers", "resnet-50")
    monkeypatch.setattr(benchmark, "build_mobilevit", lambda *a, **k: pytest.fail("a model was built"))
    assert cli_main(["benchmark", "--candidates", "mobilevit", "onnxruntime"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mobilevit benchmark: error: the onnxruntime candidate") and err.count("\n") == 1
    assert 'pip install "mobilevit[export]"' in err
    settings = benchmark.check_settings(variants=["xx-small"], batch_sizes=[1], threads=1, task="image-classification",
                                        image_size=None, repeats=1, warmup=0, candidates=None, allocator="default")
    assert "onnxruntime" not in settings["candidates"] and settings["image_size"] == 256


def test_bad_arguments():
    with pytest.raises(ValueError, match="candidates"):
        benchmark.benchmark(variants=["xx-small"], candidates=["tensorflow"])
    with pytest.raises(ValueError, match="batch_sizes"):
        benchmark.benchmark(variants=["xx-small"], batch_sizes=[0])
    with pytest.raises(ValueError, match="variant"):
        benchmark.benchmark(variants=["huge"])
    with pytest.raises(ValueError, match="allocator.*jemalloc"):
        benchmark.benchmark(variants=["xx-small"], allocator="jemalloc")


def test_tuned_allocator_keeps_freed_memory_for_reuse():
    # in a child process: the setting is process-wide and cannot be undone
    code = """
import resource, torch
from mobilevit.benchmark import tune_allocator
def faults_per_call():
    torch.empty(8 << 20).fill_(1)  # 32 MiB, above glibc's default mmap threshold
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        torch.empty(8 << 20).fill_(1)
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5
plain = faults_per_call()
tune_allocator()
faults_per_call()
print(plain, faults_per_call())
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    plain, tuned = map(float, result.stdout.split())
    assert plain > 4000  # 32 MiB = 8192 pages, faulted in again on every call
    assert tuned < 100


@pytest.mark.slow
def test_smoke_run_with_onnxruntime_and_resnet(tmp_path):
    results = benchmark.benchmark(
        variants=["xx-small"], batch_sizes=[1], image_size=64, repeats=1, warmup=1, progress=False,
        candidates=["mobilevit", "onnxruntime", "resnet-50"], allocator="default",  # leaves pytest's malloc alone
    )
    assert [(r.candidate, r.variant) for r in results] == [
        ("mobilevit", "xx-small"), ("onnxruntime", "xx-small"), ("resnet-50", "resnet-50")
    ]
    assert results[-1].params_m == pytest.approx(25.56, abs=0.05)  # ResNet-50 at its real size
    benchmark.write_outputs(results, tmp_path, overwrite=False)
    with pytest.raises(benchmark.BenchmarkError, match="overwrite"):  # a one-line error at the command line
        benchmark.write_outputs(results, tmp_path, overwrite=False)


@pytest.mark.slow  # spawns one interpreter per candidate (torch + transformers imports: ~10 s)
def test_fresh_condition_times_each_candidate_in_its_own_process(monkeypatch):
    options = []
    real = benchmark.time_interleaved
    monkeypatch.setattr(benchmark, "time_interleaved", lambda *a, **k: (options.append(k), real(*a, **k))[1])
    results = benchmark.benchmark(
        variants=["xx-small"], batch_sizes=[1, 2], image_size=64, repeats=2, warmup=1, progress=False,
        candidates=["mobilevit", "transformers"], allocator="fresh",
    )
    assert options == [{"self_timed": True, "lead_in": True}] * 2  # one timing per batch size, in steady state
    assert [(r.candidate, r.batch_size) for r in results] == [
        ("mobilevit", 1), ("transformers", 1), ("mobilevit", 2), ("transformers", 2)
    ]
    assert all(r.allocator == "fresh" and r.median_ms > 0 for r in results)
    assert all(r.speedup > 0 for r in results)


def test_lead_in_call_precedes_every_timed_call_and_only_when_asked():
    events = []
    runners = {"a": lambda x: events.append("a"), "b": lambda x: events.append("b")}
    times = benchmark.time_interleaved(runners, lambda name: None, repeats=2, warmup=1, progress=False, lead_in=True)
    assert events == ["a", "b"] + ["a", "a", "b", "b"] + ["b", "b", "a", "a"]  # warm-up, then lead-in + timed
    assert {name: len(samples) for name, samples in times.items()} == {"a": 2, "b": 2}  # lead-ins are not timed
    events.clear()
    benchmark.time_interleaved(runners, lambda name: None, repeats=1, warmup=0, progress=False)
    assert events == ["a", "b"]


def test_bfloat16_candidate_and_background_load(monkeypatch):
    started = []
    real_popen = __import__("subprocess").Popen

    def popen(*args, **kwargs):
        started.append(real_popen(*args, **kwargs))
        return started[-1]

    monkeypatch.setattr("subprocess.Popen", popen)
    seen_running = []
    real = benchmark.time_interleaved
    monkeypatch.setattr(benchmark, "time_interleaved",
                        lambda *a, **k: (seen_running.append([p.poll() is None for p in started]), real(*a, **k))[1])
    results = benchmark.benchmark(variants=["xx-small"], batch_sizes=[1], image_size=64, repeats=2, warmup=0,
                                  candidates=["mobilevit", "mobilevit-bf16"], allocator="default", background_load=2,
                                  progress=False)
    assert [r.candidate for r in results] == ["mobilevit", "mobilevit-bf16"]
    assert all(r.background_load == 2 and r.median_ms > 0 for r in results)
    assert seen_running == [[True, True]]  # both busy processes ran while the candidates were timed
    assert len(started) == 2 and all(p.poll() is not None for p in started)  # and were stopped after


def test_busy_process_stops_by_itself_when_its_time_is_up():
    busy = subprocess.run([sys.executable, "-c", benchmark._BUSY_LOOP, str(__import__("os").getpid()), "0.2"],
                          timeout=60)
    assert busy.returncode == 0


def test_compiled_candidates_report_compile_time_apart(tmp_path, capsys, monkeypatch):
    """Both compiled candidates run as one graph per batch size (Dynamo's cheap "eager" backend here; Inductor is
    tests/test_compile.py's slow part), and each batch size's first call, which compiles, is reported apart."""
    import torch
    from torch._dynamo.utils import counters

    monkeypatch.setattr(benchmark, "COMPILE_BACKEND", "eager")
    torch._dynamo.reset()
    counters.clear()
    args = ["benchmark", "--variants", "xx-small", "--batch-sizes", "1", "2", "--image-size", "64", "--repeats", "2",
            "--warmup", "1", "--candidates", "mobilevit-compiled", "transformers-compiled", "transformers",
            "--allocator", "default", "--output", str(tmp_path)]
    try:
        assert cli_main(args) == 0
    finally:
        torch._dynamo.reset()
    assert counters["stats"]["unique_graphs"] == 4  # two models x two batch sizes, nothing uncompiled
    assert not counters["graph_break"]
    rows = json.loads((tmp_path / "results.json").read_text())
    compiled = {(r["candidate"], r["batch_size"]): r["compile_s"] for r in rows}
    assert all(compiled[(c, b)] > 0 for c in benchmark.COMPILED_CANDIDATES for b in (1, 2))
    assert compiled[("transformers", 1)] is None
    printed = capsys.readouterr().out
    for line in ("| mobilevit torch.compile (this package) | xx-small |",
                 "compile time of mobilevit torch.compile (this package), xx-small, batch 2: "):
        assert line in printed
    assert "compile time of transformers torch.compile (stock), xx-small, batch 1: " in (
        tmp_path / "results.md").read_text()


def test_train_mode_times_the_training_step_and_checks_the_first_loss(tmp_path, capsys):
    """In-process with glibc as it is ("tuned" would change the test process's malloc for good)."""
    args = ["benchmark", "--mode", "train", "--variants", "xx-small", "xx-small:semantic-segmentation",
            "--batch-sizes", "2", "--image-size", "64", "--repeats", "1", "--warmup", "0", "--threads", "1",
            "--candidates", "mobilevit", "mobilevit-bf16", "transformers", "--allocator", "default",
            "--clock", "cpu", "--output", str(tmp_path)]
    assert cli_main(args) == 0
    printed = capsys.readouterr().out
    assert "training step (forward, backward, clip, fused AdamW), 64x64, 1 threads, default allocator, cpu clock" in printed
    rows = json.loads((tmp_path / "train.json").read_text())
    assert {(r["candidate"], r["task"]) for r in rows} == {
        (c, t) for c in ("mobilevit", "mobilevit-bf16", "transformers")
        for t in ("image-classification", "semantic-segmentation")}
    by_key = {(r["candidate"], r["task"]): r for r in rows}
    for task in ("image-classification", "semantic-segmentation"):
        ours, stock = by_key["mobilevit", task], by_key["transformers", task]
        assert ours["first_loss"] == pytest.approx(stock["first_loss"], rel=1e-5)  # same weights, same batch
        assert by_key["mobilevit-bf16", task]["first_loss"] != ours["first_loss"]  # it did run in bfloat16
        assert stock["speedup"] == 1.0 and ours["speedup"] > 0 and ours["images_per_s"] > 0
    table = (tmp_path / "train.md").read_text()
    assert table.startswith("| model | task | candidate |") and table.count(" ok) |") == 2


@pytest.mark.slow
def test_train_mode_fresh_processes(capsys):
    assert cli_main(["benchmark", "--mode", "train", "--variants", "xx-small", "--batch-sizes", "2", "--image-size",
                     "64", "--repeats", "1", "--warmup", "0", "--threads", "1", "--candidates", "mobilevit",
                     "transformers"]) == 0
    printed = capsys.readouterr().out
    assert ", fresh allocator" in printed and "| xx-small | image-classification | mobilevit (this package) |" in printed
    assert " ok) |" in printed


@pytest.mark.parametrize("argv, message", [
    (["--variants", "huge"], "variant: expected a released size"),
    (["--variants", "small:detection"], "task: expected one of"),
    (["--candidates", "onnxruntime"], "candidates: --mode train times"),
    (["--image-size", "16"], "image_size: expected an integer >= 32"),
    (["--batch-sizes", "0"], "batch_sizes: expected positive integers, got [0]"),
    (["--repeats", "0"], "repeats: expected a positive integer, got 0"),
])
def test_train_mode_refuses_bad_arguments_before_building_a_model(capsys, monkeypatch, argv, message):
    monkeypatch.setattr(benchmark, "build_mobilevit", lambda *a, **k: pytest.fail("a model was built"))
    assert cli_main(["benchmark", "--mode", "train", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and message in captured.err, captured.err


@pytest.mark.parametrize("folder, task, stock", [
    ("saved_classifier", "image-classification", "transformers.pipeline (MobileViTForImageClassification, "),
    # stock transformers has no MobileViT detector: its pipeline runs this package's
    ("saved_detector", "object-detection", "transformers.pipeline (MobileViTForObjectDetection, "),
])
def test_predict_mode_prints_every_row_and_the_goals_ratios(request, tmp_path, capsys, folder, task, stock):
    """--mode predict on a handful of small generated JPEGs: the model alone, predict (its own process, with its
    peak memory), stock transformers.pipeline at its best batch size, batch-1 latency, and the ratios."""
    model = request.getfixturevalue(folder)
    code = cli_main(["benchmark", "--mode", "predict", "--model", str(model), "--images", "6",
                     "--photo-size", "80x60", "--batch-sizes", "1", "3", "--threads", "1", "--output", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0
    assert f"predict benchmark ({task}): 6 JPEGs of 80x60" in out and "load average" in out
    for row in ("model alone (pytorch, batch 8", "mobilevit predict --runtime pytorch", stock,
                "pytorch forward at batch 1"):
        assert f"| {row}" in out
    assert "predict / model alone (goal >= 0.8):" in out and "predict / transformers.pipeline at its best" in out
    report = json.loads((tmp_path / "predict.json").read_text())
    predict_row = next(r for r in report["rows"] if r["what"].startswith("mobilevit predict"))
    assert predict_row["images_per_s"] > 0 and 50 < predict_row["peak_rss_mb"] < 4000
    assert code == 0 and cli_main(["benchmark", "--mode", "predict", "--images", "0"]) == 2


@pytest.mark.slow
def test_predict_settings_script_compares_configs(load_benchmark_script, capsys):
    script = load_benchmark_script("bench_predict_settings")
    assert script.main(["--images", "4", "--photo-size", "64x48", "--configs", "b1", "b2-nopause-w1", "--rounds", "1",
                        "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "b1:" in out and "b2-nopause-w1:" in out and "of the best" in out and "load average" in out


def test_predict_mode_task_must_match_the_folder(saved_classifier, capsys):
    assert cli_main(["benchmark", "--mode", "predict", "--model", str(saved_classifier), "--task", "detection"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"--task: expected image-classification (what --model {str(saved_classifier)!r} holds) or no "
                        "--task, got object-detection") and len(err.splitlines()) == 1
    assert cli_main(["benchmark", "--mode", "predict", "--task", "depth"]) == 2
    assert "--task: expected one of" in capsys.readouterr().err


@pytest.mark.slow
def test_pipeline_script_times_ours_against_stock_and_compares_labels(load_benchmark_script, capsys):
    script = load_benchmark_script("bench_pipeline")
    assert script.main(["--images", "3", "--photo-size", "64x48", "--stock-batch-sizes", "1", "2", "--rounds", "1",
                        "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "| mobilevit.pipeline (defaults) |" in out and "| transformers.pipeline batch 2 |" in out
    assert "top-1 labels equal to mobilevit.pipeline's: 100.0% of 6" in out and "load average" in out
    with pytest.raises(SystemExit):
        script.main(["--images", "0"])
