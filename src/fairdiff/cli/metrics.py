"""`fairdiff metrics`: bias metrics with CIs from any tool's per-image labels or per-group counts.

Heavy imports stay in the command bodies so `--help` is instant."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from fairdiff.cli.app import app, console, expected_errors


@app.command()
def metrics(
    file: Path = typer.Argument(..., help="CSV of per-image labels, or per-group counts (attribute,class,count)."),
    target: list[str] = typer.Option(
        None, "--target", "-t", help='Target mix, e.g. "gender=man:0.5,woman:0.5" (repeatable; default uniform).'
    ),
    group_by: str = typer.Option(
        None, "--group-by", help="Column of prompts (default: 'prompt' if present, else one group of all rows)."
    ),
    attributes: str = typer.Option(None, "--attributes", help="Attribute columns, e.g. gender,skin (default: all)."),
    intersection: list[str] = typer.Option(
        None, "--intersection", help="Product attribute from per-image labels, e.g. gender*skin (repeatable)."
    ),
    outcome: str = typer.Option(
        None, "--outcome", help="Outcome compared between groups: a boolean COLUMN or COLUMN=POSITIVE."
    ),
    groups: str = typer.Option(None, "--groups", help="Attributes for --outcome, e.g. gender,skin,gender*skin."),
    json_out: Path = typer.Option(None, "--json", help="Write every result (per prompt, shares, outcome) as JSON."),
    n_boot: int = typer.Option(1000, "--n-boot", help="Bootstrap resamples."),
    confidence: float = typer.Option(0.95, "--confidence", help="CI level."),
    seed: int = typer.Option(0, "--seed", help="Bootstrap seed (same seed, same CIs)."),
    max_prompts: int = typer.Option(20, "--max-prompts", help="Per-prompt rows to print, most biased first."),
) -> None:
    """Bias metrics with bootstrap CIs from a CSV made by any tool: overall and per prompt; outcome parity."""
    with expected_errors():
        import json

        from fairdiff.checks import MAX_N_BOOT, check_count, check_output_file, check_seed
        from fairdiff.errors import FairdiffError
        from fairdiff.files import write_atomic
        from fairdiff.metrics.csv_input import assess_csv

        if max_prompts < 0:
            raise FairdiffError(f"--max-prompts must be >= 0, got {max_prompts}")
        check_count(n_boot, "--n-boot", maximum=MAX_N_BOOT)
        check_seed(seed)
        if json_out is not None:
            check_output_file(json_out, "--json")
        result = assess_csv(
            file,
            target=target or (),
            group_by=group_by,
            attributes=[a.strip() for a in attributes.split(",")] if attributes else None,
            intersections=intersection or (),
            outcome=outcome,
            groups=[g.strip() for g in groups.split(",") if g.strip()] if groups else (),
            n_boot=n_boot,
            confidence=confidence,
            seed=seed,
        )
        if json_out is not None:
            payload = {"file": str(file), "shape": result.shape, "group_by": result.group_by}
            payload |= {"metrics": result.frame.to_dict()}
            payload |= {"outcome": result.outcome.to_dict() if result.outcome else None}
            try:
                json_out.parent.mkdir(parents=True, exist_ok=True)
                write_atomic(json_out, (json.dumps(payload, indent=2) + "\n").encode())
            except OSError as exc:
                raise FairdiffError(f"--json {json_out}: cannot write ({exc.strerror or exc})") from None
        for note in result.notes:
            console.print(f"[yellow]note:[/] {note}")
        _print_metrics(result, max_prompts)
        if json_out is not None:
            console.print(f"all results in {json_out}")


def _ci(value: float, low: float, high: float, digits: int = 3) -> str:
    def fmt(v: float) -> str:
        return "nan" if v != v else "inf" if v == float("inf") else f"{v:.{digits}f}"

    return f"{fmt(value)} [{fmt(low)}, {fmt(high)}]"


def _print_metrics(result, max_prompts: int) -> None:
    import pandas as pd

    frame, level = result.frame, f"{result.frame.bootstrap.confidence:.0%}"
    several_arms = frame.overall["arm"].nunique() > 1
    lead = ["arm"] if several_arms else []

    def cells(row: dict, names, digits: int = 3) -> list[str]:
        return [_ci(row[m], row[f"{m}_ci_low"], row[f"{m}_ci_high"], digits) for m in names]

    def arm(row: dict) -> list[str]:
        return [row["arm"]] if several_arms else []

    # overall: one row per (attribute, metric), one column per arm, so arms compare side by side
    arms = list(pd.unique(frame.overall["arm"]))
    table = Table("attribute", "metric", *arms, title=f"overall: mean over prompts [{level} CI over prompts]")
    by_arm = {(r["arm"], r["attribute"]): r for r in frame.overall.to_dict(orient="records")}
    for attribute in pd.unique(frame.overall["attribute"]):
        rows = [by_arm.get((a, attribute)) for a in arms]
        size = [f"{r['n_prompts']} prompts, {r['n_images']} images" if r else "-" for r in rows]
        table.add_row(attribute, "n", *size)
        for m in frame.metrics:
            table.add_row("", m, *(cells(r, [m])[0] if r else "-" for r in rows))
    console.print(table)

    group = result.group_by or "group"
    title = f"per {group}, most biased first [{level} CI over its images]"
    rows = frame.by_prompt.sort_values("normalized_bias", ascending=False, kind="stable")
    if several_arms:  # one normalized-bias column per arm, ordered by the first arm
        table = Table(group, "attribute", *(f"{a}: normalized_bias" for a in arms), title=title)
        by_key = {(r["arm"], r["prompt"], r["attribute"]): r for r in rows.to_dict(orient="records")}
        keys = list(dict.fromkeys((r["prompt"], r["attribute"]) for r in rows.to_dict(orient="records")))
        for prompt, attribute in keys[:max_prompts]:
            found = [by_key.get((a, prompt, attribute)) for a in arms]
            table.add_row(prompt, attribute, *(cells(r, ["normalized_bias"], 2)[0] if r else "-" for r in found))
        hidden = len(keys) - max_prompts
    else:
        shown = ("normalized_bias", "deviation_ratio")
        table = Table(group, "attribute", "n", "shares", *shown, title=title)
        shares = frame.shares.groupby(["prompt", "attribute"], sort=False)
        for row in rows.head(max_prompts).to_dict(orient="records"):
            mix = shares.get_group((row["prompt"], row["attribute"]))
            text = " ".join(f"{c} {s:.2f}" for c, s in zip(mix["class"], mix["share"], strict=True))
            table.add_row(row["prompt"], row["attribute"], str(row["n"]), text, *cells(row, shown, 2))
        hidden = len(rows) - max_prompts
    if hidden > 0:
        table.caption = f"{hidden} more rows: --max-prompts, or --json for all"
    console.print(table)
    if result.outcome is None:
        return

    out = result.outcome
    table = Table(*lead, "attribute", "group", "n", "rate", title=f"outcome rate per group [{level} CI]")
    for row in out.by_group.to_dict(orient="records"):
        rate = "-" if row["n"] == 0 else _ci(row["rate"], row["ci_low"], row["ci_high"])
        table.add_row(*arm(row), row["attribute"], row["group"], str(row["n"]), rate)
    console.print(table)
    table = Table(*lead, "attribute", "max - min", "max / min", "max group", "min group", title="outcome parity")
    for d, r in zip(out.difference().to_dict(orient="records"), out.ratio().to_dict(orient="records"), strict=True):
        if d["max_group"] is None:
            table.add_row(*arm(d), d["attribute"], "-", "-", "-", "-")
            continue
        diff, ratio = _ci(d["difference"], d["ci_low"], d["ci_high"]), _ci(r["ratio"], r["ci_low"], r["ci_high"])
        table.add_row(*arm(d), d["attribute"], diff, ratio, d["max_group"], d["min_group"])
    console.print(table)
