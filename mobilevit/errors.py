"""User mistakes, reported as one line.

A tool raises a `UserError` (each tool has its own subclass: `ConversionError`, ...) whose message names
the argument, what was expected and what came. The command line (`mobilevit.cli`) prints it as
`mobilevit <command>: error: <message>` and exits with its `exit_code`: 2 for a wrong argument (argparse's
own code for usage errors), 1 for input that cannot be used (a file, a folder, data). Anything else that
escapes is a bug, and keeps its traceback.

They are `ValueError`s, so API callers that catch `ValueError` keep working.
"""

from __future__ import annotations

import importlib

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


def require(module: str, extra: str, purpose: str):
    """`import module`, or a one-line error saying which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingDependencyError(
            f"{purpose} needs the Python package {module!r}, which is not installed ({err}); "
            f"install it with: pip install \"mobilevit[{extra}]\""
        ) from None


__all__ = ["UserError", "MissingDependencyError", "require", "EXIT_USAGE", "EXIT_DATA"]
