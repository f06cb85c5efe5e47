"""Folders written whole: a new one is built aside and swapped in, so a reader or a crash never sees half of it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def swap_in_dir(new: Path, target: Path) -> None:
    """Put directory `new` at `target`, replacing what is there: the old directory is moved aside first and
    deleted only once `new` is in place (put back if the move fails). Same filesystem: `new` beside `target`."""
    if not target.exists():
        os.replace(new, target)
        return
    old = target.parent / f".{target.name}.old-{os.getpid()}"
    shutil.rmtree(old, ignore_errors=True)
    os.replace(target, old)
    try:
        os.replace(new, target)
    except BaseException:
        os.replace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)
