"""The `mobilevit` command line: one entry point, one sub-command per job.

Each sub-command lives in its own module, which provides `add_arguments(parser)` and `run(args) -> int`.
Modules are imported only when their sub-command runs, so `mobilevit --help` stays fast and a missing
optional dependency (say onnxruntime) only affects the sub-command that needs it. A `UserError` raised by a
sub-command (`mobilevit/errors.py`) is printed as one line, `mobilevit <command>: error: <message>`, and
sets the exit code (2 for a wrong argument, 1 for unusable input). So does a malformed command line
(argparse's own errors, one line here too), what the machine refuses (a full disk, a name too long for the file
system, ...: `errors.environment_error`), and Ctrl-C or SIGTERM, which end as one line with exit code 130 or
143 after the run removed what it had staged. Every sub-command's `--help` shows the defaults.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from .errors import EXIT_USAGE, run_reporting

# sub-command -> (module, one-line help)
COMMANDS = {
    "demo": ("mobilevit.training.demo", "train MobileViT-XXS on the embedded data sets and walk the whole path"),
    "train": ("mobilevit.training.cli", "fine-tune or train a model with transformers' Trainer"),
    "predict": ("mobilevit.predict", "classify or segment image files with a saved model"),
    "convert": ("mobilevit.conversion", "convert an ml-cvnets checkpoint into a Hub-ready folder"),
    "benchmark": ("mobilevit.benchmark_command", "time this package against stock transformers and ONNX Runtime"),
    "export": ("mobilevit.export.command", "export a saved model to ONNX, ExecuTorch, LiteRT, Core ML or OpenVINO, checked in its runtime"),
}


class HelpWithDefaults(argparse.ArgumentDefaultsHelpFormatter):
    """`--help` shows each option's default, unless its help text already names it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or any(action.default is nothing for nothing in (None, False, argparse.SUPPRESS)):
            return text
        return super()._get_help_string(action)


class OneLineParser(argparse.ArgumentParser):
    """argparse's errors as one line, like every other mistake (no usage block; `--help` shows it)."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(argv: list[str]) -> tuple[argparse.ArgumentParser, object | None]:
    parser = OneLineParser(prog="mobilevit", description="MobileViT for the Hugging Face ecosystem.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = argv[0] if argv and argv[0] in COMMANDS else None
    module = None
    for name, (module_name, help_text) in COMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text, formatter_class=HelpWithDefaults)
        if name == chosen:  # only the chosen sub-command's module is imported
            module = importlib.import_module(module_name)
            module.add_arguments(sub_parser)
    return parser, module


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)

    def run() -> int:
        parser, module = build_parser(argv)
        args = parser.parse_args(argv)
        if module is None:
            parser.print_help()
            return 0 if not argv else 2
        return int(module.run(args) or 0)

    return run_reporting(f"mobilevit {argv[0]}" if argv and argv[0] in COMMANDS else "mobilevit", run)


def start_in_fork(argv: list[str], cwd: str | os.PathLike, stderr_path: str | os.PathLike) -> int:
    """`python -m mobilevit ARGV` in `cwd` as a forked child of this process (which has imported the package
    once: a new interpreter per command costs seconds of imports, a minute on a loaded machine); stdout goes to
    /dev/null, stderr to `stderr_path`, and what escapes `mobilevit.cli.main` is printed as the interpreter would
    (a traceback, exit 1). Returns the child's process id, for `os.waitpid`. Fork only from a process that has
    not run torch on several threads (OMP_NUM_THREADS=1, or no computation yet)."""
    import traceback

    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        os.chdir(cwd)
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
        os.dup2(os.open(stderr_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 2)
        code = main(list(argv))
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(int(code or 0))


if __name__ == "__main__":
    sys.exit(main())
