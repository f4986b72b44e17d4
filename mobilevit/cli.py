"""The `mobilevit` command line: one entry point, one sub-command per job.

Each sub-command lives in its own module, which provides `add_arguments(parser)` and `run(args) -> int`.
Modules are imported only when their sub-command runs, so `mobilevit --help` stays fast and a missing
optional dependency (say onnxruntime) only affects the sub-command that needs it. A `UserError` raised by a
sub-command (`mobilevit/errors.py`) is printed as one line, `mobilevit <command>: error: <message>`, and
sets the exit code (2 for a wrong argument, 1 for unusable input). Every sub-command's `--help` shows the
defaults.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import UserError, report

# sub-command -> (module, one-line help)
COMMANDS = {
    "demo": ("mobilevit.training.demo", "train MobileViT-XXS on the embedded data sets and walk the whole path"),
    "train": ("mobilevit.training.cli", "fine-tune or train a model with transformers' Trainer"),
    "predict": ("mobilevit.predict", "classify, segment or detect objects in images and folders with a saved model"),
    "convert": ("mobilevit.conversion", "convert an ml-cvnets checkpoint into a Hub-ready folder"),
    "benchmark": ("mobilevit.benchmark", "time this package against stock transformers and ONNX Runtime"),
    "export": ("mobilevit.export.command", "export a saved model to ONNX, ExecuTorch, LiteRT, Core ML or OpenVINO, checked in its runtime"),
}


class HelpWithDefaults(argparse.ArgumentDefaultsHelpFormatter):
    """`--help` shows each option's default, unless its help text already names it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or any(action.default is nothing for nothing in (None, False, argparse.SUPPRESS)):
            return text
        return super()._get_help_string(action)


def build_parser(argv: list[str]) -> tuple[argparse.ArgumentParser, object | None]:
    parser = argparse.ArgumentParser(prog="mobilevit", description="MobileViT for the Hugging Face ecosystem.")
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
    try:
        parser, module = build_parser(argv)
    except UserError as error:  # the sub-command's module needs an extra that is not installed
        return report(f"mobilevit {argv[0]}", error)
    args = parser.parse_args(argv)
    if module is None:
        parser.print_help()
        return 0 if not argv else 2
    try:
        return int(module.run(args) or 0)
    except UserError as error:
        return report(f"mobilevit {args.command}", error)


if __name__ == "__main__":
    sys.exit(main())
