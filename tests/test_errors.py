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
