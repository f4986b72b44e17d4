"""Issue 27's cases as a user meets them: real `mobilevit` processes, their exit codes and what they print on
stderr. The per-module tests check the same mechanisms in-process and fast (the data mistakes of training, e.g.
resuming after the class folders changed, in test_training_cli.py); these prove them where only a real process
can (signals, concurrent runs, a full disk, worker processes) and are marked slow. tests/bad_input_cases.py runs
a hundred more such processes by hand."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mobilevit.testing_utils import colour_class_folders

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
       "OMP_NUM_THREADS": "1"}
TRAIN = ["train", "--epochs", "1", "--batch-size", "4", "--image-size", "32", "--no-multi-scale"]

pytestmark = pytest.mark.slow


def mobilevit(*argv, cwd: Path, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mobilevit", *map(str, argv)], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=600, **kwargs)


def start(*argv, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mobilevit", *map(str, argv)], cwd=cwd, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def lines(stderr: str) -> list[str]:
    return [line for line in stderr.replace("\r", "\n").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """Data and a small classifier folder, shared by the cases."""
    root = tmp_path_factory.mktemp("e2e")
    colour_class_folders(root / "abc", ["a", "b", "c"])
    colour_class_folders(root / "abcd", ["a", "b", "c", "d"])
    done = mobilevit(*TRAIN, "--data", "abc", "--output-dir", "model", cwd=root)
    assert done.returncode == 0, done.stderr[-2000:]
    return root


# -- every traceback case of the issue: one line, its exit code, nothing written ------------------------------------
def _folder_with(work: Path, name: str, change) -> str:
    import shutil

    folder = work / name
    if not folder.exists():
        shutil.copytree(work / "model", folder)
        change(folder)
    return name


def _edit(path: Path, **fields):
    path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))


CASES = {
    "--epochs inf": (TRAIN + ["--data", "abc", "--epochs", "inf", "--output-dir", "o1"], 2, "epochs: expected a finite"),
    "--seed -1": (TRAIN + ["--data", "abc", "--seed", "-1", "--output-dir", "o2"], 2, "seed: expected an integer from 0"),
    "convert --image-size 8193": (["convert", "--checkpoint", "abc/a/0.png", "--image-size", "8193", "--output-dir",
                                   "o3"], 2, "image_size: expected an integer from 32 to 8192"),
    "dangling --output-dir": (["predict", "abc/a/0.png", "--model", "model", "--output-dir", "dangling"], 1,
                              "is a symbolic link to"),
    "output name too long": (["predict", "abc/a/0.png", "--model", "model", "--output-dir", "d" * 300], 1,
                             "expected names of at most"),
    "processor crop below 32": (["predict", "abc/a/0.png", "--model", "crop16"], 1,
                                "crop_size.height expected 32 to 8192 pixels"),
    "config without model_type": (["predict", "abc/a/0.png", "--model", "untyped"], 1,
                                  "its config.json has no model_type"),
    "--batch-size abc": (TRAIN + ["--data", "abc", "--output-dir", "o4", "--batch-size", "abc"], 2,
                         "argument --batch-size: invalid int value"),
}


_CASES_IN_FORKS = """
import json, os, sys
from mobilevit.cli import start_in_fork
results = []
for index, argv in enumerate(json.loads(sys.argv[1])):
    pid = start_in_fork(argv, ".", f"../e2e-stderr-{index}")
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    results.append((code, open(f"../e2e-stderr-{index}").read()))
    os.remove(f"../e2e-stderr-{index}")
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def mistakes(work):
    """Each case of CASES as its own process: forks of one interpreter, so that the imports are paid once."""
    (work / "dangling").symlink_to(work / "nowhere")
    _folder_with(work, "crop16", lambda f: _edit(f / "preprocessor_config.json", crop_size={"height": 16, "width": 16}))
    _folder_with(work, "untyped", lambda f: (f / "config.json").write_text(
        json.dumps({k: v for k, v in json.loads((f / "config.json").read_text()).items() if k != "model_type"})))
    before = sorted(p.name for p in work.iterdir())
    done = subprocess.run([sys.executable, "-c", _CASES_IN_FORKS, json.dumps([argv for argv, _, _ in CASES.values()])],
                          cwd=work, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in work.iterdir()) == before  # nothing written by any of them
    return dict(zip(CASES, json.loads(done.stdout.strip().splitlines()[-1])))


@pytest.mark.parametrize("name", list(CASES))
def test_mistakes_are_exactly_one_line_before_any_work(mistakes, name):
    _, code, message = CASES[name]
    got, stderr = mistakes[name]
    err = lines(stderr)
    assert got == code and len(err) == 1 and message in err[0] and "Traceback" not in stderr, stderr[-2000:]


