"""Checks of option values shared by the commands and configs: seeds, bounded counts, output paths.

Each check runs before any work starts (nothing loaded, allocated, drawn or written) and fails with one
`FairdiffError` that names the option and the value it got.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from fairdiff.errors import FairdiffError

MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed and numpy's default_rng take seeds in [0, 2**64)
MAX_IMAGES = 1_000_000  # images one command draws or renders (its seeds and rows are listed up front)
MAX_IMAGES_PER_PROMPT = 10_000  # per prompt and arm of an audit (the plan lists prompts x arms x images jobs)
MAX_STEPS = 1_000  # denoising steps: the schedulers' training timesteps
MAX_N_BOOT = 100_000  # bootstrap resamples: a (n_boot, prompts, classes) array is drawn at once


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_seed(seed, option: str = "--seed", count: int = 1) -> int:
    """`seed` as an int such that it and the `count - 1` seeds after it (image i uses seed + i) are in
    [0, 2**64 - 1]."""
    if not _is_int(seed) or seed < 0:
        raise FairdiffError(f"{option} must be a whole number >= 0, got {seed!r}")
    if seed > MAX_SEED:
        raise FairdiffError(f"{option} must be <= 2**64 - 1, got {seed}")
    if seed + max(count, 1) - 1 > MAX_SEED:
        raise FairdiffError(f"{option} {seed}: the seeds of {count} images (seed + i) run past 2**64 - 1")
    return seed


def check_count(value, option: str, *, minimum: int = 1, maximum: int | None = None) -> int:
    """`value` as an int in [minimum, maximum] (no upper bound if `maximum` is None)."""
    if not _is_int(value) or value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum:_}]"
        raise FairdiffError(f"{option} must be a whole number {bound}, got {value!r}")
    return value


def _name_max(existing: Path) -> int:
    try:
        return os.pathconf(existing, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def _existing_ancestor(path: Path, option: str) -> Path:
    """The nearest ancestor of `path` (or `path`) that exists; a component too long or under a file fails."""
    path = Path(os.path.abspath(path))
    if len(os.fsencode(str(path))) >= 4096:
        raise FairdiffError(f"{option} {path}: path too long ({os.strerror(errno.ENAMETOOLONG)})")
    parts = [path, *path.parents]
    for i, p in enumerate(parts):
        try:
            p.lstat()
        except FileNotFoundError:
            continue
        except OSError as exc:  # ENAMETOOLONG, ENOTDIR (under a file), ELOOP, EACCES
            raise FairdiffError(f"{option} {path}: not writable ({exc.strerror or exc})") from None
        limit = _name_max(p) if p.is_dir() else 255
        for below in parts[:i]:
            if len(os.fsencode(below.name)) > limit:
                raise FairdiffError(
                    f"{option} {path}: the name {below.name[:40]!r}... is longer than {limit} bytes "
                    f"({os.strerror(errno.ENAMETOOLONG)})"
                )
        if i > 0 and not p.is_dir():
            raise FairdiffError(f"{option} {path}: not writable ({p} is a file, not a directory)")
        return p
    return parts[-1]


def _writable(ancestor: Path, path: Path, option: str) -> None:
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise FairdiffError(f"{option} {path}: {ancestor} is not writable")


def check_output_file(path: Path, option: str = "--out") -> Path:
    """`path` can be written as a file: not a directory, not under a file, every name short enough, and the
    nearest existing folder writable. Nothing is created or changed."""
    path = Path(path)
    ancestor = _existing_ancestor(path, option)
    if ancestor == Path(os.path.abspath(path)):
        if ancestor.is_dir():
            raise FairdiffError(f"{option} {path}: is a directory; give a file name")
        _writable(ancestor.parent, path, option)
    else:
        _writable(ancestor, path, option)
    return path


def check_output_dir(path: Path, option: str = "--out") -> Path:
    """`path` can be used as an output directory: absent or a directory, not under a file, every name short
    enough, writable. Nothing is created or changed."""
    path = Path(path)
    ancestor = _existing_ancestor(path, option)
    if ancestor == Path(os.path.abspath(path)) and not ancestor.is_dir():
        raise FairdiffError(f"{option} {path}: is a file, not a directory")
    _writable(ancestor, path, option)
    return path
