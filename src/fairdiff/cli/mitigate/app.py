"""The `fairdiff mitigate` command group."""

from __future__ import annotations

import typer

from fairdiff.cli.app import app

mitigate_app = typer.Typer(
    help="Build mitigations (fairness LoRA, fine-tuned W, closed-form edit) that `fairdiff audit` runs as arms.",
    no_args_is_help=True,
)
app.add_typer(mitigate_app, name="mitigate")
