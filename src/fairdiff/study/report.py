"""The claims report: one self-contained HTML file (inline CSS and SVG, no script, no network) plus CSV and
Parquet of every number.

Per claim: its statement, the rule that judges it (from `fairdiff.study.claims`), each part's verdict, the
evidence table (the rows the parts read and the context rows), and a chart where a chart reads better: bias bars
per arm (report/charts.py `hbar_chart`, 0..1 axis), or curves against the LoRA rank / the stack size k
(`line_chart` below: an SVG polyline per series with CI whiskers; written here because `hbar_chart` draws bars
on a 0..1 axis only).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
from markupsafe import Markup

import fairdiff
from fairdiff.errors import FairdiffError
from fairdiff.files import write_atomic
from fairdiff.report.charts import Bar, BarRow, element, hbar_chart, number, series_colors, with_ci
from fairdiff.study.claims import ClaimVerdict, verdict_table
from fairdiff.study.stages import write_table

SHOWN = [
    "stage",
    "suite",
    "method",
    "k",
    "arm",
    "reference",
    "measure",
    "attribute",
    "group",
    "value",
    "n",
    "part",
    "verdict",
]
TEMPLATE = "claims.html.j2"


def _cell(col: str, r: pd.Series) -> str:
    if col == "value":
        return with_ci(_f(r.get("value")), _f(r.get("ci_low")), _f(r.get("ci_high")), 3)
    v = r.get(col, "")
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def _f(x) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def evidence_table(df: pd.DataFrame) -> dict:
    """Columns and string rows of a claim's evidence (only the columns some row fills)."""
    if df is None or df.empty:
        return {"columns": [], "rows": []}
    cols = [c for c in SHOWN if c in df.columns and any(_cell(c, r) for _, r in df.iterrows())]
    return {"columns": cols, "rows": [[_cell(c, r) for c in cols] for _, r in df.iterrows()]}


def line_chart(
    series: dict[str, list[tuple[float, float, float, float]]],
    colors: dict[str, str],
    *,
    title: str,
    chart_id: str,
    x_label: str,
    log2_x: bool = False,
    width: int = 360,
    height: int = 200,
) -> Markup:
    """Curves with CI whiskers: {series: [(x, y, low, high), ...]}; x on a log2 axis when `log2_x`."""
    if log2_x:  # k = 0 (the base) has no place on a log axis: callers draw it as a flat reference series
        series = {name: [p for p in ps if p[0] > 0] for name, ps in series.items()}
    pts = [p for ps in series.values() for p in ps if not math.isnan(p[1])]
    if not pts:
        return Markup("")
    tx = (lambda v: math.log2(v)) if log2_x else (lambda v: v)
    xs = [tx(p[0]) for p in pts]
    ys = [v for p in pts for v in (p[1], p[2], p[3]) if not math.isnan(v)]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = min(0.0, min(ys)), max(ys) if max(ys) > min(0.0, min(ys)) else 1.0
    left, right, top, bottom = 44, 12, 22, 30

    def X(v: float) -> float:
        return left + (width - left - right) * (tx(v) - x0) / (x1 - x0)

    def Y(v: float) -> float:
        return top + (height - top - bottom) * (1 - (v - y0) / (y1 - y0))

    parts = [element("title", title), element("text", title, x=4, y=13, class_="fd-chart-title")]
    for t in np.linspace(y0, y1, 5):
        parts.append(element("line", x1=left, x2=width - right, y1=Y(t), y2=Y(t), class_="fd-grid"))
        parts.append(element("text", number(float(t), 2), x=left - 4, y=Y(t) + 3, class_="fd-ytick"))
    for xv in sorted({p[0] for p in pts}):
        parts.append(element("text", f"{xv:g}", x=X(xv), y=height - bottom + 13, class_="fd-tick"))
    parts.append(element("text", x_label, x=(left + width - right) / 2, y=height - 4, class_="fd-tick"))
    for name, ps in series.items():
        ps = sorted(p for p in ps if not math.isnan(p[1]))
        color = colors.get(name, "#777")
        line = " ".join(f"{X(x):.1f},{Y(y):.1f}" for x, y, _, _ in ps)
        drawn = element("title", name) + element("polyline", points=line, fill="none", stroke=color, stroke_width=1.6)
        for x, y, lo, hi in ps:
            tip = element("title", f"{name} · {x:g}: {with_ci(y, lo, hi, 3)}")
            dot = element("circle", cx=X(x), cy=Y(y), r=2.5, fill=color)
            if not (math.isnan(lo) or math.isnan(hi)):
                dot += element("line", x1=X(x), x2=X(x), y1=Y(lo), y2=Y(hi), class_="fd-whisker")
            drawn += element("g", tip + dot)
        parts.append(element("g", drawn, class_="fd-series"))
    return element(
        "svg",
        Markup("").join(parts),
        id=chart_id,
        class_="fd-chart fd-line",
        width=width,
        height=height,
        viewBox=f"0 0 {width} {height}",
        role="img",
        aria_label=title,
    )


