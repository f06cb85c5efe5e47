"""`fairdiff world ...`: render, sheet, train the classifier and the tiny model, quality gates.

Heavy imports stay in the command bodies so `--help` is instant."""

from __future__ import annotations

import math
from pathlib import Path

import typer
from rich.table import Table

from fairdiff.checks import MAX_IMAGES, check_count, check_output_file, check_seed
from fairdiff.cli.app import app, console, expected_errors, key_values, progress_bar
from fairdiff.errors import FairdiffError
from fairdiff.models.defaults import DEFAULT_AUTOCAST, DEFAULT_STEPS, check_autocast

world_app = typer.Typer(
    help="The portrait world: renders with known biases, its classifier and tiny model.", no_args_is_help=True
)
app.add_typer(world_app, name="world")


@world_app.command("render")
def world_render(
    n: int = typer.Option(1000, "--n", "-n", help="Number of images."),
    out: Path = typer.Option(
        Path("out/world"),
        "--out",
        "-o",
        help="Output directory (images/ + manifest.jsonl); a previous render there is replaced whole.",
    ),
    seed: int = typer.Option(0, "--seed"),
    config: Path = typer.Option(None, "--config", "-c", help="World config YAML (default: the bundled world)."),
) -> None:
    """Render N world samples: PNGs plus a manifest of captions and attribute labels."""
    with expected_errors():
        from fairdiff.files import ensure_writable_dir
        from fairdiff.world.config import load_world_config
        from fairdiff.world.dataset import check_render_target, render_dataset

        if n < 1:
            raise FairdiffError(f"--n must be >= 1, got {n}")
        if seed < 0:
            raise FairdiffError(f"--seed must be >= 0 for the world's renders, got {seed}")
        check_count(n, "--n", maximum=MAX_IMAGES)
        check_seed(seed)
        world = load_world_config(config)
        check_render_target(out)  # a previous render is replaced whole; any other non-empty folder is refused
        ensure_writable_dir(out.resolve().parent)  # the render is built beside `out`, then swapped in
        manifest = render_dataset(world, n, seed, out)
        console.print(f"rendered {n} portraits into {out / 'images'}; labels in {manifest}")


