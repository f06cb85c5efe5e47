"""The audit report: one self-contained HTML file per set of run dirs, plus CSV/Parquet of its numbers.

from fairdiff.report import write_report, export_tables
write_report([Path("runs/base")], Path("report.html"))   # tables, charts, image grids, configs
export_tables([Path("runs/base")], Path("tables/"))      # rows and metrics as CSV + Parquet

To write both from one bootstrap: `runs = load_runs(dirs)`, then `render_report(runs, out)` and
`export_runs(runs, out_dir)`; a run dir summarized already: `render_report(summarized_run(dir, summary), out)`.
"""

from __future__ import annotations

from fairdiff.report.export import export_run, export_runs, export_tables
from fairdiff.report.render import render_report, write_report
from fairdiff.report.runs import ReportRun, load_runs, summarized_run

__all__ = [
    "ReportRun",
    "export_run",
    "export_runs",
    "export_tables",
    "load_runs",
    "render_report",
    "summarized_run",
    "write_report",
]
