"""Writing output folders whole: the one place that stages a folder and swaps it into place."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def staged_directory(output_dir: str | Path):
    """Yield a fresh folder beside `output_dir` to write into. When the block succeeds the folder replaces
    `output_dir` whole (an existing one is moved aside first and put back if the swap fails); when it raises,
    the staged folder is removed and `output_dir` is left as it was. Callers decide beforehand whether an
    existing `output_dir` may be replaced."""
    output_dir = Path(output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", suffix=".tmp", dir=output_dir.parent))
    staging.chmod(0o777 & ~_current_umask())  # mkdtemp makes it private; the result is an ordinary folder
    try:
        yield staging
        if output_dir.exists():
            aside = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", suffix=".old", dir=output_dir.parent))
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
