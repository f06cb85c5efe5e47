"""`fairdiff study ...`: measured answers to the claims about fixing bias with LoRAs or with W.

Each study is a list of cached stages (fairdiff.study.stages) in one --out folder: rerun the same command and
finished stages are reused, a killed one resumes (its audits too), a changed size reruns what it changes. One
progress bar per stage. Heavy imports stay in the command bodies so `--help` is instant.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import typer
from rich.table import Table

from fairdiff.cli.app import app, console, expected_errors, progress_bar

study_app = typer.Typer(
    help="Studies: lora-vs-w (every mitigation, same prompts and seeds, with costs), stack (adapters stacked "
    "k = 1..128), claims (both, one HTML report with a computed verdict per claim).",
    no_args_is_help=True,
)
app.add_typer(study_app, name="study")

_OUT = typer.Option(..., "--out", "-o", help="Study folder (stages are cached here; rerun to resume).")
_QUICK = typer.Option(False, "--quick", help="Every stage at tiny size (seconds to a minute; for tests).")
_CONFIG = typer.Option(None, "--config", help="YAML of lora-vs-w sizes (keys of LoraVsWConfig) over the defaults.")

_COLORS = {"supported": "green", "not supported": "red", "mixed": "yellow", "not measured": "dim"}


def _progress(stack):
    """progress_for(stage) for run_stages: one bar per stage, added when the stage reports first."""
    bar = stack.enter_context(progress_bar())

    def progress_for(stage):
        task: list = []

        def update(done: int, total: int) -> None:
            if not task:
                task.append(bar.add_task(stage.name, total=max(total, 1), completed=done))
            else:
                bar.update(task[0], total=max(total, 1), completed=done)

        return update

    return progress_for


def _run(out: Path, quick: bool, config: Path | None, include_stack: bool, only_lora_vs_w: bool) -> None:
    from contextlib import ExitStack

    from fairdiff.study.claims import CLAIMS
    from fairdiff.study.lora_vs_w import load_config
    from fairdiff.study.studies import run_claims

    cfg = load_config(config, quick)
    claims = tuple(c for c in CLAIMS if c.source == "lora-vs-w") if only_lora_vs_w else CLAIMS
    command = "fairdiff " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    with ExitStack() as stack:
        path, verdicts, results = run_claims(
            out,
            cfg,
            include_stack=include_stack,
            quick=quick,
            progress_for=_progress(stack),
            command=command,
            claims=claims,
        )
    table = Table("claim", "verdict", "statement", title="verdicts (rules: docs/study.md)")
    for v in verdicts:
        table.add_row(v.claim.id, f"[{_COLORS[v.verdict]}]{v.verdict}[/]", v.claim.statement)
    console.print(table)
    took = ", ".join(f"{r.name} {'reused' if r.skipped else f'{r.seconds:.0f}s'}" for r in results.values())
    console.print(f"stages: {took}", highlight=False)
    console.print(f"report: [bold]{path}[/] (numbers.csv/parquet, verdicts.csv beside it)")


@study_app.command("lora-vs-w")
def lora_vs_w(out: Path = _OUT, quick: bool = _QUICK, config: Path = _CONFIG) -> None:
    """Every mitigation arm on the same held-out prompts and seeds: bias, extractability, quality, training cost,
    overhead merged/unmerged, reversibility, composability, LoRA rank vs the full edit (claims C1-C4, C5a, C7)."""
    with expected_errors():
        _run(out, quick, config, include_stack=False, only_lora_vs_w=True)


@study_app.command("claims")
def claims(
    out: Path = _OUT,
    quick: bool = _QUICK,
    config: Path = _CONFIG,
    no_stack: bool = typer.Option(False, "--no-stack", help="Leave out the stack study (C5, C6, C8 not measured)."),
) -> None:
    """lora-vs-w and stack into one folder, then one self-contained HTML report with every claim's verdict."""
    with expected_errors():
        _run(out, quick, config, include_stack=not no_stack, only_lora_vs_w=False)


@study_app.command("stack")
def stack(out: Path = _OUT, quick: bool = _QUICK) -> None:
    """Adapters stacked k = 1, 2, 4, ... 128, combined every way (see docs/study-stack.md); claims C5, C6, C8."""
    with expected_errors():
        from contextlib import ExitStack

        from fairdiff.errors import FairdiffError
        from fairdiff.study.stages import run_stages
        from fairdiff.study.studies import stack_stage

        stage = stack_stage(quick=quick)
        if stage is None:
            raise FairdiffError("the stack study (fairdiff.study.stack) is not part of this installation")
        with ExitStack() as es:
            results = run_stages([stage], out, _progress(es))
        console.print(f"stack: {len(results['stack'].table)} rows in {out / 'stack' / 'table.csv'}")
