"""Write the audit report: one self-contained HTML file (inline CSS, inline SVG charts, images as data URIs).

Templates are jinja2 with autoescaping on, so prompts, arm settings and labels from a run dir are text, never
markup. The page also sets a Content-Security-Policy that allows no script and no network at all.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

from jinja2 import Environment, PackageLoader, StrictUndefined

import fairdiff
from fairdiff.errors import FairdiffError
from fairdiff.files import write_atomic
from fairdiff.report.charts import series_colors
from fairdiff.report.figures import suite_charts
from fairdiff.report.grids import image_grids
from fairdiff.report.runs import ReportRun, load_runs
from fairdiff.report.tables import quality_table, runs_table, suite_sections, truth_tables

logger = logging.getLogger(__name__)

IMAGES_PER_GRID = 16  # per prompt and arm; a 32x32 PNG is ~2.5 kB in base64


def environment() -> Environment:
    """The report's jinja2 environment (autoescape on for every template, undefined names are errors)."""
    return Environment(
        loader=PackageLoader("fairdiff.report", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def report_context(runs: list[ReportRun], images_per_grid: int = IMAGES_PER_GRID) -> dict:
    """Everything the template shows, as plain strings, tables and SVG markup."""
    colors = series_colors([label for r in runs for label in r.arm_labels()])
    models = list(dict.fromkeys(str(r.record.get("model", {}).get("name", "?")) for r in runs))
    return {
        "title": f"fairdiff audit: {', '.join(models)}",
        "models": models,
        "written": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "version": fairdiff.__version__,
        "bootstrap": next((vars(s.frame.bootstrap) for r in runs for s in r.summary.suites.values()), None),
        "runs": runs_table(runs),
        "quality": quality_table(runs),
        "suites": suite_sections(runs),
        "charts": suite_charts(runs, colors),
        "colors": colors,
        "truth": truth_tables(runs),
        "grids": image_grids(runs, images_per_grid),
        "configs": [(r.label, json.dumps(r.record, indent=2, default=str)) for r in runs],
    }


def render_report(runs: list[ReportRun], out: str | Path, images_per_grid: int = IMAGES_PER_GRID) -> Path:
    """Render already loaded runs (see `load_runs`) into the HTML file `out`; returns its path."""
    if images_per_grid < 0:
        raise FairdiffError(f"`images_per_grid` must be >= 0, got {images_per_grid}")
    out = Path(out)
    html = environment().get_template("report.html.j2").render(**report_context(runs, images_per_grid))
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(out, html.encode("utf-8"))
    except OSError as exc:
        raise FairdiffError(f"--out {out}: cannot write the report ({exc.strerror or exc})") from None
    logger.info("report written to %s (%.1f MB)", out, len(html.encode()) / 1e6)
    return out


def write_report(
    run_dirs: Sequence[str | Path],
    out: str | Path,
    n_boot: int = 1000,
    seed: int = 0,
    images_per_grid: int = IMAGES_PER_GRID,
) -> Path:
    """Summarize audit run dirs (bootstrap CIs: `n_boot` draws, `seed`) and write one self-contained HTML
    report to `out`; returns its path. Several run dirs are shown side by side, arms labelled run/arm."""
    return render_report(load_runs(run_dirs, n_boot, seed), out, images_per_grid)
