"""Bad-input cases beyond the tests: run each as a user would (its own `mobilevit` process) and count the clean ones.

    python tests/bad_input_cases.py [--jobs 2] [--only WORD] [--keep DIR] [--json FILE] [--new-processes]

Issue 27 asks how many cases were tried beyond its own list and how many end cleanly. A case is clean when the
process exits 1 or 2, stderr ends with its one error line, `mobilevit <command>: error: ...`, holds no traceback,
and nothing was written: the case's own working folder is still empty (and the shared inputs are unchanged, for
the whole run). Clean cases whose error line is not alone on stderr (progress bars, which stay on screen as lines
where stderr is a file; the bad files of a data set named as the check finds them) are marked `clean*`.

Each case is a fork of this process (`mobilevit.cli.start_in_fork`: the imports are paid once, about 5 minutes for
all on a loaded 2-core machine); `--new-processes` starts a new interpreter per case instead (`python -m
mobilevit`, as a user does; 10 times slower). The script prints one row per case and the totals, and exits 1 when
a case is not clean. It is not collected by pytest (minutes, not seconds); the classes it found are tested in the
test modules.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
       "OMP_NUM_THREADS": "1"}
TRAIN = ["train", "--epochs", "1", "--batch-size", "4", "--image-size", "32", "--no-multi-scale"]
PREDICT = ["predict", "{data}/abc/a/0.png", "--model", "{data}/model"]
EXPORT = ["export", "--format", "onnx", "--model", "{data}/model"]


def model_variant(data: Path, name: str, change) -> None:
    """A copy of the trained model folder with one thing broken."""
    shutil.copytree(data / "model", data / name)
    change(data / name)


def edit_json(path: Path, **fields) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))


def prepare(data: Path) -> None:
    """The inputs every case reads: class folders, a small trained classifier, and broken copies of each."""
    import torch

    from mobilevit.testing_utils import colour_class_folders

    colour_class_folders(data / "abc", ["a", "b", "c"])
    colour_class_folders(data / "xyz", ["x", "y", "z"])
    colour_class_folders(data / "single", ["a"])
    colour_class_folders(data / "emptyclass", ["a", "b"])
    (data / "emptyclass" / "c").mkdir()
    colour_class_folders(data / "textimage", ["a", "b"])
    (data / "textimage" / "a" / "notes.png").write_text("not an image")
    (data / "empty").mkdir()
    (data / "notes.txt").write_text("hello")
    (data / "empty.pt").write_bytes(b"")
    torch.save([1, 2, 3], data / "list.pt")
    torch.save({"banana.weight": torch.zeros(3)}, data / "bananas.pt")
    (data / "fake.safetensors").write_text(json.dumps({"a": 1}))
    (data / "labels.json").write_text("{not json")
    (data / "labels_list.json").write_text(json.dumps(["a", "b"]))
    done = subprocess.run([sys.executable, "-m", "mobilevit", *TRAIN, "--data", data / "abc", "--output-dir",
                           data / "model"], env=ENV, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"could not train the model the cases use:\n{done.stderr[-3000:]}")
    model_variant(data, "config_not_json", lambda f: (f / "config.json").write_text("{"))
    model_variant(data, "config_a_list", lambda f: (f / "config.json").write_text("[1, 2]"))
    model_variant(data, "config_labels_mismatch",
                  lambda f: edit_json(f / "config.json", id2label={"0": "a", "1": "b"}, label2id={"a": 0, "b": 1}))
    model_variant(data, "config_image_size_text", lambda f: edit_json(f / "config.json", image_size="big"))
    model_variant(data, "config_unknown_type", lambda f: edit_json(f / "config.json", model_type="resnet"))
    model_variant(data, "weights_missing", lambda f: (f / "model.safetensors").unlink())
    model_variant(data, "weights_truncated", lambda f: (f / "model.safetensors").write_bytes(
        (f / "model.safetensors").read_bytes()[:1000]))
    model_variant(data, "processor_not_json", lambda f: (f / "preprocessor_config.json").write_text("{"))
    model_variant(data, "processor_nan_rescale",
                  lambda f: edit_json(f / "preprocessor_config.json", rescale_factor=float("nan")))
    model_variant(data, "processor_short_mean",
                  lambda f: edit_json(f / "preprocessor_config.json", image_mean=[0.5, 0.5], do_normalize=True))
    model_variant(data, "processor_negative_std",
                  lambda f: edit_json(f / "preprocessor_config.json", image_std=[0.0, 0.0, 0.0], image_mean=[0, 0, 0],
                                      do_normalize=True))
    model_variant(data, "processor_huge_edge", lambda f: edit_json(f / "preprocessor_config.json",
                                                                   size={"shortest_edge": 100000}))


# name: (argv, the exit code a user should get). "{data}" is the shared inputs; outputs are relative to the case's
# own empty working folder.
CASES = {
    # train: values
    "train --epochs 0": (TRAIN + ["--data", "{data}/abc", "--epochs", "0", "--output-dir", "o"], 2),
    "train --epochs 1e9": (TRAIN + ["--data", "{data}/abc", "--epochs", "1e9", "--output-dir", "o"], 2),
    "train --epochs nan": (TRAIN + ["--data", "{data}/abc", "--epochs", "nan", "--output-dir", "o"], 2),
    "train --batch-size 0": (TRAIN + ["--data", "{data}/abc", "--batch-size", "0", "--output-dir", "o"], 2),
    "train --batch-size -3": (TRAIN + ["--data", "{data}/abc", "--batch-size", "-3", "--output-dir", "o"], 2),
    "train --eval-batch-size 0": (TRAIN + ["--data", "{data}/abc", "--eval-batch-size", "0", "--output-dir", "o"], 2),
    "train --eval-batch-size 10**9": (TRAIN + ["--data", "{data}/abc", "--eval-batch-size", "1000000000",
                                               "--output-dir", "o"], 2),
    "train --learning-rate nan": (TRAIN + ["--data", "{data}/abc", "--learning-rate", "nan", "--output-dir", "o"], 2),
    "train --learning-rate -1": (TRAIN + ["--data", "{data}/abc", "--learning-rate", "-1", "--output-dir", "o"], 2),
    "train --weight-decay -1": (TRAIN + ["--data", "{data}/abc", "--weight-decay", "-1", "--output-dir", "o"], 2),
    "train --warmup-ratio 2": (TRAIN + ["--data", "{data}/abc", "--warmup-ratio", "2", "--output-dir", "o"], 2),
    "train --flip-prob 1.5": (TRAIN + ["--data", "{data}/abc", "--flip-prob", "1.5", "--output-dir", "o"], 2),
    "train --crop-scale 0.9,0.1": (TRAIN + ["--data", "{data}/abc", "--crop-scale", "0.9,0.1", "--output-dir", "o"], 2),
    "train --crop-scale a,b": (TRAIN + ["--data", "{data}/abc", "--crop-scale", "a,b", "--output-dir", "o"], 2),
    "train --crop-ratio 0,1": (TRAIN + ["--data", "{data}/abc", "--crop-ratio", "0,1", "--output-dir", "o"], 2),
    "train --multi-scale-range 64,32": (["train", "--epochs", "1", "--data", "{data}/abc", "--multi-scale",
                                         "--multi-scale-range", "64,32", "--output-dir", "o"], 2),
    "train --multi-scale-range 32": (["train", "--epochs", "1", "--data", "{data}/abc", "--multi-scale",
                                      "--multi-scale-range", "32", "--output-dir", "o"], 2),
    "train --image-size -32": (TRAIN + ["--data", "{data}/abc", "--image-size", "-32", "--output-dir", "o"], 2),
    "train --eval-resize 100000": (TRAIN + ["--data", "{data}/abc", "--eval-resize", "100000", "--output-dir", "o"], 2),
    "train --threads 0": (TRAIN + ["--data", "{data}/abc", "--threads", "0", "--output-dir", "o"], 2),
    "train --threads 100000": (TRAIN + ["--data", "{data}/abc", "--threads", "100000", "--output-dir", "o"], 2),
    "train --num-workers -1": (TRAIN + ["--data", "{data}/abc", "--num-workers", "-1", "--output-dir", "o"], 2),
    "train --seed 2**32": (TRAIN + ["--data", "{data}/abc", "--seed", "4294967296", "--output-dir", "o"], 2),
    "train --seed 1.5": (TRAIN + ["--data", "{data}/abc", "--seed", "1.5", "--output-dir", "o"], 2),
    "train --variant banana": (TRAIN + ["--data", "{data}/abc", "--variant", "banana", "--output-dir", "o"], 2),
    "train --task banana": (TRAIN + ["--data", "{data}/abc", "--task", "banana", "--output-dir", "o"], 2),
    # train: what the arguments name
    "train --data missing": (TRAIN + ["--data", "{data}/nowhere", "--output-dir", "o"], 1),
    "train --data a file": (TRAIN + ["--data", "{data}/notes.txt", "--output-dir", "o"], 1),
    "train --data an empty folder": (TRAIN + ["--data", "{data}/empty", "--output-dir", "o"], 1),
    "train --data one class": (TRAIN + ["--data", "{data}/single", "--output-dir", "o"], 1),
    "train --data a class without images": (TRAIN + ["--data", "{data}/emptyclass", "--output-dir", "o"], 1),
    "train --data a text file named .png": (TRAIN + ["--data", "{data}/textimage", "--output-dir", "o"], 1),
    "train --model missing": (TRAIN + ["--data", "{data}/abc", "--model", "{data}/nowhere", "--output-dir", "o"], 1),
    "train --model a file": (TRAIN + ["--data", "{data}/abc", "--model", "{data}/notes.txt", "--output-dir", "o"], 1),
    "train --model truncated weights": (TRAIN + ["--data", "{data}/abc", "--model", "{data}/weights_truncated",
                                                 "--output-dir", "o"], 1),
    "train --labels missing": (TRAIN + ["--data", "{data}/abc", "--labels", "{data}/nowhere.json", "--output-dir",
                                        "o"], 1),
    "train --labels not JSON": (TRAIN + ["--data", "{data}/abc", "--labels", "{data}/labels.json", "--output-dir",
                                         "o"], 1),
    "train --output-dir an existing file": (TRAIN + ["--data", "{data}/abc", "--output-dir", "{data}/notes.txt"], 1),
    "train --output-dir inside --data": (TRAIN + ["--data", "{data}/abc", "--output-dir", "{data}/abc/out"], 2),
    "train --output-stride 7": (TRAIN + ["--data", "{data}/abc", "--output-stride", "7", "--output-dir", "o"], 2),
    # predict
    "predict a missing image": (["predict", "{data}/nowhere.png", "--model", "{data}/model"], 1),
    "predict a folder as image": (["predict", "{data}/abc", "--model", "{data}/model"], 1),
    "predict a text file as image": (["predict", "{data}/notes.txt", "--model", "{data}/model"], 1),
    "predict --top-k 10**6": (PREDICT + ["--top-k", "1000000"], 2),
    "predict --top-k -1": (PREDICT + ["--top-k", "-1"], 2),
    "predict --threshold 1.5": (PREDICT + ["--threshold", "1.5"], 2),
    "predict --threshold nan": (PREDICT + ["--threshold", "nan"], 2),
    "predict --max-detections 0": (PREDICT + ["--max-detections", "0"], 2),
    "predict --task depth-estimation": (PREDICT + ["--task", "depth-estimation"], 2),
    "predict --task semantic-segmentation on a classifier": (PREDICT + ["--task", "semantic-segmentation"], 2),
    "predict --device cuda:99": (PREDICT + ["--device", "cuda:99"], 1),
    "predict --model missing (offline)": (["predict", "{data}/abc/a/0.png", "--model", "{data}/nowhere"], 1),
    "predict --model an empty folder": (["predict", "{data}/abc/a/0.png", "--model", "{data}/empty"], 1),
    "predict config.json not JSON": (["predict", "{data}/abc/a/0.png", "--model", "{data}/config_not_json"], 1),
    "predict config.json a list": (["predict", "{data}/abc/a/0.png", "--model", "{data}/config_a_list"], 1),
    "predict id2label shorter than the head": (["predict", "{data}/abc/a/0.png", "--model",
                                                "{data}/config_labels_mismatch"], 1),
    "predict config image_size text": (["predict", "{data}/abc/a/0.png", "--model", "{data}/config_image_size_text"],
                                       1),
    "predict config of another model_type": (["predict", "{data}/abc/a/0.png", "--model",
                                              "{data}/config_unknown_type"], 1),
    "predict weights missing": (["predict", "{data}/abc/a/0.png", "--model", "{data}/weights_missing"], 1),
    "predict weights truncated": (["predict", "{data}/abc/a/0.png", "--model", "{data}/weights_truncated"], 1),
    "predict preprocessor_config not JSON": (["predict", "{data}/abc/a/0.png", "--model",
                                              "{data}/processor_not_json"], 1),
    "predict processor rescale_factor NaN": (["predict", "{data}/abc/a/0.png", "--model",
                                              "{data}/processor_nan_rescale"], 1),
    "predict processor mean of 2 channels": (["predict", "{data}/abc/a/0.png", "--model",
                                              "{data}/processor_short_mean"], 1),
    "predict processor std of zeros": (["predict", "{data}/abc/a/0.png", "--model",
                                        "{data}/processor_negative_std"], 1),
    "predict processor shortest_edge 100000": (["predict", "{data}/abc/a/0.png", "--model",
                                                "{data}/processor_huge_edge"], 1),
    "predict --output-dir an existing file": (PREDICT + ["--output-dir", "{data}/notes.txt"], 1),
    "predict --output-dir the model's folder": (PREDICT + ["--output-dir", "{data}/model", "--overwrite"], 2),
    # convert
    "convert a missing checkpoint": (["convert", "--checkpoint", "{data}/nowhere.pt", "--output-dir", "o"], 1),
    "convert an empty file": (["convert", "--checkpoint", "{data}/empty.pt", "--output-dir", "o"], 1),
    "convert a pickled list": (["convert", "--checkpoint", "{data}/list.pt", "--output-dir", "o"], 1),
    "convert a state dict of other keys": (["convert", "--checkpoint", "{data}/bananas.pt", "--output-dir", "o"], 1),
    "convert a JSON named .safetensors": (["convert", "--checkpoint", "{data}/fake.safetensors", "--output-dir",
                                           "o"], 1),
    "convert a folder as checkpoint": (["convert", "--checkpoint", "{data}/abc", "--output-dir", "o"], 1),
    "convert --variant banana": (["convert", "--checkpoint", "{data}/bananas.pt", "--variant", "banana",
                                  "--output-dir", "o"], 2),
    "convert --output-stride 5": (["convert", "--checkpoint", "{data}/bananas.pt", "--output-stride", "5",
                                   "--output-dir", "o"], 2),
    "convert --image-size 0": (["convert", "--checkpoint", "{data}/bananas.pt", "--image-size", "0",
                                "--output-dir", "o"], 2),
    "convert --fix-preprocessing a missing folder": (["convert", "--fix-preprocessing", "{data}/nowhere"], 1),
    "convert --fix-preprocessing a non-model folder": (["convert", "--fix-preprocessing", "{data}/abc"], 1),
    # export
    "export --format banana": (["export", "--format", "banana", "--model", "{data}/model", "--output", "m.x"], 2),
    "export --model missing": (["export", "--format", "onnx", "--model", "{data}/nowhere", "--output", "m.onnx"], 1),
    "export --model truncated weights": (["export", "--format", "onnx", "--model", "{data}/weights_truncated",
                                          "--output", "m.onnx"], 1),
    "export --calibration-size 0": (EXPORT + ["--output", "m.onnx", "--quantize", "int8", "--calibration-data",
                                              "{data}/abc", "--calibration-size", "0"], 2),
    "export --eval-data missing": (EXPORT + ["--output", "m.onnx", "--eval-data", "{data}/nowhere"], 1),
    "export --eval-data of other classes": (EXPORT + ["--output", "m.onnx", "--eval-data", "{data}/xyz"], 1),
    "export --threads 0": (EXPORT + ["--output", "m.onnx", "--threads", "0"], 2),
    "export --image-size 31": (EXPORT + ["--output", "m.onnx", "--image-size", "31"], 2),
    "export --image-size 100000": (EXPORT + ["--output", "m.onnx", "--image-size", "100000"], 2),
    "export --output onto the model's weights": (EXPORT + ["--output", "{data}/model/model.safetensors",
                                                           "--overwrite"], 2),
    "export --output an existing folder": (EXPORT + ["--output", "{data}/empty"], 2),
    # benchmark
    "benchmark --variants banana": (["benchmark", "--variants", "banana"], 2),
    "benchmark --batch-sizes 1,x": (["benchmark", "--batch-sizes", "1,x"], 2),
    "benchmark --batch-sizes 10**9": (["benchmark", "--batch-sizes", "1000000000"], 2),
    "benchmark --repeats 0": (["benchmark", "--repeats", "0"], 2),
    "benchmark --repeats 10**9": (["benchmark", "--repeats", "1000000000"], 2),
    "benchmark --warmup -1": (["benchmark", "--warmup", "-1"], 2),
    "benchmark --background-load 100000": (["benchmark", "--background-load", "100000"], 2),
    "benchmark --image-size 100000": (["benchmark", "--image-size", "100000"], 2),
    "benchmark --threads 100000": (["benchmark", "--threads", "100000"], 2),
    "benchmark --candidates banana": (["benchmark", "--candidates", "banana"], 2),
    "benchmark --allocator banana": (["benchmark", "--allocator", "banana"], 2),
    "benchmark --task banana": (["benchmark", "--task", "banana"], 2),
    "benchmark --output an existing file": (["benchmark", "--variants", "xx-small", "--batch-sizes", "1",
                                             "--repeats", "1", "--warmup", "0", "--output", "{data}/notes.txt"], 1),
    # demo and the command itself
    "demo --seed -5": (["demo", "--seed", "-5", "--output-dir", "o"], 2),
    "demo --threads 0": (["demo", "--threads", "0", "--output-dir", "o"], 2),
    "demo --output-dir an existing file": (["demo", "--output-dir", "{data}/notes.txt"], 1),
    "an unknown command": (["banana"], 2),
    "no arguments to train": (["train"], 2),
}


def run_in_forks(names: list[str], data: Path, scratch: Path, jobs: int) -> list[dict]:
    """The cases, `jobs` at a time, each in a fork of this process (`mobilevit.cli.start_in_fork`)."""
    from mobilevit.cli import start_in_fork

    waiting, running, results = list(names), {}, {}
    while waiting or running:
        while waiting and len(running) < jobs:
            name = waiting.pop(0)
            cwd = Path(tempfile.mkdtemp(dir=scratch))
            pid = start_in_fork(substitute(CASES[name][0], data), cwd, cwd.parent / f"{cwd.name}.stderr")
            running[pid] = (name, cwd, time.monotonic())
        pid, status = os.wait()
        name, cwd, started = running.pop(pid)
        stderr_file = cwd.parent / f"{cwd.name}.stderr"
        stderr = stderr_file.read_text(errors="replace")
        stderr_file.unlink()
        results[name] = judge(name, os.waitstatus_to_exitcode(status), stderr, cwd, time.monotonic() - started)
    return [results[name] for name in names]


def substitute(argv: list[str], data: Path) -> list[str]:
    return [a.replace("{data}", str(data)) for a in argv]


def run_in_new_process(name: str, data: Path, scratch: Path) -> dict:
    cwd = Path(tempfile.mkdtemp(dir=scratch))
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "mobilevit", *substitute(CASES[name][0], data)], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=900)
    return judge(name, done.returncode, done.stderr, cwd, time.monotonic() - started)


PROGRESS_BAR = re.compile(r"\d+%\||\d+/\d+ \[|\d+(\.\d+)?(it|step|example)/s\]")


def judge(name: str, returncode: int, stderr: str, cwd: Path, seconds: float) -> dict:
    """Clean: exit 1 or 2, one error line on stderr, `mobilevit <command>: error: ...`, no traceback, nothing
    left in the case's folder. `alone`: the error line is all there is; otherwise `before` counts the progress bars
    (left as lines where stderr is not a terminal) and other lines (e.g. each bad file as a data check finds it)
    printed before it."""
    argv, code = CASES[name]
    lines = [line for line in stderr.replace("\r", "\n").splitlines() if line.strip()]
    command = "mobilevit " + argv[0] if argv[0] in {"train", "predict", "convert", "export", "benchmark", "demo"} \
        else "mobilevit"
    errors = [line for line in lines if line.startswith(f"{command}: error: ")]
    problems = []  # what makes a case not clean
    if returncode not in (1, 2):
        problems.append(f"exit {returncode}")
    if "Traceback" in stderr:
        problems.append("traceback")
    if len(errors) != 1 or lines[-1] != errors[0]:
        problems.append(f"{len(errors)} error lines, {len(lines)} lines on stderr")
    if any(cwd.iterdir()):
        problems.append(f"left {sorted(p.name for p in cwd.iterdir())}")
    bars = sum(bool(PROGRESS_BAR.search(line)) for line in lines[:-1])
    # 1 where 2 was meant (or the other way) is still a clean one-line error; it is counted apart
    return {"name": name, "clean": not problems, "alone": not problems and len(lines) == 1,
            "before": {"progress bars": bars, "other lines": len(lines) - 1 - bars} if lines else {},
            "other_code": returncode in (1, 2) and returncode != code, "problems": problems,
            "seconds": round(seconds, 1), "last_line": lines[-1][:300] if lines else "", "stderr": stderr[-3000:]}


def fingerprint(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        digest.update(str(path.relative_to(folder)).encode())
        if path.is_file() and not path.is_symlink():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2, help="cases run at once")
    parser.add_argument("--new-processes", action="store_true",
                        help="run each case in a new interpreter (`python -m mobilevit`) instead of a fork of this one")
    parser.add_argument("--only", default="", help="run only the cases whose name holds this word")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temporary one)")
    parser.add_argument("--json", type=Path, help="also write every result (stderr included) to this file")
    args = parser.parse_args(argv)
    os.environ.update(ENV)  # before anything imports huggingface_hub: the forked cases see what a new process would
    root = Path(tempfile.mkdtemp(prefix="mobilevit-cases-")) if args.keep is None else args.keep
    data, scratch = root / "data", root / "scratch"
    if not (data / "model").exists():
        shutil.rmtree(data, ignore_errors=True)
        prepare(data)
    scratch.mkdir(parents=True, exist_ok=True)
    before = fingerprint(data)
    names = [name for name in CASES if args.only in name]
    if args.new_processes:
        with ThreadPoolExecutor(args.jobs) as pool:
            results = list(pool.map(lambda name: run_in_new_process(name, data, scratch), names))
    else:
        results = run_in_forks(names, data, scratch, args.jobs)
    for result in results:
        mark = "NOT CLEAN" if not result["clean"] else "clean" if result["alone"] else "clean*"
        notes = result["problems"] + ([f"exit {CASES[result['name']][1]} expected"] if result["other_code"] else [])
        if result["clean"] and not result["alone"]:
            notes.append(", ".join(f"{n} {what}" for what, n in result["before"].items() if n) + " before it")
        detail = f" [{'; '.join(notes)}]" if notes else ""
        print(f"{mark:9} {result['name']}{detail}\n          {result['last_line']}")
    changed = fingerprint(data) != before
    clean, alone = sum(r["clean"] for r in results), sum(r["alone"] for r in results)
    print(f"\n{len(results)} cases tried: {clean} clean ({alone} with the error line alone on stderr, "
          f"{clean - alone} after progress output: clean*), {len(results) - clean} not clean; exit 1 / 2 other "
          f"than expected: {sum(r['other_code'] for r in results)}; inputs {'CHANGED' if changed else 'unchanged'}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    if args.keep is None:
        shutil.rmtree(root, ignore_errors=True)
    return int(clean < len(results) or changed)


if __name__ == "__main__":
    sys.exit(main())
