"""Stages: skipped when done with the same fingerprint, resumed after a kill, rerun from scratch when the config
(or an upstream stage) changes; bad folders and bad stage results are one clear error."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from fairdiff.errors import FairdiffError
from fairdiff.study.stages import DONE, MARKER, STARTED, Stage, run_stages


class Recorder:
    """A stage body that counts its runs, leaves a file behind, and can fail once (a kill midway)."""

    def __init__(self, value: float, fail_once: bool = False) -> None:
        self.value, self.calls, self.fail_once, self.seen_partial = value, 0, fail_once, []

    def __call__(self, ctx) -> pd.DataFrame:
        self.calls += 1
        partial = ctx.dir / "partial.txt"
        self.seen_partial.append(partial.exists())
        partial.write_text("work done before the kill")
        ctx.progress(1, 2)
        if self.fail_once:
            self.fail_once = False
            raise KeyboardInterrupt  # killed midway
        upstream = float(ctx.tables["a"]["value"].sum()) if "a" in ctx.tables else 0.0
        return pd.DataFrame({"measure": ["m"], "value": [self.value + upstream]})


def test_skip_when_done_and_rerun_on_change(tmp_path):
    a, b = Recorder(1.0), Recorder(10.0)
    stages = [Stage("a", {"x": 1}, a), Stage("b", {"y": 1}, b, needs=("a",))]
    first = run_stages(stages, tmp_path)
    assert (a.calls, b.calls) == (1, 1) and first["b"].table["value"].tolist() == [11.0]
    assert json.loads((tmp_path / "a" / DONE).read_text())["fingerprint"] == first["a"].fingerprint
    assert (tmp_path / "a" / "table.parquet").is_file() and (tmp_path / "a" / "table.csv").is_file()

    again = run_stages(stages, tmp_path)  # same configs: nothing runs, tables read back
    assert (a.calls, b.calls) == (1, 1) and again["a"].skipped and again["b"].table["value"].tolist() == [11.0]

    # a changed config of "a" reruns a from scratch (its old files gone) and b, which needs it
    changed = [Stage("a", {"x": 2}, a), Stage("b", {"y": 1}, b, needs=("a",))]
    run_stages(changed, tmp_path)
    assert (a.calls, b.calls) == (2, 2) and a.seen_partial == [False, False]

    # a changed config of "b" alone reruns only b
    run_stages([Stage("a", {"x": 2}, a), Stage("b", {"y": 2}, b, needs=("a",))], tmp_path)
    assert (a.calls, b.calls) == (2, 3)


def test_killed_stage_resumes_in_its_folder(tmp_path):
    body = Recorder(1.0, fail_once=True)
    stage = Stage("a", {"x": 1}, body)
    with pytest.raises(KeyboardInterrupt):
        run_stages([stage], tmp_path)
    assert (tmp_path / "a" / STARTED).is_file() and not (tmp_path / "a" / DONE).exists()
    run_stages([stage], tmp_path)
    assert body.seen_partial == [False, True]  # the second run found the first one's work
    # killed, then rerun with another config: the folder is emptied first
    body2 = Recorder(1.0, fail_once=True)
    with pytest.raises(KeyboardInterrupt):
        run_stages([Stage("b", {"x": 1}, body2)], tmp_path)
    run_stages([Stage("b", {"x": 2}, body2)], tmp_path)
    assert body2.seen_partial == [False, False]


def test_progress_reported_per_stage(tmp_path):
    seen = {}

    def progress_for(stage):
        return lambda done, total: seen.setdefault(stage.name, []).append((done, total))

    stages = [Stage("a", {}, Recorder(1.0)), Stage("b", {}, Recorder(2.0))]
    run_stages(stages, tmp_path, progress_for)
    assert seen == {"a": [(1, 2)], "b": [(1, 2)]}
    run_stages(stages, tmp_path, progress_for)  # reused stages show as complete
    assert seen["a"][-1] == (1, 1)


def test_bad_out_and_bad_stages(tmp_path):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(FairdiffError, match="is a file"):
        run_stages([Stage("a", {}, Recorder(1.0))], a_file)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.md").write_text("mine")
    with pytest.raises(FairdiffError, match=f"no {MARKER}"):
        run_stages([Stage("a", {}, Recorder(1.0))], other)
    with pytest.raises(FairdiffError, match="unique"):
        run_stages([Stage("a", {}, Recorder(1.0)), Stage("a", {}, Recorder(1.0))], tmp_path / "s")
    with pytest.raises(FairdiffError, match="needs stage 'z'"):
        run_stages([Stage("a", {}, Recorder(1.0), needs=("z",))], tmp_path / "s")
    with pytest.raises(FairdiffError, match="not plain JSON"):
        run_stages([Stage("a", {"x": object()}, Recorder(1.0))], tmp_path / "s")
    with pytest.raises(FairdiffError, match="not a table"):
        run_stages([Stage("a", {}, lambda ctx: [1, 2])], tmp_path / "s")
    with pytest.raises(FairdiffError, match="no 'value' column"):
        run_stages([Stage("b", {}, lambda ctx: pd.DataFrame({"measure": ["m"]}))], tmp_path / "s")


def test_refused_under_torchrun(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(FairdiffError, match="torchrun"):
        run_stages([Stage("a", {}, Recorder(1.0))], tmp_path / "s")
    assert not (tmp_path / "s").exists()
