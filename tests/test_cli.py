"""The command line answers help and usage errors without loading torch or transformers (seconds of imports):
asserted on what gets imported, not on time."""

import json
import os
import subprocess
import sys
from pathlib import Path

PROBE = """
import json, sys
from mobilevit import cli

results = []
for argv in json.loads(sys.argv[1]):
    try:
        code = cli.main(argv)
    except SystemExit as exit:  # argparse: --help (0) and its own usage errors (2)
        code = exit.code
    results.append(code)
heavy = sorted(name for name in ("torch", "transformers") if name in sys.modules)
print(json.dumps({"codes": results, "heavy": heavy}))
"""

CASES = [
    (["--help"], 0),
    ([], 0),
    (["train", "--help"], 0),
    (["predict", "--help"], 0),
    (["bogus-command"], 2),
    (["predict"], 2),  # the images and --model are required
    (["predict", "photo.jpg", "--model", "m", "--runtime", "tvm"], 2),
    (["predict", "photo.jpg", "--model", "m", "--top-k", "0"], 2),
    (["predict", "photo.jpg", "--model", "m", "--batch-size", "100000"], 2),
    (["predict", "photo.jpg", "--model", "m", "--workers", "-1"], 2),
    (["predict", "photo.jpg", "--model", "m", "--device", "banana"], 2),
    (["predict", "photo.jpg", "--model", "m", "--task", "depth-estimation"], 2),
    (["predict", "photo.jpg", "--model", "m", "--resume", "--overwrite", "--output-dir", "x"], 2),
    (["benchmark", "--help"], 0),
    (["benchmark", "--batch-sizes", "x"], 2),
    (["benchmark", "--mode", "predict", "--images", "0"], 2),
    (["benchmark", "--mode", "predict", "--task", "depth"], 2),
    (["train", "--data"], 2),
    (["train", "--epochs", "ten", "--data", "d", "--output-dir", "o"], 2),
]


def test_help_and_usage_errors_import_neither_torch_nor_transformers():
    environment = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    completed = subprocess.run([sys.executable, "-c", PROBE, json.dumps([argv for argv, _ in CASES])],
                               capture_output=True, text=True, env=environment, timeout=300)
    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert report["codes"] == [code for _, code in CASES], completed.stderr
    assert report["heavy"] == [], f"imported while parsing: {report['heavy']}"
    errors = [line for line in completed.stderr.splitlines() if line.startswith("mobilevit predict: error: ")]
    assert ("mobilevit predict: error: --top-k: expected an integer from 1 to 100000 (more than a picture or a JSON "
            "file of results can usefully hold), got 0") in errors
    assert any(line.startswith("mobilevit predict: error: --device: expected a torch device") for line in errors)


def test_the_package_imports_lazily_and_still_gives_every_name():
    code = ("import sys, mobilevit; assert 'torch' not in sys.modules; from mobilevit import MobileViTConfig, "
            "pipeline, auto; assert 'torch' in sys.modules and mobilevit.auto is auto; "
            "import mobilevit.training as t; assert t.TrainJob.__name__ == 'TrainJob'; print(sorted(mobilevit.__all__) "
            "== sorted(n for n in mobilevit.__all__ if hasattr(mobilevit, n)))")
    environment = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment,
                               timeout=300)
    assert completed.returncode == 0 and completed.stdout.strip() == "True", completed.stderr


def test_start_time_script_times_every_command(load_benchmark_script, capsys):
    """benchmarks/bench_cli_start.py: every command timed in a fresh process of this tree, its exit code checked."""
    script = load_benchmark_script("bench_cli_start")
    assert script.main(["--rounds", "1"]) == 0
    out = capsys.readouterr().out
    assert all(f"| {command} | " in out for command in script.COMMANDS) and "load average" in out
