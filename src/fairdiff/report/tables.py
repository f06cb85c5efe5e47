"""The report's tables: runs, quality, suite metrics with CIs and detector accuracy, truth coverage.

Every cell is a plain string (formatted here, escaped by the template), so a table renders the same in the
HTML and in a test.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from fairdiff.metrics.quality import VALIDITY_CONFIDENCE
from fairdiff.report.charts import number, with_ci
from fairdiff.report.runs import ReportRun, accuracy_cell, detector_accuracy, outcome_attribute

METRIC_TITLES = {
    "normalized_bias": "normalized bias",
    "deviation_ratio": "deviation ratio",
    "kl_to_target": "KL to target",
    "discrepancy": "discrepancy",
    "mad": "MAD",
}
WORST_CELLS = 8  # per suite in the truth-coverage table


@dataclass
class Table:
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # lines shown above the table (detector accuracy, caveats)
    title: str = ""


@dataclass
class SuiteSection:
    name: str
    kind: str  # shares | outcome | group
    description: str
    prompts: int  # prompts with images (over all runs)
    suite_prompts: int  # prompts the suite defines (an audit may take the first few only)
    tables: list[Table]


def suite_names(runs: list[ReportRun]) -> list[str]:
    """Suites in the order the runs list them (union over runs, only those with images)."""
    return list(dict.fromkeys(n for r in runs for n in r.summary.suites))


def suite_spec(runs: list[ReportRun], name: str) -> dict:
    return next(r.results.suites[name] for r in runs if name in r.results.suites)


def runs_table(runs: list[ReportRun]) -> Table:
    table = Table(["run", "run dir", "model", "guidance", "steps", "images", "seeds", "arms", "fairdiff"])
    for r in runs:
        rec, cfg = r.record, r.record.get("config", {})
        model = rec.get("model", {})
        arms = []
        for spec in rec.get("arms", []):
            extra = {k: v for k, v in spec.items() if k not in ("kind", "name") and v not in (None, "", [], {})}
            detail = "".join(f", {k}={v}" for k, v in extra.items())
            arms.append(f"{spec.get('name')} [{spec.get('kind')}{detail}]")
        seeds = rec.get("plan", {}).get("seeds", [])
        table.rows.append(
            [
                r.label,
                str(r.run_dir),
                f"{model.get('name', '?')} ({model.get('kind', '?')})",
                number(rec.get("guidance"), 1) if rec.get("guidance") is not None else "default",
                str(cfg.get("steps", "?")),
                str(len(r.results.rows)),
                f"{min(seeds)}–{max(seeds)}" if seeds else "?",
                "; ".join(arms),
                str(rec.get("versions", {}).get("fairdiff", "?")),
            ]
        )
    return table


def quality_table(runs: list[ReportRun]) -> Table:
    table = Table(
        [
            "arm",
            "images",
            "validity",
            "Fréchet distance [95% CI] (floor)",
            "explicit accuracy (worst value)",
            "negative-prompt response (smallest group)",
        ]
    )
    for r in runs:
        for q in r.summary.quality.to_dict("records"):
            fd = with_ci(q.get("fd"), q.get("fd_ci_low"), q.get("fd_ci_high"), 1)
            if fd != "—":
                fd += f" ({number(q.get('fd_floor'), 1)})"
            explicit = number(q.get("explicit_accuracy"), 3)
            if explicit != "—":
                explicit += f" ({q.get('explicit_min_value')} {number(q.get('explicit_accuracy_min'), 3)})"
            response = with_ci(
                q.get("negative_response"), q.get("negative_response_ci_low"), q.get("negative_response_ci_high")
            )
            if response != "—":
                response += f" ({q.get('negative_response_min_group')} {number(q.get('negative_response_min'))})"
            validity = with_ci(q["validity"], q.get("validity_ci_low"), q.get("validity_ci_high"), 3)
            table.rows.append([r.arm_label(q["arm"]), str(q["images"]), validity, fd, explicit, response])
    table.notes = [
        f"validity: share of images on which every detector head is at least {VALIDITY_CONFIDENCE} confident "
        "(a well-formed portrait).",
        "Fréchet distance (world runs): world-classifier features of the arm's images against fresh renders of the "
        "attributes detected on each image (quality given who is drawn); the floor is what images drawn exactly like "
        "the renderer score at this many images (FD is biased upward at small n: compare at equal image counts).",
        "explicit accuracy: share of images showing the attribute value the prompt states; negative-prompt response: "
        "outcome rate without minus with the prompts' -terms, images paired on prompt and seed (— where the run has "
        "no such suites).",
    ]
    table.notes += _accuracy_notes(runs, None)
    return table


def _accuracy_notes(runs: list[ReportRun], attributes: list[str] | None) -> list[str]:
    lines = [detector_accuracy(r.record, attributes) for r in runs]
    if len(runs) > 1:
        lines = [f"{r.label}: {line}" for r, line in zip(runs, lines, strict=True)]
    return list(dict.fromkeys(lines))


def shares_table(runs: list[ReportRun], name: str) -> Table:
    """Suite means over prompts of each bias metric, per arm and attribute, with CIs over prompts."""
    table = Table(["arm", "attribute", "prompts", "images", *METRIC_TITLES.values(), "detector accuracy"])
    attributes: list[str] = []
    for r in runs:
        s = r.suite(name)
        if s is None:
            continue
        overall = s.frame.overall
        for _, row in overall.iterrows():
            attributes.append(row["attribute"])
            cells = [with_ci(row[m], row[f"{m}_ci_low"], row[f"{m}_ci_high"]) for m in METRIC_TITLES]
            table.rows.append(
                [
                    r.arm_label(row["arm"]),
                    row["attribute"],
                    str(row["n_prompts"]),
                    str(row["n_images"]),
                    *cells,
                    accuracy_cell(r.record, row["attribute"]),
                ]
            )
    table.notes = _accuracy_notes(runs, list(dict.fromkeys(attributes)))
    return table


def outcome_tables(runs: list[ReportRun], name: str) -> list[Table]:
    """Parity between the marked groups (ratio and difference with CIs, groups at the max and min) and the
    outcome's overall rate per arm."""
    parity = Table(["arm", "groups", "parity ratio", "parity difference", "max group (rate)", "min group (rate)"])
    overall = Table(["arm", "images", "outcome", "rate"], title="Outcome rate over all prompts")
    accuracy_attributes = []
    for r in runs:
        s = r.suite(name)
        if s is None:
            continue
        outcome = s.spec.get("outcome", "")
        attr = outcome_attribute(r.record, outcome)
        if attr:
            accuracy_attributes.append(attr)
        by_group = s.frame.by_group.set_index(["arm", "attribute", "group"])["rate"]
        diff = s.frame.difference().set_index(["arm", "attribute"])
        for _, row in s.frame.ratio().iterrows():
            d = diff.loc[(row["arm"], row["attribute"])]
            key = (row["arm"], row["attribute"])
            parity.rows.append(
                [
                    r.arm_label(row["arm"]),
                    row["attribute"],
                    with_ci(row["ratio"], row["ci_low"], row["ci_high"]),
                    with_ci(d["difference"], d["ci_low"], d["ci_high"]),
                    _group_rate(by_group, key, row["max_group"]),
                    _group_rate(by_group, key, row["min_group"]),
                ]
            )
        for _, row in s.frame.overall.iterrows():
            overall.rows.append(
                [r.arm_label(row["arm"]), str(row["n"]), outcome, with_ci(row["rate"], row["ci_low"], row["ci_high"])]
            )
    parity.notes = _accuracy_notes(runs, list(dict.fromkeys(accuracy_attributes)) or [])
    parity.notes.append(
        "groups are the ones the prompts name; ratio = max rate / min rate (∞ when a group's rate is 0), "
        "difference = max rate - min rate; groups without images are left out (—)."
    )
    return [parity, overall]


