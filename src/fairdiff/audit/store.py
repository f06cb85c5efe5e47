"""The run store: one SQLite row per generated image, append-only and idempotent on the job key.

- WAL journal, `synchronous=FULL`, one transaction per batch: a process killed at any point leaves every
  committed batch intact and no half-written row; the PNGs of an uncommitted batch are simply drawn again
- a row is inserted with `INSERT OR IGNORE` on the job key, so a resumed or repeated batch never duplicates,
  and a row is never updated or deleted
- each rank of a sharded run writes its own file (`store-rank{r}.sqlite`); readers union every store file of
  a run dir and `merge_stores` folds the shards into `store.sqlite`
- the schema version is checked on open, so a run dir written by an incompatible fairdiff is refused
- group-scene images (a planner arm, a `kind: group` suite) also get one row in `scenes` (same job key, same
  transaction): the layout and its verification as JSON. The table is created on open, so a store of an older
  fairdiff gains it empty; a store opened read-only without it reads as having no scene rows
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from fairdiff.errors import FairdiffError

SCHEMA_VERSION = 1
STORE_NAME = "store.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS images (
    job_key TEXT PRIMARY KEY,
    suite TEXT NOT NULL,
    prompt_id TEXT NOT NULL,
    arm TEXT NOT NULL,
    seed INTEGER NOT NULL,
    prompt TEXT NOT NULL,
    negative TEXT NOT NULL,
    image TEXT NOT NULL,        -- path relative to the run dir
    sha256 TEXT NOT NULL,       -- of the PNG bytes
    probs TEXT NOT NULL,        -- JSON {attribute: [p_1, ..., p_K]} from the run's detector
    rank INTEGER NOT NULL,
    seconds REAL NOT NULL       -- generation + detection time of the batch, per image
);
CREATE TABLE IF NOT EXISTS scenes (
    job_key TEXT PRIMARY KEY,
    record TEXT NOT NULL        -- JSON: the image's layout and verification (audit/arms_scene.py)
);
"""


@dataclass(frozen=True)
class ImageRow:
    job_key: str
    suite: str
    prompt_id: str
    arm: str
    seed: int
    prompt: str
    negative: str
    image: str
    sha256: str
    probs: dict[str, list[float]]
    rank: int = 0
    seconds: float = 0.0
    scene: dict | None = None  # group-scene images: layout and verification (the `scenes` table)


_COLUMNS = ("job_key", "suite", "prompt_id", "arm", "seed", "prompt", "negative", "image", "sha256", "probs", "rank")


def store_path(run_dir: Path, rank: int, world_size: int) -> Path:
    return run_dir / (STORE_NAME if world_size == 1 else f"store-rank{rank}.sqlite")


class Store:
    """An open store file. Use as a context manager; `add` commits a batch atomically.

    `create=False` opens an existing store read-only (SQLite `mode=ro`): reports and merges read runs on
    read-only media and never change the file they read."""

    def __init__(self, path: Path, create: bool = True) -> None:
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise FairdiffError(f"store {self.path}: no such file")
        try:
            if create:
                self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("PRAGMA synchronous=FULL")
                self.db.executescript(_SCHEMA)
            else:
                uri = f"file:{quote(str(self.path.resolve()))}?mode=ro"
                self.db = sqlite3.connect(uri, uri=True, timeout=30, isolation_level=None)
            version = self.db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        except sqlite3.DatabaseError as exc:
            raise FairdiffError(f"store {self.path}: not a readable fairdiff store ({exc})") from None
        if version is None and create:
            self._exec("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        elif version is None or str(version[0]) != str(SCHEMA_VERSION):
            raise FairdiffError(
                f"store {self.path}: written by a fairdiff with store schema {version and version[0]}, this one "
                f"reads {SCHEMA_VERSION}; audit into a new --out"
            )

    def _exec(self, sql: str, args: tuple = ()) -> sqlite3.Cursor:
        try:
            return self.db.execute(sql, args)
        except sqlite3.OperationalError as exc:
            raise FairdiffError(f"store {self.path}: {exc}; committed rows are intact, rerun with --resume") from None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.db.close()

    def done_keys(self) -> set[str]:
        try:
            return {k for (k,) in self.db.execute("SELECT job_key FROM images")}
        except sqlite3.DatabaseError as exc:
            raise FairdiffError(f"store {self.path}: not a readable fairdiff store ({exc})") from None

    def add(self, rows: Iterable[ImageRow]) -> int:
        """Insert a batch in one transaction; rows whose key is present are ignored. Returns rows inserted."""
        rows = list(rows)
        values = [
            (
                r.job_key,
                r.suite,
                r.prompt_id,
                r.arm,
                r.seed,
                r.prompt,
                r.negative,
                r.image,
                r.sha256,
                json.dumps(r.probs),
                r.rank,
                r.seconds,
            )
            for r in rows
        ]
        try:
            self.db.execute("BEGIN IMMEDIATE")
            before = self.db.total_changes
            self.db.executemany(f"INSERT OR IGNORE INTO images VALUES ({', '.join('?' * 12)})", values)
            scenes = [(r.job_key, json.dumps(r.scene)) for r in rows if r.scene is not None]
            self.db.executemany("INSERT OR IGNORE INTO scenes VALUES (?, ?)", scenes)
            self.db.execute("COMMIT")
        except sqlite3.Error as exc:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            raise FairdiffError(
                f"store {self.path}: could not write a batch ({exc}); committed rows are intact, rerun with --resume"
            ) from None
        return self.db.total_changes - before

    def rows(self) -> Iterator[ImageRow]:
        """Every row, checked: a column of the wrong type or probabilities that are not JSON {attribute: [p, ...]}
        raise a FairdiffError naming the job key."""
        try:
            has_scenes = self.db.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'scenes'"
            ).fetchone()
            columns = ", ".join(f"images.{c}" for c in _COLUMNS)
            scene = "scenes.record" if has_scenes else "NULL"
            join = "LEFT JOIN scenes ON scenes.job_key = images.job_key" if has_scenes else ""
            cur = self.db.execute(
                f"SELECT {columns}, images.seconds, {scene} FROM images {join} ORDER BY suite, prompt_id, arm, seed"
            )
            for r in cur:
                yield _checked_row(self.path, r)
        except sqlite3.DatabaseError as exc:
            raise FairdiffError(f"store {self.path}: not a readable fairdiff store ({exc})") from None

    def count(self) -> int:
        try:
            return self.db.execute("SELECT COUNT(*) FROM images").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise FairdiffError(f"store {self.path}: not a readable fairdiff store ({exc})") from None


