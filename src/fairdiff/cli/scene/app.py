"""The `fairdiff scene` command group."""

from __future__ import annotations

import typer

from fairdiff.cli.app import app

scene_app = typer.Typer(
    help="Group scenes: plan people in exact proportions, draw each box with its own prompt, verify.",
    no_args_is_help=True,
)
app.add_typer(scene_app, name="scene")
