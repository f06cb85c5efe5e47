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

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from fairdiff.errors import FairdiffError
from fairdiff.files import slug
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
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for name, frames in tables.items():
            df = pd.concat(frames, ignore_index=True)
            for suffix, write in ((".csv", lambda d, p: d.to_csv(p, index=False)), (".parquet", _to_parquet)):
                path = out_dir / f"{name}{suffix}"
                write(df, path)
                written.append(path)
        path = out_dir / "metrics.json"
        path.write_text(json.dumps({r.label: r.summary.to_dict() for r in runs}, indent=2, default=str) + "\n")
        written.append(path)
    except OSError as exc:
        raise FairdiffError(f"--csv {out_dir}: cannot write the tables ({exc.strerror or exc})") from None
    logger.info("%d tables written to %s", len(written), out_dir)
    return written


def _to_parquet(df: pd.DataFrame, path: Path) -> None:
    # object columns that mix text and missing values (max_group, field_*) are written as strings
    fixed = df.copy()
    for col in fixed.columns:
        if fixed[col].dtype == object:
            fixed[col] = fixed[col].map(lambda v: None if v is None or v != v else str(v))
    fixed.to_parquet(path, index=False)


def export_tables(run_dirs: Sequence[str | Path], out_dir: str | Path, n_boot: int = 1000, seed: int = 0) -> list[Path]:
    """Summarize audit run dirs and write per-image rows and metrics as CSV and Parquet into `out_dir`."""
    return export_runs(load_runs(run_dirs, n_boot, seed), out_dir)