def _group_rate(rates: pd.Series, key: tuple[str, str], group) -> str:
    """`medium (0.50)`: a group at the max or min of the parity and its rate; an em dash where there is none."""
    if group is None or (isinstance(group, float) and np.isnan(group)):
        return "—"
    return f"{group} ({number(rates.get((*key, group), np.nan))})"


def suite_sections(runs: list[ReportRun]) -> list[SuiteSection]:
    out = []
    for name in suite_names(runs):
        spec = suite_spec(runs, name)
        if spec["kind"] == "group":
            tables = scene_tables(runs, name)
        else:
            tables = [shares_table(runs, name)] if spec["kind"] == "shares" else outcome_tables(runs, name)
        out.append(
            SuiteSection(
                name=name,
                kind=spec["kind"],
                description=str(spec.get("description") or spec.get("source") or ""),
                prompts=len({p for r in runs for p in r.results.rows.loc[r.results.rows["suite"] == name, "prompt"]}),
                suite_prompts=len(spec.get("prompts", [])),
                tables=tables + stated_tables(runs, name),
            )
        )
    return out


def scene_tables(runs: list[ReportRun], name: str) -> list[Table]:
    """A group suite's per-person outcomes: per arm, then per arm and prompt (adherence, mix error, with CIs)."""
    columns = ["images", "people", "layout", "adherence [95% CI]", "mix error [95% CI]", "by attribute"]
    overall = Table(["arm", *columns])
    by_prompt = Table(["arm", "prompt", *columns], title="Per prompt")
    for r in runs:
        s = r.suite(name)
        if s is None:
            continue
        for table, frame, keys in (
            (overall, s.frame.overall, ["arm"]),
            (by_prompt, s.frame.by_prompt, ["arm", "prompt"]),
        ):
            for q in frame.to_dict("records"):
                attributes = [c for c in q if c.startswith("mix_error_") and not c.startswith("mix_error_ci")]
                table.rows.append(
                    [
                        r.arm_label(q["arm"]),
                        *([str(q["prompt"])] if "prompt" in keys else []),
                        str(q["images"]),
                        str(q["people_judged"]),
                        {"arm": "planned", "reference": "measured against"}.get(q["planned_by"], q["planned_by"]),
                        with_ci(q["adherence"], q["adherence_ci_low"], q["adherence_ci_high"], 3),
                        with_ci(q["mix_error"], q["mix_error_ci_low"], q["mix_error_ci_high"], 3),
                        ", ".join(f"{c.removeprefix('mix_error_')} {number(q[c], 3)}" for c in attributes),
                    ]
                )
    overall.notes = [
        "adherence: share of people whose planned gender / skin / age the detector sees on their box crop (Wilson CI "
        "over people); mix error: per image, the total variation between the planned and the detected shares of its "
        "people (max over attributes; 0 = the planned mix exactly), mean over images with a bootstrap CI.",
        "planned: a planner arm draws each box from its layout; measured against: the arm draws the plain prompt on "
        "the same canvas and is compared with the layout the planner would have made (its adherence is chance "
        "placement; the mix error is its skew).",
    ]
    overall.notes += _accuracy_notes(runs, None)
    return [overall, by_prompt]


