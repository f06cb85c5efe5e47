"""Files and folders: output folders checked before work starts, folders written whole (built aside and swapped in,
so a reader or a crash never sees half of one), and content hashes of weight files."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

from fairdiff.errors import FairdiffError


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


def ensure_writable_dir(out: Path, option: str = "--out") -> None:
    """Create `out` (and parents) and check a file can be written there."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".fairdiff-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise FairdiffError(f"{option} {out}: not writable ({exc.strerror or exc})") from None


_HASHES: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file, remembered per (path, size, mtime) in this process (weights are hashed once)."""
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        h = hashlib.sha256()
        with path.open("rb") as f:
            while block := f.read(chunk):
                h.update(block)
        _HASHES[key] = h.hexdigest()
    return _HASHES[key]


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that a reader or a crash sees the old file or the new one, never half of one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, obj) -> None:
    """`obj` as indented JSON (non-JSON values as their str), written with `write_atomic`."""
    write_atomic(path, (json.dumps(obj, indent=2, default=str) + "\n").encode())


def slug(text: str, *, allowed: str = "A-Za-z0-9_.+-", lower: bool = False, fallback: str = "") -> str:
    """`text` as a safe file or id name: each run of characters outside `allowed` (a regex character class body)
    becomes one "-", leading and trailing "-" and "." go; `fallback` if nothing is left."""
    text = text.lower() if lower else text
    return re.sub(rf"[^{allowed}]+", "-", text).strip("-.") or fallback