# -- two runs, one output -------------------------------------------------------------------------------------------
def test_two_runs_into_one_output_a_second_apart(work, tmp_path):
    """Both exited 0 and the one that finished last silently replaced the other (the 4-class model was gone)."""
    first = start(*TRAIN, "--epochs", "30", "--data", work / "abc", "--output-dir", "race", cwd=tmp_path)
    deadline = time.monotonic() + 300
    while not (tmp_path / ".race.mobilevit-lock").exists():
        assert first.poll() is None and time.monotonic() < deadline, first.stderr.read()[-2000:]
        time.sleep(0.2)
    time.sleep(1)
    second = mobilevit(*TRAIN, "--data", work / "abcd", "--output-dir", "race", cwd=tmp_path)
    _, first_err = first.communicate(timeout=600)
    assert first.returncode == 0, first_err[-2000:]
    err = lines(second.stderr)
    assert second.returncode == 1 and len(err) == 1, second.stderr[-2000:]
    assert f"is being written by another run, process {first.pid}" in err[0] and "--output-dir race" in err[0]
    assert json.loads((tmp_path / "race" / "config.json").read_text())["id2label"] == {"0": "a", "1": "b", "2": "c"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["race"]  # and the lock is gone


# -- signals, a full disk, worker processes --------------------------------------------------------------------------
def _wait_for_training(process: subprocess.Popen, folder: Path) -> None:
    deadline = time.monotonic() + 300
    while not (folder / "checkpoints").exists():
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()[-2000:]
        time.sleep(0.2)
    time.sleep(1)


@pytest.mark.parametrize("sig, code, message", [
    (signal.SIGINT, 130, "mobilevit train: interrupted (Ctrl-C);"),
    (signal.SIGTERM, 143, "mobilevit train: terminated (SIGTERM);"),
])
def test_ctrl_c_and_sigterm_during_training_are_one_line(work, tmp_path, sig, code, message):
    """Ctrl-C printed a KeyboardInterrupt traceback and exited 1."""
    process = start(*TRAIN, "--epochs", "200", "--data", work / "abc", "--output-dir", "out", cwd=tmp_path)
    _wait_for_training(process, tmp_path / "out.partial")
    process.send_signal(sig)
    _, err = process.communicate(timeout=300)
    assert process.returncode == code and "Traceback" not in err, err[-2000:]
    assert lines(err)[-1].startswith(message)
    assert not (tmp_path / "out").exists() and not [p for p in tmp_path.iterdir() if ".mobilevit-" in p.name]


def test_a_full_disk_during_a_conversion_is_one_line_and_leaves_nothing(tmp_path):
    """The temporary folder was cleaned, but the user got a SafetensorError traceback."""
    sys.path.insert(0, str(REPO.parent / "shared" / "fixtures" / "mlcvnets"))
    weights = pytest.importorskip("weights", reason="../shared/fixtures/mlcvnets not found")
    import torch

    manifest = REPO.parent / "shared" / "fixtures" / "mlcvnets" / "mobilevit_xxs.json"
    torch.save(weights.state_dict(str(manifest)), tmp_path / "xxs.pt")
    script = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
              "resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, 1_000_000)); from mobilevit.cli import main; "
              "sys.exit(main(['convert', '--checkpoint', 'xxs.pt', '--output-dir', 'out', '--no-progress']))")
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=ENV, capture_output=True, text=True,
                          timeout=600)
    err = lines(done.stderr)
    assert done.returncode == 1 and len(err) == 1, done.stderr[-2000:]
    assert err[0].startswith("mobilevit convert: error: the file is larger than this system allows")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["xxs.pt"]


def test_data_loader_workers_end_with_a_killed_main_process(work, tmp_path):
    """Workers were left behind when the main process died."""
    process = start(*TRAIN, "--epochs", "200", "--num-workers", "2", "--data", work / "abc", "--output-dir", "out",
                    cwd=tmp_path)
    _wait_for_training(process, tmp_path / "out.partial")
    # workers live for an epoch (a few steps here): look until some are seen, then kill the main process at once
    workers, deadline = [], time.monotonic() + 120
    while not workers and process.poll() is None and time.monotonic() < deadline:
        workers = subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True, text=True).stdout.split()
    assert workers, "no worker processes seen"
    process.kill()
    process.wait()
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in workers if _alive(pid)]


def _alive(pid: str) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_an_export_prints_only_its_own_lines(work, tmp_path):
    """'torchvision is not installed' (four times) and a LeafSpec FutureWarning looked like failures."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    done = mobilevit("export", "--format", "onnx", "--model", work / "model", "--output", tmp_path / "m.onnx",
                     cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert [line.split(" ")[0] for line in lines(done.stderr)] == ["exporting", "running"], done.stderr
