"""The `fairdiff` command line. Each command parses, builds a config, calls the library, prints.

Expected failures (bad input, missing files) print one red line and exit 1; `--debug` shows the traceback.
Heavy imports (torch, diffusers) stay inside command bodies so `--help` is instant.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path

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


def _progress():
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


@app.command()
def generate(
    prompt: str = typer.Option(
        ..., "--prompt", "-p", help='Prompt; "-term" or -"two words" moves a term to the negative prompt.'
    ),
    model: str = typer.Option("tiny", "--model", "-m", help="'tiny' (bundled), a pipeline directory, or a hub id."),
    negative: str = typer.Option(None, "--negative", help="Negative prompt (the -terms of --prompt are appended)."),
    n: int = typer.Option(16, "-n", help="Number of images; image i uses seed SEED+i."),
    seed: int = typer.Option(0, "--seed", help="Seed of the first image."),
    steps: int = typer.Option(25, "--steps", help="Denoising steps."),
    guidance: float = typer.Option(None, "--guidance", help="Classifier-free guidance scale (default: the model's)."),
    batch_size: int = typer.Option(16, "--batch-size", help="Images per forward pass."),
    height: int = typer.Option(None, "--height", help="Image height (SD/SDXL only)."),
    width: int = typer.Option(None, "--width", help="Image width (SD/SDXL only)."),
    out: Path = typer.Option(Path("out/generate"), "--out", "-o", help="Output directory."),
    device: str = typer.Option("cpu", "--device", help="torch device: cpu, cuda, cuda:1, mps."),
    dtype: str = typer.Option("float32", "--dtype", help="float32, float16 or bfloat16."),
    adapter: list[str] = typer.Option(
        [], "--adapter", help="LoRA adapter FILE[:WEIGHT] (repeatable; weights combine exactly)."
    ),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Read pickled adapter weights (can run code)."),
) -> None:
    """Generate images for one prompt: PNGs, a grid and a JSON sidecar (seeds, versions, weight hashes)."""
    with expected_errors():
        from fairdiff.generate import GenerateConfig, check_image_size, ensure_writable_dir
        from fairdiff.generate import generate as run_generate
        from fairdiff.models.loading import load_pipeline

        cfg = GenerateConfig(
            prompt=prompt,
            negative=negative,
            n=n,
            seed=seed,
            steps=steps,
            guidance=guidance,
            batch_size=batch_size,
            height=height,
            width=width,
            adapters=list(adapter),
            allow_pickle=allow_pickle,
        )
        cfg.check()
        ensure_writable_dir(out)
        loaded = load_pipeline(model, device=device, dtype=dtype)
        check_image_size(loaded, cfg)
        with _progress() as progress:
            task = progress.add_task(f"generate ({model})", total=n)
            sidecar = run_generate(loaded, cfg, out, on_batch=lambda k: progress.advance(task, k))
        console.print(
            f"wrote {n} images, [bold]{out / 'grid.png'}[/] and {out / 'generate.json'} "
            f"({sidecar['seconds']:.1f}s; prompt {sidecar['positive_prompt']!r}, "
            f"negative {sidecar['negative_prompt']!r})",
            highlight=False,
        )


# Commands owned by subsystems register themselves on `app` when imported.
from fairdiff.adapters import cli as _adapters_cli  # noqa: E402,F401
from fairdiff.audit import cli as _audit_cli  # noqa: E402,F401
from fairdiff.metrics import cli as _metrics_cli  # noqa: E402,F401
from fairdiff.world import cli as _world_cli  # noqa: E402,F401

if __name__ == "__main__":  # pragma: no cover
    # `python -m fairdiff.cli`: run the imported module's app, the one the subsystems registered on
    from fairdiff.cli import app as _registered_app

    _registered_app()
