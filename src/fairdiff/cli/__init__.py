"""The `fairdiff` command line: one typer app, a module per command group. Each command parses, builds a
config, calls the library, prints; nothing in the library imports this package.

Expected failures (bad input, missing files) print one red line and exit 1; `--debug` shows the traceback.
Heavy imports (torch, diffusers, pandas) stay inside command bodies so `--help` is instant.
"""

from __future__ import annotations

from fairdiff.cli import adapters, audit, generate, metrics, mitigate, scene, study, world  # noqa: F401  (each registers)
from fairdiff.cli.app import app

__all__ = ["app"]
