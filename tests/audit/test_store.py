from __future__ import annotations

import sqlite3

import pytest

from fairdiff.audit.store import ImageRow, Store, merge_stores, read_rows
from fairdiff.errors import FairdiffError


def _row(key: str, sha: str = "aa", rank: int = 0) -> ImageRow:
    return ImageRow(
        key, "s", key.split("/")[0], "base", 0, "a doctor", "", f"images/{key}.png", sha, {"g": [0.4, 0.6]}, rank
    )


def test_add_is_idempotent_on_the_job_key(tmp_path):
    with Store(tmp_path / "store.sqlite") as store:
        assert store.add([_row("a/1"), _row("b/1")]) == 2
        assert store.add([_row("a/1"), _row("c/1")]) == 1  # a/1 ignored, never updated
        assert store.count() == 3 and store.done_keys() == {"a/1", "b/1", "c/1"}
    rows = read_rows(tmp_path)
    assert [r.job_key for r in rows] == ["a/1", "b/1", "c/1"] and rows[0].probs == {"g": [0.4, 0.6]}


def test_shards_merge_and_conflicts_are_refused(tmp_path):
    with Store(tmp_path / "store-rank0.sqlite") as s0, Store(tmp_path / "store-rank1.sqlite") as s1:
        s0.add([_row("a/1"), _row("b/1")])
        s1.add([_row("c/1", rank=1)])
    assert len(read_rows(tmp_path)) == 3  # readers union shards before any merge
    assert merge_stores(tmp_path) == 3
    assert merge_stores(tmp_path) == 3  # idempotent
    with Store(tmp_path / "store-rank1.sqlite") as s1:
        s1.add([_row("a/1", sha="bb", rank=1)])
    with pytest.raises(FairdiffError, match="job a/1 has different images in two stores"):
        read_rows(tmp_path)


def test_incompatible_schema_and_garbage_are_refused(tmp_path):
    with Store(tmp_path / "store.sqlite") as store:
        store.db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(FairdiffError, match="store schema 99"):
        Store(tmp_path / "store.sqlite")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "store.sqlite").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(FairdiffError, match="not a readable fairdiff store"):
        read_rows(tmp_path / "junk")
    with pytest.raises(FairdiffError, match="no store"):
        read_rows(tmp_path / "nothing-here")


def test_a_failed_batch_leaves_committed_rows_intact(tmp_path, monkeypatch):
    store = Store(tmp_path / "store.sqlite")
    store.add([_row("a/1")])
    bad = _row("b/1")
    object.__setattr__(bad, "seed", object())  # not bindable: the insert fails inside the transaction
    with pytest.raises(FairdiffError, match="could not write a batch"):
        store.add([_row("c/1"), bad])
    assert store.done_keys() == {"a/1"}  # neither c/1 nor b/1: the batch is all or nothing
    store.close()
    assert sqlite3.connect(tmp_path / "store.sqlite").execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_readers_open_the_store_read_only(tmp_path):
    run = tmp_path / "a run #1?"  # URI-special characters in the path
    run.mkdir()
    with Store(run / "store.sqlite") as store:
        store.add([_row("a/1")])
    before = (run / "store.sqlite").read_bytes()
    with Store(run / "store.sqlite", create=False) as reader:
        assert reader.count() == 1
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            reader.db.execute("DELETE FROM images")
    assert [r.job_key for r in read_rows(run)] == ["a/1"]
    assert (run / "store.sqlite").read_bytes() == before
    (tmp_path / "empty.sqlite").touch()
    with pytest.raises(FairdiffError, match="not a readable fairdiff store"):
        Store(tmp_path / "empty.sqlite", create=False)
