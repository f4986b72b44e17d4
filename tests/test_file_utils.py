import pytest

from mobilevit.file_utils import staged_directory


def test_success_replaces_the_folder_whole_and_leaves_no_staging(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with staged_directory(target, overwrite=True) as staging:
        assert tmp_path in staging.parents and staging.relative_to(tmp_path).parts[0].startswith(".out.")
        (staging / "new.txt").write_text("new")
        assert (target / "old.txt").exists()  # untouched until the block succeeds
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_failure_keeps_the_old_folder_and_removes_the_staging(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with staged_directory(target, overwrite=True) as staging:
            (staging / "half.txt").write_text("half")
            raise RuntimeError("boom")
    assert (target / "old.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_new_folder_appears_only_on_success(tmp_path):
    target = tmp_path / "nested" / "out"
    with pytest.raises(ValueError):
        with staged_directory(target):
            raise ValueError
    assert not target.exists()
    with staged_directory(target) as staging:
        (staging / "a").write_text("a")
    assert (target / "a").read_text() == "a"


# -- checks before any work --------------------------------------------------------------------------------------
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

from mobilevit.errors import EXIT_DATA, EXIT_USAGE, UserError
from mobilevit.file_utils import check_output_dir, remove_abandoned_leftovers, write_file_atomically

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("output, inputs, replaces, message, code", [
    ("data", [("--data", "data")], True, "--output-dir: expected a folder other than the input --data, got the same "
                                         "path", EXIT_USAGE),
    ("data/out", [("--data", "data")], True, "expected a folder outside the input --data", EXIT_USAGE),
    ("data", [("--data", "data/cat")], True, "that does not hold the input --data", EXIT_USAGE),
    ("ckpts", [("--checkpoint", "ckpts/x.pt")], True, "replacing it would delete that input", EXIT_USAGE),
    ("file.txt", [], True, "expected a folder, got 'file.txt', which is a file", EXIT_DATA),
    ("file.txt/sub", [], True, "but '{tmp}/file.txt' is a file", EXIT_DATA),
    ("data/masks", [("--model", "data")], False, "expected a folder outside the input --model", EXIT_USAGE),
])
def test_output_dir_is_refused_where_it_would_touch_an_input(tmp_path, monkeypatch, output, inputs, replaces,
                                                              message, code):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "cat").mkdir(parents=True)
    (tmp_path / "ckpts").mkdir()
    (tmp_path / "ckpts" / "x.pt").write_bytes(b"weights")
    (tmp_path / "file.txt").write_text("text")
    with pytest.raises(UserError) as caught:
        check_output_dir(output, "--output-dir", inputs, replaces=replaces)
    assert message.format(tmp=tmp_path) in str(caught.value) and caught.value.exit_code == code


def test_output_dir_checks_allow_what_is_safe(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.jpg").write_bytes(b"jpg")
    # predict writes files into a folder that holds its images; nothing of theirs is replaced
    assert check_output_dir(tmp_path / "photos", "--output-dir", [("IMAGE", tmp_path / "photos" / "a.jpg")],
                            replaces=False) == tmp_path / "photos"
    assert check_output_dir(tmp_path / "new" / "deeper", "--output-dir", overwrite=False) == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # a check creates nothing
    with pytest.raises(UserError, match="holds files .pass --overwrite"):
        check_output_dir(tmp_path / "photos", "--output-dir", overwrite=False)
    check_output_dir(tmp_path / "photos", "--output-dir", overwrite=True)


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_output_dir_without_write_permission(tmp_path):
    (tmp_path / "locked").mkdir()
    (tmp_path / "locked").chmod(0o500)
    try:
        with pytest.raises(UserError, match="no write permission"):
            check_output_dir(tmp_path / "locked" / "out", "--output-dir")
    finally:
        (tmp_path / "locked").chmod(0o700)


# -- files written whole, with ordinary permissions ---------------------------------------------------------------
def test_atomic_file_has_ordinary_permissions_and_no_leftovers(tmp_path):
    mask = os.umask(0o022)
    try:
        write_file_atomically(tmp_path / "a" / "mask.png", b"png")
    finally:
        os.umask(mask)
    written = tmp_path / "a" / "mask.png"
    assert written.read_bytes() == b"png" and stat.S_IMODE(written.stat().st_mode) == 0o644
    assert os.listdir(tmp_path / "a") == ["mask.png"]


# -- leftovers of killed runs ---------------------------------------------------------------------------------------
_KILLED_WRITER = """
import importlib.util, os, sys, time
from pathlib import Path
sys.path.insert(0, {repo!r})
from mobilevit.file_utils import staged_directory, write_file_atomically
target = Path(sys.argv[1])
with staged_directory(target) as staging:
    (staging / "config.json").write_text("half")
    Path(sys.argv[2]).write_text("writing")
    time.sleep(600)
"""


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".mobilevit-" in p.name)


def test_a_real_kill_mid_write_leaves_staging_that_the_next_run_removes(tmp_path):
    target, started = tmp_path / "model", tmp_path / "started"
    target.mkdir()
    (target / "old.txt").write_text("previous output")
    child = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER.format(repo=str(REPO)), str(target), str(started)])
    try:
        deadline = time.monotonic() + 120
        while not started.exists():
            assert child.poll() is None and time.monotonic() < deadline, "the writer did not start"
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait()
    left = _leftovers(tmp_path)
    assert len(left) == 1 and left[0].startswith(".model.mobilevit-") and left[0].endswith(".tmp")
    assert (target / "old.txt").read_text() == "previous output"

    with staged_directory(target, overwrite=True) as staging:
        (staging / "new.txt").write_text("new")
    assert _leftovers(tmp_path) == [] and sorted(os.listdir(target)) == ["new.txt"]


