"""Output paths: checked before any work, written whole, never over an input, and no leftovers that outlive a
killed run.

- `check_output_dir`: the one check every tool runs on its output folder before it starts: not a file, not
  the same as an input, not inside an input folder (and, for a folder that gets replaced, not around one),
  creatable, and not holding files unless `overwrite`.
- `staged_directory`: a folder written beside its final place and swapped in whole.
- `write_file_atomically`: a file written beside its final place and renamed over it, with the permissions
  of an ordinary new file.

Leftovers. Staging folders and temporary files are named `.<name>.mobilevit-<host>-<pid>-<start>.<random>.tmp`
(and the previous output, moved aside during a swap, `... .old`): the host, process id and process start
time of the run that made them. A run killed mid-way (SIGKILL, power loss) cannot remove its own; the next
run writing the same output removes those whose process is provably gone (same host, and no process with
that id, or one started at another time), and puts a moved-aside previous output back if the swap was cut
off before the new one arrived. Anything else, including leftovers of live runs and of other hosts on a
shared file system, is left alone.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterable
from contextlib import contextmanager
from functools import cache
from pathlib import Path

from .errors import UserError

logger = logging.getLogger(__name__)

_LEFTOVER = re.compile(r"\.(?P<name>.+)\.mobilevit-(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-(?P<start>\d+)\.[^.]+\."
                       r"(?P<kind>tmp|old)")


# ---------------------------------------------------------------------------------------------------------
# Checks before any work
# ---------------------------------------------------------------------------------------------------------
def _resolved(path: str | os.PathLike) -> Path:
    return Path(path).expanduser().resolve()


def _within(inner: Path, outer: Path) -> bool:
    return inner == outer or inner.is_relative_to(outer)


def _holds_files(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def check_output_dir(path: str | os.PathLike, argument: str, inputs: Iterable[tuple[str, str | os.PathLike]] = (),
                     *, replaces: bool = True, overwrite: bool | None = None, error: type[UserError] = UserError
                     ) -> Path:
    """Check the output folder `path` (given as `argument`, e.g. "--output-dir") before any work is done, and
    return it as an absolute path. Nothing is created or changed.

    `inputs` are (argument, path) pairs of what the run reads. The output may not be an input, nor lie
    inside an input folder (its files would end up among the inputs); when the folder is replaced whole
    (`replaces=True`: train, demo, convert) it may not hold an input either, since replacing it would delete
    that input. `overwrite`: None leaves existing content to the caller (files written into the folder are
    checked one by one); False refuses a folder that holds files; True allows replacing it.
    Raises `error` (a `UserError`): exit code 2 when the arguments contradict each other, 1 when the file
    system is in the way.
    """
    output = _resolved(path)
    shown = f"{argument}: expected a folder"
    if output.exists() and not output.is_dir():
        raise error(f"{shown}, got {str(path)!r}, which is a file")
    for input_argument, input_path in inputs:
        source = _resolved(input_path)
        if output == source:
            raise error(f"{shown} other than the input {input_argument}, got the same path {str(path)!r}", usage=True)
        if _within(output, source):
            raise error(f"{shown} outside the input {input_argument} {str(input_path)!r}, got {str(path)!r}, which "
                        "is inside it", usage=True)
        if replaces and _within(source, output):
            raise error(f"{shown} that does not hold the input {input_argument} {str(input_path)!r}, got "
                        f"{str(path)!r} (replacing it would delete that input)", usage=True)
    # where the run creates things: beside the folder when it is swapped in whole, else in it
    place = output if output.is_dir() and not replaces else output.parent
    while not place.exists():
        place = place.parent
    if not place.is_dir():
        raise error(f"{shown} path, got {str(path)!r}, but {str(place)!r} is a file")
    if not os.access(place, os.W_OK | os.X_OK):
        raise error(f"{shown} this user can write, got {str(path)!r} (no write permission in {str(place)!r})")
    if overwrite is False and _holds_files(output):
        raise error(f"{argument}: expected a new or empty folder, got {str(path)!r}, which holds files (pass "
                    "--overwrite to replace it)")
    return output


# ---------------------------------------------------------------------------------------------------------
# Names that say who made a temporary file, so that a later run can clean up after a killed one
# ---------------------------------------------------------------------------------------------------------
@cache
def _host_id() -> str:
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def _process_stat(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks since boot) from /proc/<pid>/stat; None where /proc cannot tell."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # the command name in parentheses may hold spaces
    return fields[0], int(fields[19])


def _owner_tag() -> str:
    stat = _process_stat(os.getpid())
    return f"mobilevit-{_host_id()}-{os.getpid()}-{stat[1] if stat else 0}"


def _is_abandoned(host: str, pid: int, start: int) -> bool:
    """Whether the process that made a leftover is provably gone (otherwise it may still be writing)."""
    if host != _host_id() or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # a process of another user has that id
        pass
    stat = _process_stat(pid)
    if stat is None:
        return False
    state, current_start = stat
    # a zombie has ended (only its exit status is left); another start time: the id was reused
    return state == "Z" or (start != 0 and current_start != start)


def remove_abandoned_leftovers(target: str | os.PathLike) -> list[Path]:
    """Remove the staging folders and temporary files that killed runs left beside `target`, and put back a
    previous `target` that a killed swap had moved aside; returns what was removed or restored."""
    target = Path(target)
    if not target.parent.is_dir():
        return []
    cleaned = []
    for leftover in sorted(target.parent.iterdir()):
        match = _LEFTOVER.fullmatch(leftover.name)
        if not match or match["name"] != target.name:
            continue
        if not _is_abandoned(match["host"], int(match["pid"]), int(match["start"])):
            continue
        previous = leftover / target.name
        if match["kind"] == "old" and previous.exists() and not target.exists():
            previous.rename(target)
            logger.warning("restored %s, which a killed run had moved aside to %s", target, leftover)
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)
        cleaned.append(leftover)
    return cleaned


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ---------------------------------------------------------------------------------------------------------
# Writing whole
# ---------------------------------------------------------------------------------------------------------
@contextmanager
def staged_directory(output_dir: str | os.PathLike):
    """Yield a fresh folder beside `output_dir` to write into. When the block succeeds the folder replaces
    `output_dir` whole (an existing one is moved aside first and put back if the swap fails); when it raises,
    the staged folder is removed and `output_dir` is left as it was. Callers decide beforehand whether an
    existing `output_dir` may be replaced (`check_output_dir`)."""
    output_dir = Path(output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned_leftovers(output_dir)
    prefix = f".{output_dir.name}.{_owner_tag()}."
    staging = Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=output_dir.parent))
    staging.chmod(0o777 & ~_current_umask())  # mkdtemp makes it private; the result is an ordinary folder
    try:
        yield staging
        if output_dir.exists():
            aside = Path(tempfile.mkdtemp(prefix=prefix, suffix=".old", dir=output_dir.parent))
            output_dir.rename(aside / output_dir.name)
            try:
                staging.rename(output_dir)
            except BaseException:
                (aside / output_dir.name).rename(output_dir)
                raise
            finally:
                shutil.rmtree(aside, ignore_errors=True)
        else:
            staging.rename(output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_file_atomically(path: str | os.PathLike, data: bytes | Iterable[bytes]) -> None:
    """Write `data` (bytes, or an iterable of byte chunks, written as they come) to a temporary file beside
    `path`, then rename it over `path`: readers see the old file or the whole new one. The file gets an ordinary
    new file's permissions (0666 less the umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned_leftovers(path)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{_owner_tag()}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            for chunk in [data] if isinstance(data, (bytes, bytearray, memoryview)) else data:
                file.write(chunk)
        os.chmod(temporary, 0o666 & ~_current_umask())  # mkstemp makes it private
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


__all__ = ["check_output_dir", "staged_directory", "write_file_atomically", "remove_abandoned_leftovers"]
