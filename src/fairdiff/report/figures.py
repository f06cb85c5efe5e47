"""The report's charts: attribute shares per prompt against the target (and the world's truth), and the
outcome parity chart (rate per group per arm). Bars are arms; several runs' arms are series of one chart."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import pandas as pd
from markupsafe import Markup

from fairdiff.report.charts import Bar, BarRow, hbar_chart
from fairdiff.report.runs import ReportRun
from fairdiff.report.tables import suite_names, suite_spec


@dataclass
class PromptCharts:
    prompt_id: str
    text: str
    charts: list[Markup]


@dataclass
class SuiteCharts:
    name: str
    kind: str
    series: list[str]  # arm labels in the legend
    has_target: bool
    has_truth: bool
    prompts: list[PromptCharts] = field(default_factory=list)  # shares suites
    charts: list[Markup] = field(default_factory=list)  # outcome suites: one parity chart per group attribute


class ChartIds:
    """Unique, readable element ids from arbitrary names."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    def __call__(self, *parts: str) -> str:
        base = "-".join(re.sub(r"[^a-z0-9]+", "-", p.lower()).strip("-") for p in parts) or "chart"
        chart_id, i = base, 1
        while chart_id in self.used:
            i += 1
            chart_id = f"{base}-{i}"
        self.used.add(chart_id)
        return chart_id


def _value(v) -> float:
    return math.nan if v is None or pd.isna(v) else float(v)


def shares_charts(runs: list[ReportRun], name: str, colors: dict[str, str], ids: ChartIds) -> SuiteCharts:
    """Per prompt, one chart per measured attribute: each class's share per arm with its CI over images."""
    spec = suite_spec(runs, name)
    frames = [(r, r.suite(name)) for r in runs if r.suite(name) is not None]
    bars: dict[tuple[str, str, str], list[Bar]] = {}
    targets: dict[tuple[str, str], dict[str, float]] = {}
    classes: dict[str, tuple[str, ...]] = {}
    series = []
    for r, s in frames:
        frame = s.frame
        for attribute, cls in frame.classes.items():
            classes.setdefault(attribute, cls)
            targets.setdefault((name, attribute), dict(zip(cls, frame.targets[attribute].tolist(), strict=True)))
        series += [r.arm_label(a) for a in r.results.arms if a in set(frame.shares["arm"])]
        columns = ["prompt", "attribute", "class", "arm", "share", "ci_low", "ci_high", "n"]
        for prompt, attribute, cls, arm, share, low, high, n in frame.shares[columns].itertuples(False, None):
            bar = Bar(r.arm_label(arm), _value(share), _value(low), _value(high), int(n))
            bars.setdefault((prompt, attribute, cls), []).append(bar)
    truth = {}
    for r in runs:
        for prompt, attrs in r.record.get("truth", {}).get(name, {}).items():
            truth.setdefault(prompt, attrs)
    out = SuiteCharts(name, "shares", list(dict.fromkeys(series)), has_target=True, has_truth=bool(truth))
    present = {k[0] for k in bars}
    for p in spec["prompts"]:
        if p["id"] not in present:
            continue
        charts = []
        for attribute, cls in classes.items():
            rows = [
                BarRow(
                    label=c,
                    bars=bars.get((p["id"], attribute, c), []),
                    target=targets[(name, attribute)].get(c),
                    truth=truth.get(p["id"], {}).get(attribute, {}).get(c),
                )
                for c in cls
            ]
            if not any(row.bars for row in rows):
                continue
            chart_id = ids("shares", name, p["id"], attribute)
            about = f"{attribute} shares for {p['text']!r} ({name}) per arm, with target"
            chart = hbar_chart(rows, colors, title=attribute, chart_id=chart_id, kind="shares", description=about)
            charts.append(chart)
        out.prompts.append(PromptCharts(p["id"], p["text"], charts))
    return out


def parity_charts(runs: list[ReportRun], name: str, colors: dict[str, str], ids: ChartIds) -> SuiteCharts:
    """One chart per group attribute (and their intersection): the outcome rate per group and arm with its CI,
    the world's pooled truth as a marker."""
    bars: dict[tuple[str, str], list[Bar]] = {}
    groups: dict[str, list[str]] = {}
    truth: dict[tuple[str, str], float] = {}
    series = []
    outcome = ""
    for r in runs:
        s = r.suite(name)
        if s is None:
            continue
        outcome = outcome or str(s.spec.get("outcome", ""))
        series += [r.arm_label(a) for a in r.results.arms if a in set(s.frame.by_group["arm"])]
        for row in s.frame.by_group.itertuples(index=False):
            groups.setdefault(row.attribute, [])
            if row.group not in groups[row.attribute]:
                groups[row.attribute].append(row.group)
            bar = Bar(r.arm_label(row.arm), _value(row.rate), _value(row.ci_low), _value(row.ci_high), int(row.n))
            bars.setdefault((row.attribute, row.group), []).append(bar)
        if s.truth is not None:
            for row in s.truth.itertuples(index=False):
                if not pd.isna(row.truth):
                    truth.setdefault((row.attribute, row.group), float(row.truth))
    out = SuiteCharts(name, "outcome", list(dict.fromkeys(series)), has_target=False, has_truth=bool(truth))
    for attribute, names in groups.items():
        rows = [BarRow(g, bars.get((attribute, g), []), None, truth.get((attribute, g))) for g in names]
        title = f"{outcome} rate by {attribute}"
        chart = hbar_chart(rows, colors, title=title, chart_id=ids("parity", name, attribute), kind="parity")
        out.charts.append(chart)
    return out


def suite_charts(runs: list[ReportRun], colors: dict[str, str]) -> list[SuiteCharts]:
    ids = ChartIds()
    out = []
    for name in suite_names(runs):
        kind = suite_spec(runs, name)["kind"]
        if kind == "group":
            continue  # group scenes: tables and the image grid with box outlines (report/tables.py, grids.py)
        charts = shares_charts if kind == "shares" else parity_charts
        out.append(charts(runs, name, colors, ids))
    return out