def _fake_leftover(parent: Path, name: str, pid: int, kind: str = "tmp", start: int = 0) -> Path:
    from mobilevit.file_utils import _host_id

    path = parent / f".{name}.mobilevit-{_host_id()}-{pid}-{start}.abc123.{kind}"
    path.mkdir()
    return path


def test_only_leftovers_of_ended_processes_are_removed(tmp_path):
    gone = 2 ** 22 + 12345  # above Linux's largest process id: no such process
    dead = _fake_leftover(tmp_path, "out", gone)
    mine = _fake_leftover(tmp_path, "out", os.getpid())  # this process is alive: in use
    alive = _fake_leftover(tmp_path, "out", os.getppid())
    other_output = _fake_leftover(tmp_path, "other", gone)
    foreign = tmp_path / ".out.someone-else.tmp"
    foreign.mkdir()
    assert remove_abandoned_leftovers(tmp_path / "out") == [dead]
    assert not dead.exists() and mine.exists() and alive.exists() and other_output.exists() and foreign.exists()


def test_a_swap_cut_off_between_its_two_renames_gets_the_previous_output_back(tmp_path):
    aside = _fake_leftover(tmp_path, "out", 2 ** 22 + 7, kind="old")
    (aside / "out").mkdir()
    (aside / "out" / "weights").write_text("previous")
    assert remove_abandoned_leftovers(tmp_path / "out") == [aside]
    assert (tmp_path / "out" / "weights").read_text() == "previous" and not aside.exists()


def test_a_killed_writers_temporary_file_is_removed_by_the_next_write(tmp_path):
    from mobilevit.file_utils import _host_id

    stale = tmp_path / f".mask.png.mobilevit-{_host_id()}-{2 ** 22 + 3}-0.x1y2z3.tmp"
    stale.write_bytes(b"")  # what a killed predict leaves: a temporary file, maybe empty
    write_file_atomically(tmp_path / "mask.png", b"png")
    assert os.listdir(tmp_path) == ["mask.png"]
