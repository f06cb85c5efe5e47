"""The shared parts of the `fairdiff` command line: the typer app, consoles, the one-red-line error handler.

Expected failures (bad input, missing files) print one red line and exit 1; `--debug` shows the traceback.
Heavy imports (torch, diffusers) stay inside command bodies so `--help` is instant.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager

import typer
from rich.console import Console
from rich.markup import escape

from fairdiff import __version__
from fairdiff.errors import FairdiffError

app = typer.Typer(
    help="Assess and mitigate demographic bias in text-to-image diffusion models and LoRA adapters.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

console = Console()
err_console = Console(stderr=True)
_state = {"debug": False}


@contextmanager
def expected_errors():
    """Turn a FairdiffError into one red line and exit code 1 (re-raised with --debug)."""
    try:
        yield
    except FairdiffError as exc:
        if _state["debug"]:
            raise
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None


def key_values(items: list[str], option: str) -> dict:
    """KEY=VALUE options -> dict; each value read as YAML (numbers, true/false, lists, text)."""
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise FairdiffError(f"{option} {item!r}: expected KEY=VALUE")
        try:
            out[key.strip()] = yaml.safe_load(value) if value else ""
        except yaml.YAMLError as exc:
            raise FairdiffError(f"{option} {item!r}: not a YAML value ({exc})") from None
    return out


def _version(value: bool) -> None:
    if value:
        console.print(f"fairdiff {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for expected errors."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress of the library."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    _state["debug"] = debug
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    _quiet_libraries()


def _quiet_libraries() -> None:
    """Silence load-time chatter of transformers/diffusers (pooler weights MiniLM does not use, etc.)."""
    import os

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def progress_bar():
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=err_console,
        transient=False,
    )
