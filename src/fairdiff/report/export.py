"""CSV and Parquet export of the numbers behind a report: per-image rows and every metrics table.

Each table of several runs is one file with a leading `run` column (the run's label in the report), so that
`rows.parquet` of three run dirs is one frame to filter by run and arm.

    rows.{csv,parquet}                            one row per image (run, run_dir, suite, arm, prompt, labels ...)
    quality.{csv,parquet}                         per run and arm: images, validity
    metrics-<suite>-<table>.{csv,parquet}         overall / by_prompt / shares, or overall / by_group / ratio /
                                                  difference / by_prompt (SuiteSummary.tables)
    truth-<suite>.{csv,parquet}                   world suites: each estimate beside the injected truth
    metrics.json                                  per run: RunSummary.to_dict()
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from fairdiff.audit.summary import RunSummary
from fairdiff.errors import FairdiffError
from fairdiff.files import slug, write_atomic, write_json_atomic
from fairdiff.report.runs import ReportRun, load_runs

logger = logging.getLogger(__name__)


def _with_run(df: pd.DataFrame, run: ReportRun) -> pd.DataFrame:
    return df.assign(run=run.label).loc[:, ["run", *df.columns]]


def export_runs(runs: list[ReportRun], out_dir: str | Path) -> list[Path]:
    """Write the tables of already loaded runs (see `load_runs`) into `out_dir`; returns the files written."""
    out_dir = Path(out_dir)
    tables: dict[str, list[pd.DataFrame]] = {}

    def add(name: str, df: pd.DataFrame | None, run: ReportRun) -> None:
        if df is not None and not df.empty:
            tables.setdefault(name, []).append(_with_run(df, run))

    for r in runs:
        add("rows", r.results.rows.assign(run_dir=str(r.run_dir)), r)
        add("quality", r.summary.quality, r)
        for name, s in r.summary.suites.items():
            name_slug = slug(name, allowed="A-Za-z0-9_.-", fallback="suite")
            for what, df in s.tables().items():
                add(f"metrics-{name_slug}-{what}", df, r)
            add(f"truth-{name_slug}", s.truth, r)
    frames = {name: pd.concat(parts, ignore_index=True) for name, parts in tables.items()}
    metrics_json = {r.label: r.summary.to_dict() for r in runs}
    written = write_tables(frames, out_dir, ("csv", "parquet"), metrics_json=metrics_json, option="--csv")
    logger.info("%d tables written to %s", len(written), out_dir)
    return written


def export_run(summary: RunSummary, out_dir: str | Path) -> list[Path]:
    """A run dir's own tables: rows.{csv,parquet} (one row per image), metrics.json and metrics-<suite>-<table>.csv."""
    out_dir = Path(out_dir)
    written = write_tables({"rows": summary.results.rows}, out_dir, ("csv", "parquet"), metrics_json=summary.to_dict())
    metrics = {
        f"metrics-{name}-{what}": df
        for name, s in summary.suites.items()
        for what, df in s.tables().items()
        if df is not None
    }
    return written + write_tables(metrics, out_dir, ("csv",))


def write_tables(
    tables: dict[str, pd.DataFrame],
    out_dir: Path,
    formats: Sequence[str],
    metrics_json: dict | None = None,
    option: str = "--out",
) -> list[Path]:
    """The one table writer: each frame as `<name>.<format>` (csv, parquet), plus `metrics.json` if given; each
    file written atomically. Returns the files written; a write error is one FairdiffError naming `option`."""
    writers = {"csv": lambda d: d.to_csv(index=False).encode(), "parquet": _parquet_bytes}
    written = []
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for name, df in tables.items():
            for fmt in formats:
                path = out_dir / f"{name}.{fmt}"
                write_atomic(path, writers[fmt](df))
                written.append(path)
        if metrics_json is not None:
            write_json_atomic(out_dir / "metrics.json", metrics_json)
            written.append(out_dir / "metrics.json")
    except OSError as exc:
        raise FairdiffError(f"{option} {out_dir}: cannot write the tables ({exc.strerror or exc})") from None
    return written


def _parquet_bytes(df: pd.DataFrame) -> bytes:
    # object columns that mix text and missing values (max_group, field_*) are written as strings
    fixed = df.copy()
    for col in fixed.columns:
        if fixed[col].dtype == object:
            fixed[col] = fixed[col].map(lambda v: None if v is None or v != v else str(v))
    buf = io.BytesIO()
    fixed.to_parquet(buf, index=False)
    return buf.getvalue()


def export_tables(run_dirs: Sequence[str | Path], out_dir: str | Path, n_boot: int = 1000, seed: int = 0) -> list[Path]:
    """Summarize audit run dirs and write per-image rows and metrics as CSV and Parquet into `out_dir`."""
    return export_runs(load_runs(run_dirs, n_boot, seed), out_dir)
