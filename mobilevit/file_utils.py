"""Outputs: checked before any work, claimed by one run at a time, written whole, never over an input, and no
leftovers that outlive a killed run. Every tool writes through this module.

- `check_output_dir` / `check_output_files`: the checks every tool runs on its outputs before it starts: not
  a file where a folder goes (or the reverse), not the same as an input, not inside an input folder (and, for
  a folder that gets replaced, not around one), not a dangling symbolic link, names the file system can hold,
  creatable, and nothing there unless `overwrite`. What a killed run left half-done there is put back first,
  so the checks see the real previous output.
- `claim_output`: the run's claim on its outputs, taken when it starts and held until it ends. A second run
  writing the same output (or one inside or around it) stops at once with one line naming the first (its
  process id and command). The claim is a POSIX record lock (`fcntl.lockf`) on a hidden lock file beside the
  output: the kernel drops it when its process ends, however it ends, so a crash never leaves it stuck;
  forked children (DataLoader workers) do not hold it. The lock file holds the claimer's pid, start time,
  host and command, for the message; it is removed when the claim ends.
- `staged_outputs` / `staged_directory`: everything a run writes goes into one hidden staging folder beside
  its outputs and is committed together at the end: the whole set appears, or none of it. The commit
  checks again that the claim still holds and that nothing appeared at an output meanwhile (the run's result
  is then kept under a visible name rather than replacing it), writes a journal, moves the previous outputs
  aside (the manifest, e.g. an export's sidecar, first), moves the new ones in (the manifest last) and removes
  the journal: that is the commit point. A failure before it puts the previous outputs back; so does the
  next run when a kill (SIGKILL) cut the commit off, before it checks anything. (Nothing is fsynced: what a
  killed process wrote is in the page cache for the next run; surviving a power cut is the file system's.)
- `write_file_atomically`: one file, written beside its place and renamed over it.

Leftovers. Staging folders and temporary files are named `.<name>.mobilevit-<host>-<pid>-<start>.<random>.tmp`:
the host, process id and process start time of the run that made them (a long `<name>` is shortened and
tagged with its hash, so the name fits the file system). The next run writing the same output removes those
whose process is provably gone (same host, and no process with that id, or one started at another time),
rolling back a commit the kill cut off. Anything else, including leftovers of live runs and of other hosts on
a shared file system, is left alone.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import math
import numbers
import os
import re
import shlex
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from .errors import UserError

logger = logging.getLogger(__name__)

_LEFTOVER = re.compile(r"\.(?P<name>.+)\.mobilevit-(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-(?P<start>\d+)\.[^.]+\."
                       r"(?P<kind>tmp|old)")
LOCK_SUFFIX = ".mobilevit-lock"
JOURNAL = "commit.json"
# room a hidden name needs beyond the output's own name: "." + ".mobilevit-<8>-<pid>-<start>.<8>.tmp"
_TAG_ROOM = 64


# ---------------------------------------------------------------------------------------------------------
# Names the file system can hold
# ---------------------------------------------------------------------------------------------------------
def _name_max(folder: Path) -> int:
    """The longest file name (in bytes) the file system of `folder` (or its nearest existing parent) holds."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def _short(name: str, room: int = _TAG_ROOM, limit: int = 255) -> str:
    """`name`, shortened where a hidden name built on it would not fit in `limit` bytes: its start and a hash."""
    encoded = os.fsencode(name)
    if len(encoded) + room <= limit:
        return name
    digest = hashlib.sha1(encoded).hexdigest()[:10]
    head = encoded[: max(1, limit - room - 12)].decode("utf-8", "ignore") if _is_utf8(encoded) else "output"
    return f"{head}~{digest}"


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def check_name_fits(path: str | os.PathLike, argument: str, error: type[UserError] = UserError) -> None:
    """Each part of `path` fits the file system's name length (and the whole its path length)."""
    path = Path(path)
    limit = _name_max(path.parent)
    for part in path.parts:
        size = len(os.fsencode(part))
        if size > limit:
            raise error(f"{argument}: expected names of at most {limit} bytes (the file system's limit), got a "
                        f"{size}-byte name, {part[:40]!r}...")
    if len(os.fsencode(str(path.expanduser().absolute()))) >= 4096:
        raise error(f"{argument}: expected a path shorter than 4096 bytes (the system's limit), got "
                    f"{str(path)[:60]!r}...")


