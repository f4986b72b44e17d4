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
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

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


# -- one run per output (issue 27: two runs into one output both exited 0, the last one's output won) ---------------
def _in_child(work) -> int:
    """Fork; the child runs `work()` and exits (a test of what another process does, without a new interpreter's
    imports); returns its pid."""
    pid = os.fork()
    if pid == 0:
        try:
            work()
        finally:
            os._exit(0)
    return pid


@pytest.fixture
def held_elsewhere(tmp_path):
    """Another process holding the claim on tmp_path/out, as a run in progress does; killed afterwards."""
    from mobilevit.file_utils import claim_output

    ready, done = os.pipe()

    def hold():
        with claim_output(tmp_path / "out", "--output-dir", replaces=True):
            os.write(done, b"x")
            time.sleep(600)

    pid = _in_child(hold)
    assert os.read(ready, 1) == b"x"
    yield pid
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


def test_a_second_run_on_a_claimed_output_is_one_line_naming_the_first(tmp_path, held_elsewhere, capsys):
    from mobilevit.cli import main
    from mobilevit.file_utils import claim_output

    (tmp_path / "x.pt").write_bytes(b"not read: the claim is checked first")
    code = main(["convert", "--checkpoint", str(tmp_path / "x.pt"), "--output-dir", str(tmp_path / "out"),
                 "--no-progress"])
    err = capsys.readouterr().err
    assert code == EXIT_DATA and len(err.strip().splitlines()) == 1, err
    assert f"is being written by another run, process {held_elsewhere}, started " in err
    # inside or around the claimed folder is refused too; elsewhere is free
    for path, where in ((tmp_path / "out" / "sub", "around this output"), (tmp_path, "inside")):
        with pytest.raises(UserError, match=where):
            claim_output(path, "--output-dir", replaces=True)
    with claim_output(tmp_path / "other", "--output-dir"):
        pass


def test_a_claim_ends_with_its_process_however_it_ends(tmp_path, held_elsewhere):
    from mobilevit.file_utils import claim_output, lock_path

    os.kill(held_elsewhere, signal.SIGKILL)
    os.waitpid(held_elsewhere, 0)
    assert lock_path(tmp_path / "out").exists()  # the file stays; the kernel dropped the lock
    with claim_output(tmp_path / "out", "--output-dir") as claim:
        assert json.loads(claim.lock.read_text())["pid"] == os.getpid()
    assert not lock_path(tmp_path / "out").exists() and list(tmp_path.iterdir()) == []


def test_the_claim_is_checked_again_at_the_final_move(tmp_path):
    from mobilevit.file_utils import claim_output

    with claim_output(tmp_path / "out", "--output-dir") as claim:
        with pytest.raises(UserError, match="claim on .* was lost"):
            with staged_directory(tmp_path / "out") as staging:
                (staging / "weights").write_text("new")
                claim.lock.unlink()  # someone removed the lock file while the run worked
    assert not (tmp_path / "out").exists()


def test_an_output_that_appears_meanwhile_is_not_replaced(tmp_path):
    with pytest.raises(UserError, match=r"'.*out' appeared while this run worked; it was left alone, and this run's "
                                        r"result is in '.*out.unplaced-\d+'"):
        with staged_directory(tmp_path / "out") as staging:
            (staging / "weights").write_text("new")
            (tmp_path / "out").mkdir()
            (tmp_path / "out" / "mine.txt").write_text("someone else's")
    assert (tmp_path / "out" / "mine.txt").read_text() == "someone else's"
    kept = [p for p in tmp_path.iterdir() if p.name.startswith("out.unplaced-")]
    assert len(kept) == 1 and (kept[0] / "weights").read_text() == "new"


