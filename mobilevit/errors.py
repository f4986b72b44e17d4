"""User mistakes, reported as one line.

A tool raises a `UserError` (each tool has its own subclass: `ConversionError`, `PredictError`, `TrainError`,
`BenchmarkError`, ...) whose message names the argument, what was expected and what came, and each tool
checks its arguments in one place before any work. The command line (`mobilevit.cli`) prints it as
`mobilevit <command>: error: <message>` and exits with its `exit_code`:

- 2 (`EXIT_USAGE`, argparse's own code): the command line itself is wrong. A value is malformed or out of
  range (`--top-k 0`, `--device banana`, `--image-size 31`), arguments contradict each other (an output
  folder inside an input), or a feature asked for needs an extra this install lacks.
- 1 (`EXIT_DATA`): the arguments are well formed, but what they name cannot be used: a missing, unreadable
  or corrupt file, a data set or model folder that is not valid, an output that already exists, a device
  this machine lacks.

Anything else that escapes is a bug, and keeps its traceback. They are `ValueError`s, so API callers that
catch `ValueError` keep working.
"""

from __future__ import annotations

import importlib
import sys

EXIT_USAGE = 2
EXIT_DATA = 1


class UserError(ValueError):
    """A mistake of the user's; `usage=True` marks a wrong argument (exit 2) rather than unusable input (exit 1)."""

    exit_code = EXIT_DATA

    def __init__(self, message: str, *, usage: bool | None = None):
        super().__init__(message)
        if usage is not None:
            self.exit_code = EXIT_USAGE if usage else EXIT_DATA


class MissingDependencyError(UserError, ImportError):
    """An optional dependency is not installed; the message names the extra that brings it."""

    exit_code = EXIT_USAGE


def report(command: str, error: UserError) -> int:
    """Print `error` as `<command>: error: <message>` on stderr; returns its exit code."""
    print(f"{command}: error: {error}", file=sys.stderr)
    return error.exit_code


def require(module: str, extra: str, purpose: str):
    """`import module`, or a one-line error saying which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingDependencyError(
            f"{purpose} needs the Python package {module!r}, which is not installed ({err}); "
            f"install it with: pip install \"mobilevit[{extra}]\""
        ) from None


def require_cpp_compiler(purpose: str) -> None:
    """Inductor, torch.compile's default backend, builds C++ kernels for the CPU: a one-line error before any
    work when the compiler it would call is missing (instead of a long one at the first compiled call)."""
    from torch._inductor import exc
    from torch._inductor.cpp_builder import get_cpp_compiler

    try:
        get_cpp_compiler()
    except exc.InvalidCxxCompiler:
        raise MissingDependencyError(
            f"{purpose} needs a C++ compiler for torch.compile's Inductor on the CPU, and none was found (g++, or "
            "the one $CXX names); install one, e.g. apt-get install g++"
        ) from None


__all__ = ["UserError", "MissingDependencyError", "require", "require_cpp_compiler", "report", "EXIT_USAGE",
           "EXIT_DATA"]