@world_app.command("sheet")
def world_sheet(
    out: Path = typer.Option(
        Path("out/world-sheet.png"),
        "--out",
        "-o",
        help="PNG file to write (no extension: .png is added).",
    ),
    config: Path = typer.Option(None, "--config", "-c", help="World config YAML (default: the bundled world)."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Draw a labelled contact sheet: one row per occupation, every attribute combination across."""
    with expected_errors():
        import io

        from PIL import Image

        from fairdiff.files import ensure_writable_dir, write_atomic
        from fairdiff.world.config import load_world_config
        from fairdiff.world.dataset import contact_sheet

        if not out.suffix:
            out = out.with_suffix(".png")  # `-o sheet` means sheet.png
        image_format = Image.registered_extensions().get(out.suffix.lower())
        if image_format is None:
            raise FairdiffError(f"--out {out}: unknown image extension {out.suffix!r}; use .png")
        check_output_file(out)
        if out.is_dir():
            raise FairdiffError(f"--out {out}: is a directory; give a file name such as {out / 'sheet.png'}")
        check_seed(seed)
        world = load_world_config(config)
        ensure_writable_dir(out.parent)
        buffer = io.BytesIO()
        contact_sheet(list(world.occupations), seed=seed).save(buffer, format=image_format)
        try:
            write_atomic(out, buffer.getvalue())
        except OSError as exc:
            raise FairdiffError(f"--out {out}: could not write ({exc.strerror or exc})") from None
        console.print(f"wrote {out}")


@world_app.command("train-classifier")
def world_train_classifier(
    out: Path = typer.Option(None, "--out", "-o", help="Weights file (default: the bundled classifier)."),
    n_train: int = typer.Option(24_000, "--n-train"),
    epochs: int = typer.Option(5, "--epochs"),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Recipe: train the world classifier on uniform renders; prints held-out accuracy per attribute."""
    with expected_errors():
        from fairdiff.world.classifier import BUNDLED_CLASSIFIER, TrainClassifierConfig, train_classifier

        if n_train < 1 or epochs < 1:
            raise FairdiffError(f"--n-train and --epochs must be >= 1, got {n_train} and {epochs}")
        target = out or BUNDLED_CLASSIFIER
        acc = train_classifier(TrainClassifierConfig(n_train=n_train, epochs=epochs, seed=seed), target)
        table = Table("attribute", "held-out accuracy", title=f"world classifier -> {target}")
        for a, v in acc.items():
            table.add_row(a, f"{v:.4f}")
        console.print(table)


def _unet_overrides(items: list[str]) -> dict:
    """--unet KEY=VALUE -> UNet config overrides (YAML lists become the tuples diffusers configs hold)."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in key_values(items, "--unet").items()}


@world_app.command("train-model")
def world_train_model(
    out: Path = typer.Option(
        Path("runs/train-model"), "--out", "-o", help="Run directory (resumes if it has a checkpoint)."
    ),
    steps: int = typer.Option(5000, "--steps"),
    batch_size: int = typer.Option(64, "--batch-size"),
    lr: float = typer.Option(5e-4, "--lr"),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("cpu", "--device"),
    config: Path = typer.Option(None, "--config", "-c", help="World config YAML (default: the bundled world)."),
    bundle: bool = typer.Option(False, "--bundle", help="Copy the final pipeline over the bundled tiny model."),
    unet: list[str] = typer.Option(
        [], "--unet", help="Override a UNet config key, KEY=YAML (e.g. 'block_out_channels=[48, 96, 192]')."
    ),
    checkpoint_every: int = typer.Option(
        250, "--checkpoint-every", help="Steps between checkpoints (each also exports out/pipeline)."
    ),
    init: Path = typer.Option(
        None, "--init", help="Start from this pipeline directory's UNet weights ('tiny': the bundled model)."
    ),
    high_t_share: float = typer.Option(
        0.0, "--high-t-share", help="Share of timesteps drawn from [--high-t-from, 1000) (where skin bins separate)."
    ),
    high_t_from: int = typer.Option(850, "--high-t-from", help="Lowest timestep of that band (0-999)."),
    workers: int = typer.Option(
        0, "--workers", help="Processes rendering batches ahead of the step (same batches; for GPU runs)."
    ),
) -> None:
    """Recipe: train the tiny text-to-image model on the world (resumable; checkpoints + log in --out)."""
    with expected_errors():
        from fairdiff.files import ensure_writable_dir
        from fairdiff.models.loading import resolve_device
        from fairdiff.models.tiny import bundled_model_dir
        from fairdiff.world.config import load_world_config
        from fairdiff.world.train_model import TrainModelConfig, bundle_pipeline, init_weights_path, train_model

        if min(steps, batch_size, checkpoint_every) < 1:
            raise FairdiffError(
                "--steps, --batch-size and --checkpoint-every must be >= 1, "
                f"got {steps}, {batch_size}, {checkpoint_every}"
            )
        if workers < 0:
            raise FairdiffError(f"--workers must be >= 0, got {workers}")
        if not (math.isfinite(lr) and lr > 0):
            raise FairdiffError(f"--lr must be a finite number > 0, got {lr}")
        if not 0.0 <= high_t_share <= 1.0 or not 0 <= high_t_from < 1000:
            raise FairdiffError(
                f"--high-t-share must be in [0, 1] and --high-t-from in [0, 1000), got {high_t_share}, {high_t_from}"
            )
        if init is not None:
            init = bundled_model_dir() if str(init) == "tiny" else init
            init_weights_path(init)  # fail before anything is written
        resolve_device(device)
        world = load_world_config(config)
        ensure_writable_dir(out)
        cfg = TrainModelConfig(
            steps=steps,
            batch_size=batch_size,
            lr=lr,
            seed=seed,
            device=device,
            unet=_unet_overrides(unet),
            checkpoint_every=checkpoint_every,
            high_t_share=high_t_share,
            high_t_from=high_t_from,
            init=None if init is None else str(init),
            workers=workers,
        )
        with progress_bar() as progress:
            task = progress.add_task("train-model", total=steps)
            pipeline_dir = train_model(world, cfg, out, on_step=lambda s, loss: progress.update(task, completed=s))
        if bundle:
            pipeline_dir = bundle_pipeline(pipeline_dir, bundled_model_dir())  # copied aside, then swapped in
        console.print(f"model written to {pipeline_dir}; try `fairdiff generate --model {pipeline_dir} -p '...'`")


@world_app.command("gates")
def world_gates(
    model: str = typer.Option("tiny", "--model", "-m", help="'tiny' (bundled) or a pipeline directory."),
    out: Path = typer.Option(Path("out/gates.json"), "--out", "-o", help="JSON file for the full results."),
    config: Path = typer.Option(None, "--config", "-c", help="World config YAML the model was trained on."),
    scale: float = typer.Option(1.0, "--scale", help="Multiply every sample size (0.1 for a quick look)."),
    steps: int = typer.Option(DEFAULT_STEPS, "--steps", help="Denoising steps."),
    autocast: str = typer.Option(
        DEFAULT_AUTOCAST, "--autocast", help="bf16 autocast: auto (on where the CPU runs bf16 natively), on, off."
    ),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("cpu", "--device"),
    batch_size: int = typer.Option(256, "--batch-size"),
) -> None:
    """Measure the model's quality gates (controllability, fidelity, validity, paraphrase) with the classifier."""
    with expected_errors():
        from fairdiff.files import ensure_writable_dir, write_json_atomic
        from fairdiff.models.loading import load_pipeline
        from fairdiff.models.sampling import ImageOptions, SamplingRequest, autocast_used, draw
        from fairdiff.world.classifier import load_classifier, predict_probs
        from fairdiff.world.config import load_world_config
        from fairdiff.world.gates import GateConfig, check_gate_world, run_gates

        if not scale > 0 or steps < 1 or batch_size < 1:
            raise FairdiffError(
                f"--scale must be > 0, --steps and --batch-size >= 1, got {scale}, {steps} and {batch_size}"
            )
        check_autocast(autocast)
        world = load_world_config(config)
        check_gate_world(world, GateConfig())  # before the model loads
        check_output_file(out)
        check_seed(seed)
        ensure_writable_dir(out.parent)
        loaded = load_pipeline(model, device=device)
        if loaded.kind != "tiny":
            raise FairdiffError(f"model {model!r} is a {loaded.kind} pipeline; gates need a portrait-world model")
        classifier = load_classifier()
        base = GateConfig()
        cfg = GateConfig(
            control_n=max(1, round(base.control_n * scale)),
            fidelity_n=max(1, round(base.fidelity_n * scale)),
            guided_n=max(1, round(base.guided_n * scale)),
            paraphrase_n=max(1, round(base.paraphrase_n * scale)),
            steps=steps,
            seed=seed,
            batch_size=batch_size,
        )
        total = (
            len(cfg.control_occupations) * 8 * cfg.control_n
            + len(cfg.fidelity_occupations) * (cfg.fidelity_n + cfg.guided_n)
            + sum(len(world.occupations[o].paraphrases) for o in cfg.fidelity_occupations) * cfg.paraphrase_n
        )

        def sample(prompts, seeds, guidance):
            images = [ImageOptions(p, "", s, guidance) for p, s in zip(prompts, seeds, strict=True)]
            return draw(loaded, SamplingRequest(images, steps=cfg.steps, autocast=autocast))

        with progress_bar() as progress:
            task = progress.add_task("gates", total=total)
            report = run_gates(
                world,
                sample,
                lambda imgs: predict_probs(classifier, imgs),
                cfg,
                on_images=lambda k: progress.advance(task, k),
            )
        record = {"model": model, "bf16_autocast": autocast_used(loaded, autocast), **report.as_dict()}
        write_json_atomic(out, record)
        _print_gates(report)
        console.print(f"full results in {out}")


def _print_gates(report) -> None:
    cfg = report.config
    table = Table("gate", "measured", "target", "pass", title="quality gates")
    for name, measured, target, passed in report.summary_rows():
        table.add_row(name, measured, target, "[green]yes[/]" if passed else "[red]no[/]")
    console.print(table)
    amp = Table(
        "occupation",
        "attribute",
        "top value: injected / g1 / guided",
        "normalized bias: injected / g1 / guided",
        "amplification",
        title=f"how guidance {cfg['guidance']} amplifies each skew (normalized bias, 0 = parity)",
    )
    for occ, attrs in report.fidelity.items():
        for a, values in attrs.items():
            top = max(values, key=lambda v: values[v]["injected"])
            row, bias = values[top], report.guidance_amplification[occ][a]
            amp.add_row(
                occ,
                f"{a}={top}",
                f"{row['injected']:.2f} / {row['g1']:.2f} / {row['guided']:.2f}",
                f"{bias['injected']:.2f} / {bias['g1']:.2f} / {bias['guided']:.2f}",
                "-" if bias["ratio"] is None else f"{bias['ratio']:.2f}x",
            )
    console.print(amp)
    off = report.off_palette
    console.print(
        "faces in a colour no render has (between skin bins; diagnostic): "
        + ", ".join(f"{k} {v:.1%}" for k, v in off.items() if k != "all")
        + f" at guidance 1; {off['all']:.1%} of all gate images"
    )