# -- multi-file outputs appear whole or not at all --------------------------------------------------------------------
def _commit_killed_at(kill_at: int, targets: list[Path]) -> int:
    """In another process: commit new versions of `targets`, SIGKILLed at its `kill_at`-th rename; the status."""
    from mobilevit.file_utils import staged_outputs

    def commit():
        calls, replace = [0], os.replace

        def replace_then_die(source, target):
            calls[0] += 1
            if calls[0] == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            replace(source, target)

        os.replace = replace_then_die
        with staged_outputs(targets, overwrite=True) as staged:
            for target in targets:
                if target.suffix == "":  # a folder output (a model folder)
                    staged.path(target).mkdir()
                    (staged.path(target) / "weights").write_text("new")
                else:
                    staged.path(target).write_text("new " + target.name)

    _, status = os.waitpid(_in_child(commit), 0)
    return status


RENAMES = 6  # three previous files moved aside, three new ones moved in


@pytest.mark.parametrize("kill_at", range(1, RENAMES + 1))
def test_a_kill_at_every_rename_of_a_multi_file_commit_leaves_one_whole_version(tmp_path, kill_at):
    """OpenVINO's .xml + .bin + sidecar: a kill between file-by-file moves left a new .xml beside the old .bin."""
    from mobilevit.file_utils import check_output_files, remove_abandoned_leftovers, staged_outputs

    targets = [tmp_path / "model.xml", tmp_path / "model.bin", tmp_path / "model.xml.json"]
    for target in targets:
        target.write_text("old " + target.name)
    status = _commit_killed_at(kill_at, targets)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    # the next run, without --overwrite: the cut-off commit is rolled back first, then the outputs are refused
    with pytest.raises(UserError, match="already exists .pass --overwrite"):
        check_output_files(targets, "--output", overwrite=False)
    assert [t.read_text() for t in targets] == ["old " + t.name for t in targets]
    assert _leftovers(tmp_path) == [] and remove_abandoned_leftovers(targets) == []
    # ... and with --overwrite the new set arrives whole
    check_output_files(targets, "--output", overwrite=True)
    with staged_outputs(targets, overwrite=True) as staged:
        for target in targets:
            staged.path(target).write_text("new " + target.name)
    assert [t.read_text() for t in targets] == ["new " + t.name for t in targets]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(t.name for t in targets)


def test_a_killed_folder_swap_is_put_back_before_the_overwrite_check(tmp_path):
    """The next run printed 'restored ...' and then replaced the restored folder: the restore came after its
    overwrite check."""
    target = tmp_path / "model"
    target.mkdir()
    (target / "weights").write_text("previous")
    status = _commit_killed_at(2, [target])  # 1: the previous folder moved aside, 2: killed before the new one is in
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL and not target.exists()
    with pytest.raises(UserError, match="holds files .pass --overwrite"):
        check_output_dir(target, "--output-dir", overwrite=False)
    assert (target / "weights").read_text() == "previous" and _leftovers(tmp_path) == []


# -- names and links the file system cannot take --------------------------------------------------------------------
def test_long_names_get_hidden_names_that_fit_and_too_long_names_are_refused(tmp_path):
    from mobilevit.file_utils import check_output_files

    long = tmp_path / ("m" * 240 + ".png")  # fits (255 bytes), but ".<name>.mobilevit-...tmp" would not
    write_file_atomically(long, b"png")
    with staged_directory(tmp_path / ("d" * 250)) as staging:
        (staging / "a").write_text("a")
    assert long.read_bytes() == b"png" and (tmp_path / ("d" * 250) / "a").read_text() == "a"
    with pytest.raises(UserError, match="expected names of at most 255 bytes"):
        check_output_files([tmp_path / ("m" * 300 + ".png")], "--output-dir")
    with pytest.raises(UserError, match="expected names of at most 255 bytes"):
        check_output_dir(tmp_path / ("d" * 300), "--output-dir")


def test_a_dangling_symbolic_link_is_refused_before_any_work(tmp_path):
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    for path in (tmp_path / "link", tmp_path / "link" / "deeper"):
        with pytest.raises(UserError, match=r"is a symbolic link to '.*nowhere', which does not exist"):
            check_output_dir(path, "--output-dir")


def test_json_never_holds_nan():
    from mobilevit.file_utils import json_text

    text = json_text({"accuracy": float("nan"), "loss": [1.0, float("inf")], "n": np.float32(0.5)})
    assert json.loads(text) == {"accuracy": None, "loss": [1.0, None], "n": 0.5}