def stated_tables(runs: list[ReportRun], name: str) -> list[Table]:
    """A suite's explicit-prompt accuracy (prompts stating attributes) and negative-prompt response (prompts with
    `-terms` beside their plain twin), per arm; none when the suite has neither."""
    stated = Table(
        ["arm", "attribute", "stated value", "images", "accuracy [95% CI]"], title="Explicit-prompt accuracy"
    )
    response = Table(
        ["arm", "groups", "group", "image pairs", "rate without", "rate with", "response [95% CI]"],
        title="Negative-prompt response",
    )
    for r in runs:
        s = r.suite(name)
        if s is None:
            continue
        for q in s.stated.to_dict("records") if s.stated is not None else []:
            stated.rows.append(
                [
                    r.arm_label(q["arm"]),
                    q["attribute"],
                    str(q["value"]),
                    str(q["n"]),
                    with_ci(q["accuracy"], q["ci_low"], q["ci_high"], 3),
                ]
            )
        for q in s.negative_response.to_dict("records") if s.negative_response is not None else []:
            response.rows.append(
                [
                    r.arm_label(q["arm"]),
                    q["attribute"],
                    str(q["group"]),
                    str(q["n"]),
                    number(q["rate_without"]),
                    number(q["rate_with"]),
                    with_ci(q["response"], q["ci_low"], q["ci_high"]),
                ]
            )
    stated.notes = ["share of images on which the detector sees the value the prompt states"]
    response.notes = [
        "outcome rate on the same prompts without their -terms minus the rate with them (the terms go to the "
        "negative prompt), images paired on prompt and seed; paired bootstrap CI"
    ]
    return [t for t in (stated, response) if t.rows]


def truth_tables(runs: list[ReportRun]) -> list[Table]:
    """For each world suite: per arm, the share of estimates whose CI covers the injected value; then the
    cells furthest from their truth among those not covered."""
    out = []
    for name in suite_names(runs):
        coverage = Table(["suite", "arm", "estimates", "CI covers truth", "mean |error|"])
        cells = []
        for r in runs:
            s = r.suite(name)
            if s is None or s.truth is None or s.truth.empty:
                continue
            t = s.truth
            for arm, rows in t.groupby("arm", sort=False):
                coverage.rows.append(
                    [
                        name,
                        r.arm_label(arm),
                        str(len(rows)),
                        f"{rows['covered'].mean():.0%} ({int(rows['covered'].sum())}/{len(rows)})",
                        number(float(rows["error"].abs().mean()), 3),
                    ]
                )
            value = "share" if s.kind == "shares" else "rate"
            where = (
                t["prompt"] + " · " + t["attribute"] + "=" + t["class"]
                if s.kind == "shares"
                else t["attribute"] + "=" + t["group"]
            )
            cells.append(
                pd.DataFrame(
                    {
                        "arm": t["arm"].map(r.arm_label),
                        "cell": where,
                        "estimate": [with_ci(*v) for v in t[[value, "ci_low", "ci_high"]].itertuples(index=False)],
                        "truth": t["truth"].map(lambda v: number(v)),
                        "error": t["error"],
                        "covered": t["covered"],
                    }
                )
            )
        if not coverage.rows:
            continue
        worst = pd.concat(cells, ignore_index=True)
        worst = worst[~worst["covered"]].assign(size=lambda d: d["error"].abs())
        worst = worst.sort_values("size", ascending=False, kind="stable").head(WORST_CELLS)
        misses = Table(["arm", "cell", "estimate [95% CI]", "truth", "error"])
        misses.rows = [
            [a, c, e, t, f"{err:+.2f}"]
            for a, c, e, t, err in worst[["arm", "cell", "estimate", "truth", "error"]].itertuples(index=False)
        ]
        misses.notes = [f"{name}: the cells furthest from the world's truth whose CI misses it"]
        if not misses.rows:
            misses.notes = [f"{name}: every CI covers the world's truth"]
        out += [coverage, misses]
    return out
