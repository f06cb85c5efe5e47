"""Property tests: malformed inputs to `fairdiff metrics` (CSV of labels or counts) and to `fairdiff report` /
`fairdiff audit-merge` (run dirs: audit.json, the SQLite store, images) end in success or one red line (exit 1),
never a traceback. The run dir is one small real audit (tiny model, 1 image per prompt, 2 steps), copied per example.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sqlite3
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from fairdiff.cli import app

runner = CliRunner()
FAST = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def assert_no_traceback(result) -> None:
    """Success, or exactly one error line with exit code 1 (usage errors: typer's 2); never an exception."""
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code in (0, 1, 2), result.output
    if result.exit_code == 1:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr


# -- metrics CSV ----------------------------------------------------------------------------------------------

CSVS = {
    "labels": "prompt,gender,skin,revealing\ndoctor,man,light,true\ndoctor,woman,dark,false\nnurse,woman,light,true\n",
    "counts": "prompt,attribute,class,count\ndoctor,gender,man,7\ndoctor,gender,woman,3\nnurse,gender,woman,9\n",
    "wide": "prompt,gender,count\ndoctor,man,7\ndoctor,woman,3\nnurse,man,1\nnurse,woman,9\n",
}
cells = st.sampled_from(
    ["", "nan", "-1", "1.5", "0.5", "1e400", "inf", "-inf", "0", "10**12", "99999999999999999999", "×", '"', "a,b"]
) | st.text(max_size=6)


def _mutate_csv(text: str, data) -> bytes:
    rows = [line.split(",") for line in text.strip().split("\n")]
    for _ in range(data.draw(st.integers(0, 4), "cell edits")):
        r = data.draw(st.integers(0, len(rows) - 1), "row")
        c = data.draw(st.integers(0, len(rows[r]) - 1), "column")
        rows[r][c] = data.draw(cells, "cell")
    how = data.draw(st.sampled_from(["cells", "no header", "drop column", "ragged", "truncate"]), "how")
    if how == "no header":
        rows = rows[1:]
    elif how == "drop column":
        c = data.draw(st.integers(0, len(rows[0]) - 1), "dropped")
        rows = [row[:c] + row[c + 1 :] for row in rows]
    elif how == "ragged":
        rows[-1] = rows[-1] + ["extra"]
    raw = "\n".join(",".join(row) for row in rows).encode()
    if how == "truncate":
        raw = raw[: data.draw(st.integers(0, len(raw)), "cut")]
    encoding = data.draw(st.sampled_from(["utf-8", "bom", "latin-1", "utf-16", "binary"]), "encoding")
    if encoding == "bom":
        raw = b"\xef\xbb\xbf" + raw
    elif encoding == "latin-1":
        raw = raw.decode(errors="replace").replace("a", "\xe9").encode("latin-1", errors="replace")
    elif encoding == "utf-16":
        raw = raw.decode(errors="replace").encode("utf-16")
    elif encoding == "binary":
        raw = data.draw(st.binary(max_size=60), "binary")
    return raw


def _metrics_options(data) -> list[str]:
    args = []
    if data.draw(st.booleans(), "target"):
        args += ["--target", data.draw(st.sampled_from(["gender=man:0.5,woman:0.5", "gender=man:1", "x=a:0.5,b:0.5"]))]
    if data.draw(st.booleans(), "attributes"):
        args += ["--attributes", data.draw(st.sampled_from(["gender", "skin", "gender,skin", "count", "nope"]))]
    if data.draw(st.booleans(), "outcome"):
        args += ["--outcome", data.draw(st.sampled_from(["revealing", "revealing=true", "count", "gender=man"]))]
        if data.draw(st.booleans(), "groups"):
            args += ["--groups", data.draw(st.sampled_from(["gender", "gender,gender*skin", "skin"]))]
    if data.draw(st.booleans(), "intersection"):
        args += ["--intersection", "gender*skin"]
    if data.draw(st.booleans(), "group-by"):
        args += ["--group-by", data.draw(st.sampled_from(["prompt", "gender", "none"]))]
    return args


@FAST
@given(kind=st.sampled_from(list(CSVS)), data=st.data())
def test_metrics_csv_of_any_content(kind, data):
    raw = _mutate_csv(CSVS[kind], data)
    with tempfile.TemporaryDirectory() as tmp:
        path, out = Path(tmp) / "t.csv", Path(tmp) / "m.json"
        path.write_bytes(raw)
        result = runner.invoke(
            app, ["metrics", str(path), "--n-boot", "20", "--json", str(out), *_metrics_options(data)]
        )
        assert_no_traceback(result)


def test_fractional_counts_are_refused(tmp_path):
    for text in (CSVS["counts"].replace(",7", ",7.5"), CSVS["wide"].replace(",7", ",7.5")):
        path = tmp_path / "c.csv"
        path.write_text(text)
        result = runner.invoke(app, ["metrics", str(path), "--n-boot", "20"])
        assert result.exit_code == 1 and "7.5" in result.stderr, result.output


@pytest.mark.parametrize("raw", [b"\xff\xfe\x00\x01garbage\x00", "prompt,gender\n\xe9,man\n".encode("latin-1"), b""])
def test_binary_and_non_utf8_csv(tmp_path, raw):
    path = tmp_path / "x.csv"
    path.write_bytes(raw)
    assert_no_traceback(runner.invoke(app, ["metrics", str(path), "--n-boot", "20"]))


# -- run dirs, their store and the report ---------------------------------------------------------------------


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory) -> Path:
    from fairdiff.audit.runner import AuditConfig, run_audit

    out = tmp_path_factory.mktemp("bad-input") / "run"
    cfg = AuditConfig(suites=["world-occupations", "world-avatars"], images_per_prompt=1, max_prompts=1, steps=2)
    run_audit(cfg, out)
    return out


