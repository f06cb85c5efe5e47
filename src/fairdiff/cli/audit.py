"""The audit commands of the `fairdiff` CLI: `audit`, `audit-merge`, `report`, `demo`.

Heavy imports stay in the command bodies so `--help` is instant.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from fairdiff.cli.app import app, console, err_console, expected_errors, key_values
from fairdiff.errors import FairdiffError
from fairdiff.models.defaults import DEFAULT_AUTOCAST, DEFAULT_STEPS

DEMO_NEGATIVE = "revealing clothes"


def _audit_progress():
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task) -> Text:
            return Text("-- img/s" if task.speed is None else f"{task.speed:.1f} img/s")

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        Rate(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=err_console,
    )


def _arms(
    negative: list[str], adapter: list[str], arms_file: Path | None, no_base: bool, allow_pickle: bool
) -> list[dict]:
    """Arm specs from the options: base, one negative arm per --negative, one adapter arm per --adapter, and
    those of the --arms file (validated here, so an error names the file and the item)."""
    arms: list[dict] = [] if no_base else [{"kind": "base", "name": "base"}]
    for i, text in enumerate(negative):
        arms.append(
            {"kind": "negative", "name": "negative" if len(negative) == 1 else f"negative{i + 1}", "negative": text}
        )
    for text in adapter:
        from fairdiff.adapters.engine import parse_adapter_spec
        from fairdiff.audit.arms import adapter_arm_name

        name = adapter_arm_name(parse_adapter_spec(text).path, {a["name"] for a in arms})
        arms.append({"kind": "adapter", "name": name, "adapters": [text], "allow_pickle": allow_pickle})
    if arms_file is not None:
        from fairdiff.audit.arm_specs import load_arms_file

        arms += load_arms_file(arms_file)
    return arms


def check_bounds(cfg, suites, out: Path) -> None:
    """The upper bounds of an audit's options (images, steps, seeds) and its run dir, checked before the plan is
    listed (AuditConfig.check has checked the lower bounds)."""
    from fairdiff.checks import MAX_IMAGES_PER_PROMPT, MAX_STEPS, check_count, check_output_dir, check_seed

    n = cfg.images_per_prompt
    if n is not None:
        check_count(n, "-n/--images-per-prompt", maximum=MAX_IMAGES_PER_PROMPT)
    check_count(cfg.steps, "--steps", maximum=MAX_STEPS)
    check_seed(cfg.seed, count=n or max((s.images_per_prompt for s in suites), default=1))
    check_output_dir(out)


def run_and_summarize(cfg, out: Path, resume: bool, title: str):
    """Run the audit with a progress bar, then print the headline and write metrics + exports."""
    from fairdiff.audit.results import load_run
    from fairdiff.audit.runner import check_audit, dist_rank, prepare_run_dir, run_audit
    from fairdiff.audit.summary import summarize
    from fairdiff.report.export import export_run

    _, suites = check_audit(cfg)  # bad input fails before anything is loaded, drawn or written
    check_bounds(cfg, suites, out)
    if not resume:
        prepare_run_dir(out, cfg, resume)
    progress = _audit_progress()  # shown from the first batch on: a loading error stays one line
    tasks: list = []

    def on_progress(done: int, total: int) -> None:
        if not tasks:
            progress.start()
            tasks.append(progress.add_task(title, total=total, completed=done))  # speed: this run's images only
        else:
            progress.update(tasks[0], completed=done)

    try:
        run_audit(cfg, out, resume=resume, on_progress=on_progress)
    finally:
        if tasks:
            progress.stop()
    rank, world_size = dist_rank()
    if world_size > 1:
        console.print(f"rank {rank}/{world_size} done; when all ranks finish: fairdiff audit-merge {out}")
        return None
    summary = summarize(load_run(out))
    export_run(summary, out)
    print_headline(summary)
    return summary


def _ci(value: float, low: float, high: float, digits: int = 2) -> str:
    if value == float("inf"):
        return "inf (min rate 0)"
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def print_headline(summary) -> None:
    import pandas as pd

    """One table per suite: per arm, the bias of each measured attribute (or the outcome's parity), and
    how many world-truth values the CIs cover."""
    acc = summary.results.record["detector"].get("accuracy", {})
    for name, s in summary.suites.items():
        if s.kind == "shares":
            attrs = list(dict.fromkeys(s.frame.overall["attribute"]))
            table = Table(
                "arm", *attrs, title=f"{name}: normalized bias (0 = parity), mean over prompts [95% CI]", min_width=60
            )
            if s.truth is not None:
                table.add_column("truth in CI")
            for arm in dict.fromkeys(s.frame.overall["arm"]):
                o = s.frame.overall[s.frame.overall["arm"] == arm].set_index("attribute")
                cells = [
                    _ci(*o.loc[a, ["normalized_bias", "normalized_bias_ci_low", "normalized_bias_ci_high"]])
                    for a in attrs
                ]
                if s.truth is not None:
                    t = s.truth[s.truth["arm"] == arm]
                    cells.append(f"{t['covered'].mean():.0%} of {len(t)}")
                table.add_row(arm, *cells)
            if s.truth_metrics:
                t = s.truth_metrics
                cells = [
                    f"{t[a]['normalized_bias']:.2f} ({t[a]['normalized_bias_at_n']:.2f} from {t[a]['n']})"
                    if a in t
                    else "-"
                    for a in attrs
                ]
                table.add_row("[italic]world truth[/]", *cells, *([""] if s.truth is not None else []))
        elif s.kind == "group":
            table = Table(
                "arm", "layout", "adherence [95% CI]", "mix error [95% CI]",
                title=f"{name}: people drawn as planned; TV between planned and detected shares per image",
            )  # fmt: skip
            for q in s.frame.overall.to_dict("records"):
                adherence = _ci(q["adherence"], q["adherence_ci_low"], q["adherence_ci_high"])
                table.add_row(
                    q["arm"],
                    q["planned_by"],
                    adherence,
                    _ci(q["mix_error"], q["mix_error_ci_low"], q["mix_error_ci_high"]),
                )
        else:
            spec = s.spec
            ratio = s.frame.ratio()
            inter = "×".join(spec["groups"])
            table = Table(
                "arm",
                "highest rate",
                "lowest rate",
                "ratio [95% CI]",
                "difference",
                title=f"{name}: {spec['outcome']} rate by {inter} named in the prompt; parity max/min, max-min",
            )
            if s.truth is not None:
                table.add_column("truth in CI")
            diff = s.frame.difference()
            for arm in dict.fromkeys(ratio["arm"]):
                r = ratio[(ratio["arm"] == arm) & (ratio["attribute"] == inter)].iloc[0]
                d = diff[(diff["arm"] == arm) & (diff["attribute"] == inter)].iloc[0]
                if r["max_group"] is None or pd.isna(r["max_group"]):  # fewer than 2 groups drawn: no parity
                    table.add_row(arm, "-", "-", "-", "-", *([""] if s.truth is not None else []))
                    continue
                g = s.frame.by_group[(s.frame.by_group["arm"] == arm) & (s.frame.by_group["attribute"] == inter)]
                g = g.set_index("group")
                cells = [
                    f"{r['max_group']} {g.loc[r['max_group'], 'rate']:.2f}",
                    f"{r['min_group']} {g.loc[r['min_group'], 'rate']:.2f}",
                    _ci(r["ratio"], r["ci_low"], r["ci_high"], 1),
                    _ci(d["difference"], d["ci_low"], d["ci_high"]),
                ]
                if s.truth is not None:
                    t = s.truth[(s.truth["arm"] == arm) & (s.truth["attribute"] == inter)]
                    cells.append(f"{t['covered'].mean():.0%} of {len(t)}")
                table.add_row(arm, *cells)
            t = (s.truth_metrics or {}).get(inter)
            if t:
                table.add_row(
                    "[italic]world truth[/]",
                    f"{t['max_group']} {t['max_rate']:.2f}",
                    f"{t['min_group']} {t['min_rate']:.2f}",
                    f"{t['ratio']:.1f}",
                    f"{t['difference']:.2f}",
                    "",
                )
        table.columns[0].no_wrap = True
        console.print(table)
    q = summary.quality
    line = ", ".join(
        f"{a} {v:.3f}" if v == v else f"{a} - (group scenes only)" for a, v in zip(q["arm"], q["validity"], strict=True)
    )
    from fairdiff.metrics.quality import VALIDITY_CONFIDENCE

    console.print(f"validity (every head >= {VALIDITY_CONFIDENCE} confident): {line}", highlight=False)
    if acc:
        accs = ", ".join(f"{a} {v['accuracy']:.3f}" for a, v in acc.items())
        console.print(f"detector accuracy ({next(iter(acc.values()))['on']}): {accs}", highlight=False)
    else:
        console.print("detector accuracy: not measured", highlight=False)


@app.command()
def audit(
    model: str = typer.Option("tiny", "--model", "-m", help="'tiny' (bundled), a pipeline directory, or a hub id."),
    suite: list[str] = typer.Option(
        ["world-occupations"], "--suite", "-s", help="Built-in suite name or YAML file (repeatable)."
    ),
    negative: list[str] = typer.Option(
        [], "--negative", help="Add a negative-prompt arm with these terms (repeatable)."
    ),
    adapter: list[str] = typer.Option([], "--adapter", help="Add an adapter arm FILE[:WEIGHT] (repeatable; batched)."),
    arms_file: Path = typer.Option(None, "--arms", help="YAML list of arm specs (kind, name, ...)."),
    no_base: bool = typer.Option(False, "--no-base", help="Leave out the base arm."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Allow pickled adapter files (unsafe)."),
    detector: str = typer.Option(
        "world", "--detector", "-d", help="world, clip, nudenet, or several joined by + (clip+nudenet)."
    ),
    detector_option: list[str] = typer.Option(
        [], "--detector-option", help="KEY=VALUE for the detector (e.g. checkpoint=DIR, accuracy_csv=FILE)."
    ),
    n: int = typer.Option(None, "--images-per-prompt", "-n", help="Images per prompt and arm (default: the suite's)."),
    max_prompts: int = typer.Option(None, "--max-prompts", help="Only the first N prompts of each suite."),
    seed: int = typer.Option(0, "--seed", help="Image i of every prompt and arm uses seed SEED+i."),
    steps: int = typer.Option(DEFAULT_STEPS, "--steps", help="Denoising steps."),
    guidance: float = typer.Option(None, "--guidance", help="Guidance scale (default: the model's)."),
    autocast: str = typer.Option(
        DEFAULT_AUTOCAST, "--autocast", help="bf16 autocast: auto (on where the CPU runs bf16 natively), on, off."
    ),
    batch_size: int = typer.Option(32, "--batch-size"),
    device: str = typer.Option("cpu", "--device"),
    dtype: str = typer.Option("float32", "--dtype"),
    world: Path = typer.Option(None, "--world", help="World config YAML (truth of world suites)."),
    out: Path = typer.Option(Path("out/audit"), "--out", "-o", help="Run directory."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out (skips stored images)."),
) -> None:
    """Audit a model (and arms: negative prompts, adapters) on suites: who it draws, with CIs, into a run dir.

    Shard with `torchrun --nproc_per_node K $(which fairdiff) audit ...` (each rank a shard), then `audit-merge`."""
    with expected_errors():
        from fairdiff.audit.runner import AuditConfig

        cfg = AuditConfig(
            model=model,
            suites=list(suite),
            arms=_arms(negative, adapter, arms_file, no_base, allow_pickle),
            detector=detector,
            detector_options=key_values(detector_option, "--detector-option"),
            images_per_prompt=n,
            max_prompts=max_prompts,
            seed=seed,
            steps=steps,
            guidance=guidance,
            autocast=autocast,
            batch_size=batch_size,
            device=device,
            dtype=dtype,
            world=str(world) if world else None,
        )
        summary = run_and_summarize(cfg, out, resume, f"audit ({model})")
        if summary is not None:
            console.print(f"run dir {out}: metrics.json, rows.csv/parquet; report: fairdiff report {out}")


@app.command("audit-merge")
def audit_merge(run_dir: Path = typer.Argument(..., help="Run directory of a sharded audit.")) -> None:
    """Fold the rank shards of a sharded audit into one store, then write metrics and exports."""
    with expected_errors():
        from fairdiff.audit.results import load_run
        from fairdiff.audit.runner import CONFIG_NAME
        from fairdiff.audit.store import merge_stores
        from fairdiff.audit.summary import summarize
        from fairdiff.report.export import export_run

        if not (run_dir / CONFIG_NAME).is_file():
            raise FairdiffError(f"{run_dir}: not an audit run dir (no {CONFIG_NAME})")
        rows = merge_stores(run_dir)
        summary = summarize(load_run(run_dir))
        export_run(summary, run_dir)
        print_headline(summary)
        console.print(f"merged {rows} images into {run_dir / 'store.sqlite'}")


@app.command()
def report(
    run_dirs: list[Path] = typer.Argument(..., help="One or more audit run directories."),
    out: Path = typer.Option(Path("out/report.html"), "--out", "-o", help="HTML file to write."),
    csv: Path = typer.Option(None, "--csv", help="Also write per-image rows and metrics as CSV + Parquet here."),
    n_boot: int = typer.Option(1000, "--n-boot", help="Bootstrap resamples for metric CIs."),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap."),
) -> None:
    """Write one self-contained HTML report (tables, charts, image grids, configs) for audit runs."""
    with expected_errors():
        from fairdiff.checks import MAX_N_BOOT, check_count, check_output_dir, check_output_file, check_seed
        from fairdiff.report import export_runs, load_runs, render_report

        check_count(n_boot, "--n-boot", maximum=MAX_N_BOOT)
        check_seed(seed)
        check_output_file(out)
        if csv is not None:
            check_output_dir(csv, "--csv")
        runs = load_runs(run_dirs, n_boot=n_boot, seed=seed)
        console.print(f"wrote {render_report(runs, out)}")
        if csv is not None:
            for p in export_runs(runs, csv):
                console.print(f"wrote {p}")


@app.command()
def demo(
    out: Path = typer.Option(Path("out/demo"), "--out", "-o", help="Run directory (report.html goes here too)."),
    n: int = typer.Option(None, "-n", help="Images per prompt and arm (default: each suite's, a few minutes' worth)."),
    steps: int = typer.Option(DEFAULT_STEPS, "--steps", help="Denoising steps (fewer: a quick look)."),
    max_prompts: int = typer.Option(None, "--max-prompts", help="Only the first N prompts of each suite."),
    autocast: str = typer.Option(
        DEFAULT_AUTOCAST, "--autocast", help="bf16 autocast: auto (on where the CPU runs bf16 natively), on, off."
    ),
) -> None:
    """The main job on the bundled default: audit the tiny model on the world suites, print, write the report.

    Arms: `base` at guidance 1 (the model's learned distribution, to check against the world's truth),
    `guided` at the model's default guidance 3, `guided-no-revealing` (guidance 3, negative prompt
    "revealing clothes"), and the shipped mitigations at guidance 3: the fairness LoRA `lora-balanced`,
    the closed-form edit `edit-uce` and the exact-quota arm `quota` (docs/mitigate.md). Run it again on the
    same --out and it continues (or just re-reports) that run."""
    with expected_errors():
        from fairdiff.audit.runner import AuditConfig
        from fairdiff.models.tiny import DEFAULT_GUIDANCE_SCALE
        from fairdiff.report import render_report, summarized_run
        from fairdiff.world.shipped import shipped_arms

        cfg = AuditConfig(
            model="tiny",
            suites=["world-occupations", "world-avatars"],
            arms=[
                {"kind": "base", "name": "base", "guidance": 1.0},
                {"kind": "base", "name": "guided", "guidance": DEFAULT_GUIDANCE_SCALE},
                {
                    "kind": "negative",
                    "name": "guided-no-revealing",
                    "guidance": DEFAULT_GUIDANCE_SCALE,
                    "negative": DEMO_NEGATIVE,
                },
                *({**arm, "guidance": DEFAULT_GUIDANCE_SCALE} for arm in shipped_arms()),
            ],
            images_per_prompt=n,
            max_prompts=max_prompts,
            steps=steps,
            batch_size=64,
            autocast=autocast,
        )
        summary = run_and_summarize(cfg, out, True, "demo audit (tiny model)")
        if summary is None:  # one rank of a sharded run: audit-merge summarizes
            return
        path = render_report(summarized_run(out, summary), out / "report.html")
        console.print(f"report: [bold]{path}[/]  (run dir {out}: metrics.json, rows.csv/parquet)")