def _points(df: pd.DataFrame, x: str) -> list[tuple[float, float, float, float]]:
    return [(float(r[x]), _f(r["value"]), _f(r["ci_low"]), _f(r["ci_high"])) for _, r in df.iterrows()]


def claim_charts(v: ClaimVerdict, tables: dict[str, pd.DataFrame]) -> tuple[list[Markup], list[str]]:
    """The charts of one claim and the series they draw (for the legend)."""
    kind, cid = v.claim.chart, v.claim.id.lower()
    lvw = tables.get("lora-vs-w", pd.DataFrame())
    if kind in ("bias", "compose") and not lvw.empty:
        stage, suite = ("audit-concepts", "world-train") if kind == "compose" else ("audit-heldout", "world-heldout")
        d = lvw[(lvw["stage"] == stage) & (lvw["measure"] == "bias") & (lvw["suite"] == suite)]
        if kind == "compose":
            d = d[d["arm"].astype(str).str.startswith(("compose", "base"))]
        arms = list(dict.fromkeys(d["arm"]))
        colors = series_colors(arms)
        rows = [BarRow(a, [Bar(arm, *_row3(d, arm, a)) for arm in arms]) for a in dict.fromkeys(d["attribute"])]
        title = f"normalized bias on {suite} (0 = parity), 95% CI"
        return [hbar_chart(rows, colors, title=title, chart_id=f"chart-{cid}", kind="bias")], arms
    if kind == "explicit" and not lvw.empty:
        d = lvw[lvw["measure"] == "explicit_accuracy"]
        arms = list(dict.fromkeys(d["arm"]))
        colors = series_colors(arms)
        rows = [BarRow("stated attributes", [Bar(a, *_row3(d, a, None)) for a in arms], target=0.95)]
        title = "share of stated attributes drawn as stated, 95% Wilson CI"
        return [hbar_chart(rows, colors, title=title, chart_id=f"chart-{cid}", kind="explicit")], arms
    if kind == "rank" and not lvw.empty:
        d = lvw[lvw["stage"] == "audit-concepts"]
        charts = []
        series = {}
        for attribute in ("gender", "skin"):
            b = d[(d["measure"] == "bias") & (d["attribute"] == attribute)]
            ranked = b[b["arm"].astype(str).str.startswith("edit-rank")]
            ranked = ranked.assign(rank=ranked["arm"].str.removeprefix("edit-rank").astype(int))
            series[f"{attribute}: LoRA of the edit"] = _points(ranked, "rank")
            for ref in ("edit-full", "base"):
                r = b[b["arm"] == ref]
                if not r.empty and len(ranked):
                    series[f"{attribute}: {ref}"] = [(float(k), *_row3(r, ref, None)) for k in ranked["rank"]]
        colors = series_colors(list(series))
        charts.append(
            line_chart(
                series,
                colors,
                title="bias against LoRA rank (world-train)",
                chart_id=f"chart-{cid}",
                x_label="rank",
                log2_x=True,
            )
        )
        fd = d[d["measure"] == "fd"]
        ranked = fd[fd["arm"].astype(str).str.startswith("edit-rank")]
        ranked = ranked.assign(rank=ranked["arm"].str.removeprefix("edit-rank").astype(int))
        fseries = {"LoRA of the edit": _points(ranked, "rank")}
        for ref in ("edit-full", "base"):
            r = fd[fd["arm"] == ref]
            if not r.empty and len(ranked):
                fseries[ref] = [(float(k), *_row3(r, ref, None)) for k in ranked["rank"]]
        fcolors = series_colors(list(fseries))
        charts.append(
            line_chart(
                fseries,
                fcolors,
                title="Fréchet distance against LoRA rank",
                chart_id=f"chart-{cid}-fd",
                x_label="rank",
                log2_x=True,
            )
        )
        return charts, list(series) + list(fseries)
    stack = tables.get("stack")
    if kind == "stack" and stack is not None and not stack.empty and {"method", "k"} <= set(stack.columns):
        charts, names = [], []
        for measure in ("fd", "explicit_accuracy"):
            d = stack[stack["measure"] == measure].assign(k=lambda t: pd.to_numeric(t["k"], errors="coerce"))
            series = {str(m): _points(g, "k") for m, g in d.groupby("method") if m != "base"}
            base = d[d["method"] == "base"]
            if len(base):
                ks = sorted(k for k in d["k"].unique() if k > 0)
                b = base.iloc[0]
                series["base"] = [(float(k), _f(b["value"]), _f(b["ci_low"]), _f(b["ci_high"])) for k in ks]
            colors = series_colors(list(series))
            if series:
                charts.append(
                    line_chart(
                        series,
                        colors,
                        title=f"{measure} against k (stack)",
                        chart_id=f"chart-{cid}-{measure}",
                        x_label="k",
                        log2_x=True,
                    )
                )
                names += list(series)
        return charts, list(dict.fromkeys(names))
    return [], []


