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

- 130 (`EXIT_INTERRUPTED`, 128 + SIGINT): Ctrl-C; 143 for SIGTERM. What the run had staged is removed and
  the previous outputs are left as they were (`Interrupted`; a tool may say more, e.g. how to resume).

What the machine refuses (`environment_error`: a full disk or quota, a name too long for the file system, a
read-only file system, permission denied, out of memory), wherever it happens, is one line too, exit 1.
Anything else that escapes is a bug, and keeps its traceback. They are `ValueError`s, so API callers that
catch `ValueError` keep working.
"""

from __future__ import annotations

import errno
import importlib
import os
import re
import signal
import sys

EXIT_USAGE = 2
EXIT_DATA = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C
EXIT_TERMINATED = 143  # 128 + SIGTERM


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


class Interrupted(UserError):
    """The run was stopped by Ctrl-C (SIGINT) or SIGTERM; the message says what was kept."""

    exit_code = EXIT_INTERRUPTED

    def __init__(self, message: str = "interrupted (Ctrl-C); nothing was replaced", *, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is, so that staged outputs are removed as for Ctrl-C."""


# errno -> what to say; these come from the machine, not from a bug
_ENVIRONMENT_ERRNOS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is used up",
    errno.EFBIG: "the file is larger than this system allows",
    errno.ENAMETOOLONG: "a name is longer than the file system allows",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EMFILE: "too many open files",
    errno.ENOMEM: "out of memory",
}


def environment_error(error: BaseException) -> UserError | None:
    """A `UserError` (exit 1) for what the machine refused (see the module doc), or None for anything else.
    safetensors reports its I/O errors as `SafetensorError` with the OS error inside the text."""
    code, where = None, ""
    if isinstance(error, MemoryError):
        return UserError("ran out of memory; lower --batch-size or the image size, or free memory")
    if isinstance(error, OSError):
        code = error.errno
        where = f" ({error.filename})" if error.filename else ""
    elif type(error).__name__ == "SafetensorError":
        found = re.search(r"code: (\d+)|os error (\d+)", str(error))  # its two spellings, by version
        code = int(found[1] or found[2]) if found else None
    if code not in _ENVIRONMENT_ERRNOS:
        return None
    name = errno.errorcode.get(code, code)
    return UserError(f"{_ENVIRONMENT_ERRNOS[code]}{where}: {os.strerror(code)} [errno {name}]; nothing was replaced")


def _finish_progress_bars() -> None:
    """End the progress bars still drawn (tqdm's), so that the message starts a line of its own."""
    tqdm = sys.modules.get("tqdm.std")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", None) or []):
        try:
            bar.close()
        except Exception:  # noqa: BLE001 a bar that cannot be closed must not hide the message
            pass


def report(command: str, error: UserError) -> int:
    """Print `error` as `<command>: error: <message>` on stderr (`<command>: <message>` for an interruption);
    returns its exit code."""
    _finish_progress_bars()
    print(f"{command}: {'' if isinstance(error, Interrupted) else 'error: '}{error}", file=sys.stderr, flush=True)
    return error.exit_code


def _terminate(signum, frame):
    raise Terminated()


def run_reporting(command: str, run) -> int:
    """`run()` with every way a command ends for a reason other than a bug turned into one line on stderr and an
    exit code (see the module doc): what `mobilevit` and the conversion script do. Bugs keep their traceback."""
    previous = signal.getsignal(signal.SIGTERM)
    if previous is signal.SIG_DFL:  # SIGTERM unwinds like Ctrl-C, so staged outputs are removed
        signal.signal(signal.SIGTERM, _terminate)
    try:
        return run()
    except UserError as error:
        return report(command, error)
    except Terminated:
        return report(command, Interrupted("terminated (SIGTERM); nothing was replaced", exit_code=EXIT_TERMINATED))
    except KeyboardInterrupt:
        return report(command, Interrupted())
    except Exception as error:  # noqa: BLE001 only what the machine refused is reported; bugs are raised again
        translated = environment_error(error)
        if translated is None:
            raise
        return report(command, translated)
    finally:
        if previous is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


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


__all__ = ["UserError", "MissingDependencyError", "Interrupted", "Terminated", "environment_error", "require",
           "require_cpp_compiler", "report",
           "run_reporting",
           "EXIT_USAGE", "EXIT_DATA", "EXIT_INTERRUPTED", "EXIT_TERMINATED"]
