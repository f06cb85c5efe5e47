"""`fairdiff generate`: images for one prompt (the command; the job is `fairdiff.generate`)."""

from __future__ import annotations

from pathlib import Path

import typer

from fairdiff.cli.app import app, console, expected_errors, progress_bar
from fairdiff.models.defaults import DEFAULT_AUTOCAST, DEFAULT_STEPS


@app.command()
def generate(
    prompt: str = typer.Option(
        ..., "--prompt", "-p", help='Prompt; "-term" or -"two words" moves a term to the negative prompt.'
    ),
    model: str = typer.Option("tiny", "--model", "-m", help="'tiny' (bundled), a pipeline directory, or a hub id."),
    negative: str = typer.Option(None, "--negative", help="Negative prompt (the -terms of --prompt are appended)."),
    n: int = typer.Option(16, "-n", help="Number of images; image i uses seed SEED+i."),
    seed: int = typer.Option(0, "--seed", help="Seed of the first image."),
    steps: int = typer.Option(DEFAULT_STEPS, "--steps", help="Denoising steps."),
    autocast: str = typer.Option(
        DEFAULT_AUTOCAST, "--autocast", help="bf16 autocast: auto (on where the CPU runs bf16 natively), on, off."
    ),
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
        from fairdiff.checks import MAX_IMAGES, MAX_STEPS, check_count, check_output_dir, check_seed
        from fairdiff.files import ensure_writable_dir
        from fairdiff.generate import GenerateConfig, check_image_size
        from fairdiff.generate import generate as run_generate
        from fairdiff.models.loading import load_pipeline

        cfg = GenerateConfig(
            prompt=prompt,
            negative=negative,
            n=n,
            seed=seed,
            steps=steps,
            autocast=autocast,
            guidance=guidance,
            batch_size=batch_size,
            height=height,
            width=width,
            adapters=list(adapter),
            allow_pickle=allow_pickle,
        )
        cfg.check()
        check_count(n, "-n", maximum=MAX_IMAGES)
        check_count(steps, "--steps", maximum=MAX_STEPS)
        check_seed(seed, count=n)
        check_output_dir(out)
        ensure_writable_dir(out)
        loaded = load_pipeline(model, device=device, dtype=dtype)
        check_image_size(loaded, cfg)
        with progress_bar() as progress:
            task = progress.add_task(f"generate ({model})", total=n)
            sidecar = run_generate(loaded, cfg, out, on_batch=lambda k: progress.advance(task, k))
        console.print(
            f"wrote {n} images, [bold]{out / 'grid.png'}[/] and {out / 'generate.json'} "
            f"({sidecar['seconds']:.1f}s; prompt {sidecar['positive_prompt']!r}, "
            f"negative {sidecar['negative_prompt']!r})",
            highlight=False,
        )