def _row3(d: pd.DataFrame, arm: str, attribute: str | None) -> tuple[float, float, float]:
    r = d[d["arm"] == arm]
    if attribute is not None:
        r = r[r["attribute"] == attribute]
    if r.empty:
        return (math.nan, math.nan, math.nan)
    r = r.iloc[0]
    return _f(r["value"]), _f(r["ci_low"]), _f(r["ci_high"])


def write_claims_report(
    verdicts: list[ClaimVerdict],
    tables: dict[str, pd.DataFrame],
    out_dir: Path,
    *,
    command: str,
    stages: Sequence[dict],
    title: str = "fairdiff study claims",
) -> Path:
    """`out_dir/report.html` plus `numbers.{csv,parquet}` (every table row) and `verdicts.{csv,parquet}`."""
    from fairdiff.provenance import machine_line
    from fairdiff.report.render import environment

    numbers = (
        pd.concat(
            [t.assign(study=name) if "study" not in t.columns else t for name, t in tables.items() if t is not None],
            ignore_index=True,
        )
        if tables
        else pd.DataFrame()
    )
    write_table(numbers.astype({c: str for c in numbers.columns if numbers[c].dtype == object}), out_dir, "numbers")
    write_table(verdict_table(verdicts), out_dir, "verdicts")
    sections = []
    for v in verdicts:
        charts, series = claim_charts(v, tables)
        sections.append(
            {
                "id": v.claim.id,
                "statement": v.claim.statement,
                "verdict": v.verdict,
                "rule": v.claim.rule_text(),
                "note": v.claim.note,
                "parts": [
                    {"quantity": p.part.quantity, "rule": p.part.describe(), "verdict": p.verdict, "rows": len(p.rows)}
                    for p in v.parts
                ],
                "evidence": evidence_table(v.evidence),
                "charts": charts,
                "colors": series_colors(series),
                "series": series,
            }
        )
    html = (
        environment()
        .get_template(TEMPLATE)
        .render(
            title=title,
            version=fairdiff.__version__,
            written=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            machine=machine_line(),
            command=command,
            stages=stages,
            claims=sections,
        )
    )
    path = out_dir / "report.html"
    try:
        write_atomic(path, html.encode("utf-8"))
    except OSError as exc:
        raise FairdiffError(f"{path}: cannot write the report ({exc.strerror or exc})") from None
    return path