# ---------------------------------------------------------------------------------------------------------
# Checks before any work
# ---------------------------------------------------------------------------------------------------------
def _resolved(path: str | os.PathLike) -> Path:
    return Path(path).expanduser().resolve()


def _within(inner: Path, outer: Path) -> bool:
    return inner == outer or inner.is_relative_to(outer)


def _holds_files(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def _check_links(path: Path, argument: str, error: type[UserError]) -> None:
    """No part of `path` is a symbolic link to nothing (creating the output there would fail at the end)."""
    for part in [path, *path.parents]:
        if part.is_symlink() and not part.exists():
            raise error(f"{argument}: expected a path that can be created, got {str(path)!r}, but {str(part)!r} is a "
                        f"symbolic link to {os.readlink(part)!r}, which does not exist")


def check_output_dir(path: str | os.PathLike, argument: str, inputs: Iterable[tuple[str, str | os.PathLike]] = (),
                     *, replaces: bool = True, overwrite: bool | None = None, error: type[UserError] = UserError
                     ) -> Path:
    """Check the output folder `path` (given as `argument`, e.g. "--output-dir") before any work is done, and
    return it as an absolute path. Nothing is created; what a killed run left half-swapped there is first put
    back (`remove_abandoned_leftovers`), so that the checks see the previous output.

    `inputs` are (argument, path) pairs of what the run reads. The output may not be an input, nor lie
    inside an input folder (its files would end up among the inputs); when the folder is replaced whole
    (`replaces=True`: train, demo, convert) it may not hold an input either, since replacing it would delete
    that input. `overwrite`: None leaves existing content to the caller (files written into the folder are
    checked one by one); False refuses a folder that holds files; True allows replacing it.
    Raises `error` (a `UserError`): exit code 2 when the arguments contradict each other, 1 when the file
    system is in the way.
    """
    check_name_fits(path, argument, error)
    _check_links(Path(path).expanduser().absolute(), argument, error)
    output = _resolved(path)
    refuse_if_claimed(output, argument, replaces=replaces, error=error)
    if output.parent.is_dir():
        remove_abandoned_leftovers(output)
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


def check_output_files(paths: Sequence[str | os.PathLike], argument: str,
                       inputs: Iterable[str | os.PathLike] = (), *, overwrite: bool = False, folders: Sequence = (),
                       error: type[UserError] = UserError) -> list[Path]:
    """The files (or, for paths in `folders`, folders) a run writes, checked before any work: names the file
    system holds, no dangling link, not an input, not a folder where a file goes (or the reverse), and none
    there unless `overwrite`. What a killed run left half-committed there is put back first."""
    paths = [Path(p) for p in paths]
    folders = {Path(p) for p in folders}
    inputs = {_resolved(p) for p in inputs}
    for path in paths:
        check_name_fits(path, argument, error)
        _check_links(path.expanduser().absolute(), argument, error)
    if paths:
        refuse_if_claimed(_resolved(paths[0]), argument, error=error)
    if paths and paths[0].parent.is_dir():
        remove_abandoned_leftovers(paths)
    for path in paths:
        if path.exists() and path.is_dir() != (path in folders):
            kind = "a folder" if path.is_dir() else "a file"
            raise error(f"{argument}: {str(path)!r} is {kind}; it cannot be replaced by the "
                        f"{'folder' if path in folders else 'file'} this run writes", usage=True)
        if _resolved(path) in inputs:
            raise error(f"{argument}: expected outputs that are not inputs, but {str(path)!r} is one of them",
                        usage=True)
        if (path.exists() or path.is_symlink()) and not overwrite:
            raise error(f"{argument}: {str(path)!r} already exists (pass --overwrite to replace it)")
    return paths


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


def _start_time() -> int:
    stat = _process_stat(os.getpid())
    return stat[1] if stat else 0


def _owner_tag() -> str:
    return f"mobilevit-{_host_id()}-{os.getpid()}-{_start_time()}"


def _hidden_prefix(target: Path) -> str:
    return f".{_short(target.name, limit=_name_max(target.parent))}.{_owner_tag()}."


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


def remove_abandoned_leftovers(targets: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """Remove the staging folders and temporary files that killed runs left beside `targets` (one output or
    several in one folder), rolling back a commit that a kill cut off (the previous outputs go back), and lock
    files no run holds; returns what was removed."""
    targets = [Path(targets)] if isinstance(targets, (str, os.PathLike)) else [Path(t) for t in targets]
    if not targets or not targets[0].parent.is_dir():
        return []
    targets = [_resolved(t.parent) / t.name for t in targets]
    parent = targets[0].parent
    limit = _name_max(parent)
    names = {_short(t.name, limit=limit): t for t in targets}
    locks = {f".{_short(t.name, room=len(LOCK_SUFFIX) + 1, limit=limit)}{LOCK_SUFFIX}" for t in targets}
    cleaned = []
    for leftover in sorted(parent.iterdir()):
        if leftover.name in locks:
            if _remove_unheld_lock(leftover):
                cleaned.append(leftover)
            continue
        match = _LEFTOVER.fullmatch(leftover.name)
        if not match or match["name"] not in names:
            continue
        if not _is_abandoned(match["host"], int(match["pid"]), int(match["start"])):
            continue
        target = names[match["name"]]
        if leftover.is_dir() and not leftover.is_symlink():
            if (leftover / JOURNAL).is_file():
                _roll_back(leftover, parent, announce=True)
            elif match["kind"] == "old" and (leftover / target.name).exists() and not target.exists():
                (leftover / target.name).rename(target)  # an earlier version's swap, cut off
                logger.warning("restored %s, which a killed run had moved aside to %s", target, leftover)
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
# Claims: one run per output at a time
# ---------------------------------------------------------------------------------------------------------
_CLAIMS: dict[Path, "Claim"] = {}  # every path this process has claimed -> its claim
_CLAIMS_LOCK = threading.Lock()


def lock_path(output: Path) -> Path:
    """The lock file of a claim on `output`: hidden, beside it."""
    limit = _name_max(output.parent)
    return output.parent / f".{_short(output.name, room=len(LOCK_SUFFIX) + 1, limit=limit)}{LOCK_SUFFIX}"


def command_line() -> str:
    """This process's command, as a user would type it (for messages naming this run)."""
    argv = list(sys.argv) or ["python"]
    if argv[0].endswith(os.path.join("mobilevit", "__main__.py")) or Path(argv[0]).name == "mobilevit":
        argv[0] = "mobilevit"
    text = " ".join(shlex.quote(str(a)) for a in argv)
    return text if len(text) <= 200 else text[:197] + "..."


@dataclass
class Claim:
    """A held claim on `paths` (everything one run writes there), through the lock file `lock`."""

    paths: tuple[Path, ...]
    lock: Path
    descriptor: int
    created: list[Path] = field(default_factory=list)  # folders made to hold the lock file

    def covers(self, path: Path) -> bool:
        return any(_within(path, claimed) for claimed in self.paths)

    def verify(self, argument: str, error: type[UserError] = UserError) -> None:
        """That the claim still holds (its lock file is still this claim's): checked again at the final move."""
        try:
            same = os.stat(self.lock).st_ino == os.fstat(self.descriptor).st_ino
        except OSError:
            same = False
        if not same:
            raise error(f"{argument}: this run's claim on {str(self.paths[0])!r} was lost (its lock file "
                        f"{str(self.lock)!r} was removed while the run worked); nothing was replaced")

    def __enter__(self) -> "Claim":
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()

    def release(self) -> None:
        with _CLAIMS_LOCK:
            for path in self.paths:
                _CLAIMS.pop(path, None)
        try:
            if os.stat(self.lock).st_ino == os.fstat(self.descriptor).st_ino:
                self.lock.unlink()
        except OSError:
            pass
        os.close(self.descriptor)
        for folder in reversed(self.created):  # folders made only to hold the lock, if the run left them empty
            try:
                folder.rmdir()
            except OSError:
                break


def _holder(lock: Path) -> str:
    """Who holds `lock`, from what it wrote there."""
    for _ in range(20):  # a claim that was just taken may not have written its details yet
        try:
            info = json.loads(lock.read_text())
            return (f"process {info['pid']} on {info['host']}, started {info['since']}: {info['command']}"
                    if info.get("host") != socket.gethostname() else
                    f"process {info['pid']}, started {info['since']}: {info['command']}")
        except (OSError, ValueError, KeyError, TypeError):
            time.sleep(0.05)
    return "a process whose details are not readable"


def _try_lock(path: Path, create: bool) -> int | None:
    """A descriptor holding the lock of `path`, or None when another process holds it (or, without `create`,
    when there is no such file)."""
    for _ in range(10):
        try:
            descriptor = os.open(path, os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if create else 0), 0o644)
        except FileNotFoundError:
            if not create:
                return None
            raise
        try:
            fcntl.lockf(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(descriptor)
            if err.errno in (errno.EACCES, errno.EAGAIN):
                return None
            raise
        try:
            same = os.stat(path).st_ino == os.fstat(descriptor).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return descriptor
        os.close(descriptor)  # its last holder removed it between our open and our lock: take the new one
        if not create:
            return None
    raise OSError(errno.EAGAIN, "could not take the lock", str(path))


def _is_held(lock: Path) -> bool:
    """Whether some other process holds the claim of `lock` (tested without creating anything)."""
    descriptor = _try_lock(lock, create=False)
    if descriptor is None:
        return lock.exists()
    os.close(descriptor)
    return False


def _is_own_lock(lock: Path) -> bool:
    """Whether `lock` is the lock file of one of this process's claims (whatever path names it). Such a file is
    never opened elsewhere in this process: closing any descriptor of it would drop the process's lock."""
    try:
        found = os.stat(lock)
    except OSError:
        return False
    with _CLAIMS_LOCK:
        claims = list(_CLAIMS.values())
    for claim in claims:
        held = os.fstat(claim.descriptor)
        if (held.st_dev, held.st_ino) == (found.st_dev, found.st_ino):
            return True
    return False


def _remove_unheld_lock(lock: Path) -> bool:
    """Remove a lock file that no run holds (its claimer died); False when it is held or gone."""
    if _is_own_lock(lock):
        return False
    descriptor = _try_lock(lock, create=False)
    if descriptor is None:
        return False
    try:
        lock.unlink()
    except OSError:
        return False
    finally:
        os.close(descriptor)
    return True


def _conflicting_claim(output: Path, replaces: bool) -> str | None:
    """A live claim of another process on `output`, on a folder around it, or (when `output` is replaced whole)
    inside it. The lock files of this process's own claims are never opened here: closing any descriptor of a
    locked file drops the process's lock on it."""
    candidates = [(lock_path(output), "")] + [(lock_path(folder), f" (it writes {str(folder)!r}, around this output)")
                                             for folder in output.parents]
    if replaces and output.is_dir():
        candidates += [(lock, f" (it writes inside {str(output)!r})") for lock in output.rglob(f".*{LOCK_SUFFIX}")]
    for lock, where in candidates:
        if lock.exists() and not _is_own_lock(lock) and _is_held(lock):
            return _holder(lock) + where
    return None


def refuse_if_claimed(output: Path, argument: str, *, replaces: bool = False,
                      error: type[UserError] = UserError) -> None:
    """Raise `error` (exit 1) naming the run that writes `output` (or a folder around it, or, when `replaces`,
    something inside it), if one does; nothing is created (the claim itself comes with `claim_output`)."""
    output = _resolved(output)
    if claim_of(output) is not None:  # this run's own
        return
    other = _conflicting_claim(output, replaces)
    if other is not None:
        raise error(f"{argument}: {str(output)!r} is being written by another run, {other}; wait for it to finish "
                    "or choose another output")


def claim_output(paths: str | os.PathLike | Sequence[str | os.PathLike], argument: str, *,
                 replaces: bool = False, error: type[UserError] = UserError) -> Claim:
    """Claim the outputs `paths` (one output, or several files in one folder; the first names the claim) for
    this run, or raise `error` (exit 1) naming the run that holds them. `replaces`: the output is a folder this
    run replaces whole, so claims inside it conflict too. Use as a context manager (`with claim_output(...)`)
    or call `release()`; the kernel releases it when the process ends however it ends."""
    paths = [_resolved(p) for p in ([paths] if isinstance(paths, (str, os.PathLike)) else paths)]
    output = paths[0]
    with _CLAIMS_LOCK:
        mine = next((claim for claim in _CLAIMS.values() if any(
            _within(path, claimed) or _within(claimed, path) for path in paths for claimed in claim.paths)), None)
    if mine is not None:
        raise error(f"{argument}: {str(output)!r} is being written by this process ({os.getpid()}) already, for "
                    f"{str(mine.paths[0])!r}; choose another output")
    refuse_if_claimed(output, argument, replaces=replaces, error=error)
    created = [p for p in reversed(output.parents) if not p.exists()]
    output.parent.mkdir(parents=True, exist_ok=True)
    lock = lock_path(output)
    descriptor = _try_lock(lock, create=True)
    if descriptor is None:
        for folder in reversed(created):
            folder.rmdir()
        raise error(f"{argument}: {str(output)!r} is being written by another run, {_holder(lock)}; wait for it "
                    "to finish or choose another output")
    details = {"pid": os.getpid(), "start": _start_time(), "host": socket.gethostname(),
               "since": time.strftime("%Y-%m-%d %H:%M:%S"), "command": command_line()}
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, (json.dumps(details) + "\n").encode(), 0)
    claim = Claim(tuple(paths), lock, descriptor, created)
    with _CLAIMS_LOCK:
        for path in paths:
            _CLAIMS[path] = claim
    return claim


def claim_of(path: str | os.PathLike) -> Claim | None:
    """This process's claim covering `path`, if any."""
    path = _resolved(path)
    with _CLAIMS_LOCK:
        return next((claim for claim in _CLAIMS.values() if claim.covers(path)), None)


# ---------------------------------------------------------------------------------------------------------
# Writing whole
# ---------------------------------------------------------------------------------------------------------
def _exists(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _roll_back(staging: Path, parent: Path, announce: bool = False) -> None:
    """Undo a commit that did not reach its commit point, from its journal: previous outputs moved aside go
    back, outputs that were new are removed. Safe to run again after a kill in the middle of it."""
    try:
        journal = json.loads((staging / JOURNAL).read_text())
    except (OSError, ValueError):
        return
    for name in journal["targets"]:
        target, old, new = parent / name, staging / "old" / name, staging / "new" / name
        if _exists(old):
            if _exists(target):
                _remove(target)  # this commit's new output
            os.replace(old, target)
            if announce:
                logger.warning("restored %s, which a killed run had moved aside to %s", target, staging)
        elif name not in journal["existed"] and not _exists(new) and _exists(target):
            _remove(target)  # new here, moved in before the kill
    (staging / JOURNAL).unlink(missing_ok=True)


class StagedOutputs:
    """Outputs (files or folders, in one folder) written into one hidden staging folder beside them and
    committed together (see the module doc). `targets` are in manifest-last order: the last one (an export's
    sidecar) appears last and goes first. `overwrite=False`: an output that appeared meanwhile is not replaced
    (the result is kept under a visible name instead; `error` names both)."""

    def __init__(self, targets: Sequence[str | os.PathLike], *, overwrite: bool = False, argument: str = "output",
                 error: type[UserError] = UserError):
        self.targets = [Path(t).absolute() for t in targets]
        parent = self.targets[0].parent
        if any(t.parent != parent for t in self.targets):
            raise ValueError(f"targets: expected outputs in one folder, got {[str(t) for t in self.targets]}")
        self.overwrite, self.argument, self.error = overwrite, argument, error
        parent.mkdir(parents=True, exist_ok=True)
        remove_abandoned_leftovers(self.targets)
        self.folder = Path(tempfile.mkdtemp(prefix=_hidden_prefix(self.targets[0]), suffix=".tmp", dir=parent))
        (self.folder / "new").mkdir()

    @property
    def parent(self) -> Path:
        return self.targets[0].parent

    def path(self, target: str | os.PathLike) -> Path:
        """Where `target` is written until the commit."""
        return self.folder / "new" / Path(target).name

    def _occupied(self, target: Path) -> bool:
        return target.is_symlink() or (target.is_dir() and any(target.iterdir())) or target.is_file()

    def _keep_unplaced(self, staged: list[Path]) -> Path:
        """The result, under a visible name beside the outputs (nothing replaced, nothing lost)."""
        name = _short(self.targets[0].name, room=24, limit=_name_max(self.parent))
        keep = self.parent / f"{name}.unplaced-{os.getpid()}"
        if len(self.targets) == 1:
            os.replace(self.path(staged[0]), keep)
        else:
            os.replace(self.folder / "new", keep)
        return keep

    def commit(self) -> None:
        staged = [t for t in self.targets if _exists(self.path(t))]
        for target in staged:
            claim = claim_of(target)
            if claim is not None:
                claim.verify(self.argument, self.error)
        appeared = [t for t in staged if self._occupied(t)] if not self.overwrite else []
        if appeared:
            keep = self._keep_unplaced(staged)
            raise self.error(f"{self.argument}: {str(appeared[0])!r} appeared while this run worked; it was left "
                             f"alone, and this run's result is in {str(keep)!r}")
        mask = _current_umask()
        for target in staged:  # ordinary permissions, not those of a private temporary file
            self.path(target).chmod((0o777 if self.path(target).is_dir() else 0o666) & ~mask)
        existed = [t.name for t in staged if _exists(t)]
        journal = self.folder / JOURNAL
        journal.write_text(json.dumps({"targets": [t.name for t in staged], "existed": existed}))
        try:
            (self.folder / "old").mkdir()
            for target in reversed(staged):  # the manifest leaves first
                if _exists(target):
                    os.replace(target, self.folder / "old" / target.name)
            for target in staged:  # ... and arrives last
                os.replace(self.path(target), target)
            journal.unlink()  # the commit point
        except BaseException:
            _roll_back(self.folder, self.parent)
            raise

    def discard(self) -> None:
        """Remove the staging folder (with the previous outputs, after a commit)."""
        if (self.folder / JOURNAL).exists():  # a commit that failed and could not roll back: keep the evidence
            return
        shutil.rmtree(self.folder, ignore_errors=True)


@contextmanager
def staged_outputs(targets: Sequence[str | os.PathLike], *, overwrite: bool = False, argument: str = "output",
                   error: type[UserError] = UserError):
    """Yield a `StagedOutputs` to write `targets` into (`staged.path(target)`); they are committed together when
    the block succeeds, and nothing changes when it raises."""
    staged = StagedOutputs(targets, overwrite=overwrite, argument=argument, error=error)
    try:
        yield staged
        staged.commit()
    finally:
        staged.discard()


@contextmanager
def staged_directory(output_dir: str | os.PathLike, *, overwrite: bool = False, argument: str = "output_dir",
                     error: type[UserError] = UserError):
    """Yield a fresh folder to write into; when the block succeeds it replaces `output_dir` whole (an existing
    one holding files only with `overwrite`: callers check that before any work, and it is checked again here);
    when it raises, `output_dir` is left as it was."""
    with staged_outputs([output_dir], overwrite=overwrite, argument=argument, error=error) as staged:
        folder = staged.path(output_dir)
        folder.mkdir()
        yield folder


def write_file_atomically(path: str | os.PathLike, data: bytes, *, overwrite: bool = True,
                          argument: str = "output", error: type[UserError] = UserError) -> None:
    """Write `data` to a temporary file beside `path`, then rename it over `path`: readers see the old file or
    the whole new one. The file gets an ordinary new file's permissions (0666 less the umask). Without
    `overwrite` an existing `path` is never replaced (checked at the rename itself)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned_leftovers(path)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=_hidden_prefix(path), suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        os.chmod(temporary, 0o666 & ~_current_umask())  # mkstemp makes it private
        if overwrite:
            os.replace(temporary, path)
        else:
            try:
                os.link(temporary, path)  # fails where something is there: never replaces
            except FileExistsError:
                raise error(f"{argument}: {str(path)!r} appeared while this run worked; it was left alone") from None
    finally:
        Path(temporary).unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------------------
# JSON that stays JSON
# ---------------------------------------------------------------------------------------------------------
def finite_json(value):
    """`value` with every non-finite float (NaN, infinity) replaced by None: what JSON can hold (Python's json
    writes NaN, which no JSON reader accepts)."""
    if isinstance(value, numbers.Real) and not isinstance(value, (int, float)) and hasattr(value, "item"):
        value = value.item()  # a NumPy or torch scalar
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: finite_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(item) for item in value]
    return value


def json_text(value, **options) -> str:
    """Valid JSON for `value` (see `finite_json`), indented by 2 unless `options` say otherwise."""
    options.setdefault("indent", 2)
    return json.dumps(finite_json(value), allow_nan=False, **options)


__all__ = ["check_output_dir", "check_output_files", "check_name_fits", "refuse_if_claimed", "claim_output", "claim_of",
           "Claim",
           "command_line", "lock_path", "StagedOutputs", "staged_outputs", "staged_directory",
           "write_file_atomically", "remove_abandoned_leftovers", "finite_json", "json_text"]