def _checked_row(path: Path, r: tuple) -> ImageRow:
    key = r[0]
    texts, ints = (0, 1, 2, 3, 5, 6, 7, 8), (4, 10)
    bad = [_COLUMNS[i] for i in texts if not isinstance(r[i], str)]
    bad += [_COLUMNS[i] for i in ints if not isinstance(r[i], int)]
    bad += ["seconds"] if not isinstance(r[11], int | float) else []
    if bad:
        raise FairdiffError(f"store {path}: job {key!r}: column(s) {bad} hold values of the wrong type")
    try:
        probs = json.loads(r[9])
    except ValueError:
        probs = None
    ok = isinstance(probs, dict) and all(
        isinstance(v, list) and v and all(isinstance(x, int | float) and 0 <= x <= 1 for x in v) for v in probs.values()
    )
    if not ok:
        raise FairdiffError(f"store {path}: job {key!r}: probs must be JSON {{attribute: [p, ...]}}, got {r[9]!r:.60}")
    scene = None
    if len(r) > 12 and r[12] is not None:
        try:
            scene = json.loads(r[12]) if isinstance(r[12], str) else None
        except ValueError:
            scene = None
        if not isinstance(scene, dict):
            raise FairdiffError(f"store {path}: job {key!r}: its scene record is not a JSON object: {r[12]!r:.60}")
    return ImageRow(*r[:9], probs=probs, rank=r[10], seconds=float(r[11]), scene=scene)


def store_files(run_dir: Path) -> list[Path]:
    """Every store file of a run dir: the merged store and any rank shards."""
    files = sorted(run_dir.glob("store-rank*.sqlite"))
    main = run_dir / STORE_NAME
    return ([main] if main.is_file() else []) + files


def read_rows(run_dir: Path) -> list[ImageRow]:
    """The union of all store files of a run dir, one row per job key (shards must agree where they overlap)."""
    files = store_files(run_dir)
    if not files:
        raise FairdiffError(f"run dir {run_dir}: no store (store.sqlite) — is it an audit run dir?")
    by_key: dict[str, ImageRow] = {}
    for f in files:
        with Store(f, create=False) as store:
            for row in store.rows():
                seen = by_key.setdefault(row.job_key, row)
                if seen.sha256 != row.sha256:
                    raise FairdiffError(f"run dir {run_dir}: job {row.job_key} has different images in two stores")
    return sorted(by_key.values(), key=lambda r: (r.suite, r.prompt_id, r.arm, r.seed))


def merge_stores(run_dir: Path) -> int:
    """Fold rank shards into `store.sqlite` (idempotent); returns the number of rows in the merged store."""
    shards = sorted(run_dir.glob("store-rank*.sqlite"))
    with Store(run_dir / STORE_NAME) as main:
        for shard in shards:
            with Store(shard, create=False) as s:
                main.add(s.rows())
        return main.count()