def _report(run: Path, tmp: Path, command: str = "report"):
    if command == "report":
        return runner.invoke(app, ["report", str(run), "--out", str(tmp / "r.html"), "--n-boot", "20"])
    return runner.invoke(app, ["audit-merge", str(run)])


def test_the_unmutated_run_dir_reports(run_dir, tmp_path):
    result = _report(run_dir, tmp_path)
    assert result.exit_code == 0, result.output


def _paths(obj, prefix=()):
    """Every key path of a JSON value (dict keys and list indices)."""
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:3]):
            yield from _paths(v, (*prefix, i))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)


@SLOW
@given(data=st.data())
def test_audit_json_of_any_shape(run_dir, data):
    """audit.json truncated, replaced, or with one value at any level replaced by any JSON value (or deleted)."""
    record = json.loads((run_dir / "audit.json").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        shutil.copytree(run_dir, run)
        how = data.draw(st.sampled_from(["value", "value", "value", "delete", "truncate", "whole"]), "how")
        if how == "truncate":
            raw = (run_dir / "audit.json").read_bytes()
            (run / "audit.json").write_bytes(raw[: data.draw(st.integers(0, len(raw) - 1), "cut")])
        elif how == "whole":
            (run / "audit.json").write_text(json.dumps(data.draw(json_values, "record")))
        else:
            paths = [p for p in _paths(record) if p]
            path = data.draw(st.sampled_from(paths), "path")
            parent = record
            for k in path[:-1]:
                parent = parent[k]
            if how == "delete":
                del parent[path[-1]]
            else:
                parent[path[-1]] = data.draw(json_values, "value")
            (run / "audit.json").write_text(json.dumps(record))
        assert_no_traceback(_report(run, Path(tmp)))


STORE_EDITS = [
    "DROP TABLE images",
    "DROP TABLE meta",
    "DELETE FROM meta",
    "UPDATE meta SET value = 'x'",
    "UPDATE meta SET value = '99'",
    "DELETE FROM images",
    "ALTER TABLE images RENAME COLUMN probs TO p",
    "ALTER TABLE images DROP COLUMN seconds",
    "ALTER TABLE images ADD COLUMN extra TEXT",
    "UPDATE images SET seed = 'x'",
    "UPDATE images SET seed = 1.5",
    "UPDATE images SET seed = NULL",
    "UPDATE images SET probs = 'not json'",
    "UPDATE images SET probs = '[1, 2]'",
    "UPDATE images SET probs = '{\"gender\": [0.5]}'",
    "UPDATE images SET probs = '{\"gender\": []}'",
    "UPDATE images SET probs = '{\"nope\": [1.0, 0.0]}'",
    'UPDATE images SET probs = \'{"gender": ["a", "b"]}\'',
    "UPDATE images SET probs = '{\"gender\": [NaN, 1.0]}'",
    "UPDATE images SET probs = X'00ff'",
    "UPDATE images SET image = 'missing.png'",
    "UPDATE images SET image = '../../../../etc/passwd'",
    "UPDATE images SET image = 5",
    "UPDATE images SET arm = 'other'",
    "UPDATE images SET suite = 'no-such-suite'",
    "UPDATE images SET prompt_id = 'nope'",
    "UPDATE images SET rank = 'r'",
    "UPDATE images SET seconds = 'slow'",
    "UPDATE images SET sha256 = NULL",
]


@SLOW
@given(
    edits=st.lists(st.sampled_from(STORE_EDITS), min_size=1, max_size=3), command=st.sampled_from(["report", "merge"])
)
def test_store_with_wrong_schema_or_values(run_dir, edits, command):
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        shutil.copytree(run_dir, run)
        if command == "merge":  # the store as a rank shard, to be merged
            (run / "store.sqlite").rename(run / "store-rank0.sqlite")
        db = sqlite3.connect(run / ("store.sqlite" if command == "report" else "store-rank0.sqlite"))
        for sql in edits:
            with contextlib.suppress(sqlite3.Error):  # an edit the earlier ones made impossible
                db.execute(sql)
        db.commit()
        db.close()
        assert_no_traceback(_report(run, Path(tmp), command))


@SLOW
@given(
    blob=st.binary(max_size=200) | st.just(b"SQLite format 3\x00" + b"\x00" * 84),
    cut=st.integers(0, 4096),
    how=st.sampled_from(["garbage", "truncate", "directory", "missing images"]),
)
def test_store_file_that_is_not_sqlite(run_dir, blob, cut, how):
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        shutil.copytree(run_dir, run)
        store = run / "store.sqlite"
        if how == "garbage":
            store.write_bytes(blob)
        elif how == "truncate":
            store.write_bytes(store.read_bytes()[:cut])
        elif how == "directory":
            store.unlink()
            store.mkdir()
        else:
            shutil.rmtree(run / "images")
        assert_no_traceback(_report(run, Path(tmp)))
