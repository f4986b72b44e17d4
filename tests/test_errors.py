"""User mistakes end as one line and an exit code, in one place for every sub-command (mobilevit.cli)."""

import sys
import types

import pytest

from mobilevit import cli
from mobilevit.errors import EXIT_DATA, EXIT_USAGE, MissingDependencyError, UserError, require


@pytest.fixture
def fake_command(monkeypatch):
    """A sub-command `fake` whose run() raises what the test puts in `raised`."""
    raised = []
    module = types.ModuleType("fake_command")
    module.add_arguments = lambda parser: parser.add_argument("--x", default="1")

    def run(args):
        raise raised[0]

    module.run = run
    monkeypatch.setitem(sys.modules, "fake_command", module)
    monkeypatch.setitem(cli.COMMANDS, "fake", ("fake_command", "a test command"))
    return raised


@pytest.mark.parametrize("error, code", [
    (UserError("--x: expected a positive integer, got -1", usage=True), EXIT_USAGE),
    (UserError("image 'a.png' cannot be decoded"), EXIT_DATA),
    (MissingDependencyError("export needs onnxruntime"), EXIT_USAGE),
])
def test_user_errors_are_one_line_with_their_exit_code(fake_command, capsys, error, code):
    fake_command.append(error)
    assert cli.main(["fake"]) == code
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == f"mobilevit fake: error: {error}\n"


def test_other_exceptions_keep_their_traceback(fake_command):
    fake_command.append(RuntimeError("a bug"))
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["fake"])


def test_require_names_the_extra():
    assert require("json", "dev", "testing") is sys.modules["json"]
    with pytest.raises(MissingDependencyError, match=r"export needs the Python package 'no_such_pkg_x'.*"
                                                     r"pip install \"mobilevit\[export\]\""):
        require("no_such_pkg_x", "export", "export")
    assert issubclass(MissingDependencyError, ImportError) and issubclass(UserError, ValueError)


@pytest.mark.parametrize("command, shown", [
    ("train", ["passes over the training data (default: 10)", "(default: 32)", "(default: xx-small)",
               "augmentation (default: 0)", "torch CPU threads (default: every CPU this process may use)"]),
    ("demo", ["(default: demo-output)", "torch CPU threads (default: every CPU this process may use;"]),
    ("predict", ["(default: 5)", "(default: cpu)", "(default: auto)"]),
    ("benchmark", ["(default: 20)"]),
])
def test_help_shows_the_defaults(capsys, command, shown):
    with pytest.raises(SystemExit) as exited:
        cli.main([command, "--help"])
    assert exited.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for expected in shown:
        assert expected in text, expected
    assert "(default: None)" not in text and "(default: False)" not in text


# -- Ctrl-C, SIGTERM and what the machine refuses: one line and an exit code, wherever they happen -------------------
import errno

from mobilevit.errors import EXIT_INTERRUPTED, EXIT_TERMINATED, Terminated


@pytest.mark.parametrize("raised, code, line", [
    (KeyboardInterrupt(), EXIT_INTERRUPTED, "mobilevit fake: interrupted (Ctrl-C); nothing was replaced"),
    (Terminated(), EXIT_TERMINATED, "mobilevit fake: terminated (SIGTERM); nothing was replaced"),
    (OSError(errno.ENOSPC, "No space left on device", "/out/.x.tmp/model.safetensors"), EXIT_DATA,
     "mobilevit fake: error: the disk is full (/out/.x.tmp/model.safetensors): No space left on device [errno ENOSPC]"),
    (OSError(errno.ENAMETOOLONG, "File name too long"), EXIT_DATA,
     "mobilevit fake: error: a name is longer than the file system allows: File name too long"),
    (MemoryError(), EXIT_DATA, "mobilevit fake: error: ran out of memory"),
])
def test_interruptions_and_refusals_of_the_machine_are_one_line(fake_command, capsys, raised, code, line):
    fake_command.append(raised)
    assert cli.main(["fake"]) == code
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith(line), err


def test_safetensors_io_errors_are_read_for_their_os_error(fake_command, capsys):
    from safetensors import SafetensorError

    fake_command.append(SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, '
                                        'message: "No space left on device" })'))
    assert cli.main(["fake"]) == EXIT_DATA
    assert "the disk is full: No space left on device [errno ENOSPC]" in capsys.readouterr().err
    fake_command[0] = SafetensorError("Error while serializing: I/O error: File too large (os error 27)")
    assert cli.main(["fake"]) == EXIT_DATA
    assert "the file is larger than this system allows: File too large [errno EFBIG]" in capsys.readouterr().err


def test_other_os_errors_stay_bugs(fake_command):
    fake_command.append(OSError(errno.EBADF, "Bad file descriptor"))
    with pytest.raises(OSError):
        cli.main(["fake"])


def test_a_malformed_command_line_is_one_line(capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(["train", "--data", "d", "--output-dir", "o", "--batch-size", "abc"])
    err = capsys.readouterr().err
    assert exited.value.code == EXIT_USAGE and len(err.strip().splitlines()) == 1
    assert err.startswith("mobilevit train: error: argument --batch-size: invalid int value: 'abc'")


def test_ctrl_c_in_the_middle_of_a_conversion_leaves_nothing(tmp_path, capsys, monkeypatch):
    """Ctrl-C during convert printed a KeyboardInterrupt traceback and exited 1."""
    from mobilevit import conversion

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(conversion, "read_checkpoint_file", interrupted)
    (tmp_path / "x.pt").write_bytes(b"weights")
    assert cli.main(["convert", "--checkpoint", str(tmp_path / "x.pt"), "--output-dir", str(tmp_path / "out"),
                     "--no-progress"]) == EXIT_INTERRUPTED
    assert capsys.readouterr().err == "mobilevit convert: interrupted (Ctrl-C); nothing was replaced\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.pt"]
