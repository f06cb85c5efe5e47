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
from rich.table import Table

from fairdiff import __version__
from fairdiff.errors import FairdiffError

app = typer.Typer(
    help="Assess and mitigate demographic bias in text-to-image diffusion models and LoRA adapters.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
world_app = typer.Typer(
    help="The portrait world: renders with known biases, its classifier and tiny model.", no_args_is_help=True
)
app.add_typer(world_app, name="world")

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


@world_app.command("render")
def world_render(
    n: int = typer.Option(1000, "--n", "-n", help="Number of images."),
    out: Path = typer.Option(Path("out/world"), "--out", "-o", help="Output directory (images/ + manifest.jsonl)."),
    seed: int = typer.Option(0, "--seed"),
    config: Path = typer.Option(None, "--config", "-c", help="World config YAML (default: the bundled world)."),
) -> None:
    """Render N world samples: PNGs plus a manifest of captions and attribute labels."""
    with expected_errors():
        from fairdiff.generate import ensure_writable_dir
        from fairdiff.world.config import load_world_config
        from fairdiff.world.dataset import render_dataset

        if n < 1:
            raise FairdiffError(f"--n must be >= 1, got {n}")
        world = load_world_config(config)
        ensure_writable_dir(out)
        manifest = render_dataset(world, n, seed, out)
        console.print(f"rendered {n} portraits into {out / 'images'}; labels in {manifest}")


@world_app.command("sheet")
def world_sheet(
    out: Path = typer.Option(Path("out/world-sheet.png"), "--out", "-o", help="PNG file to write."),
    config: Path = typer.Option(None, "--config", "-c", help="World config YAML (default: the bundled world)."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Draw a labelled contact sheet: one row per occupation, every attribute combination across."""
    with expected_errors():
        from fairdiff.generate import ensure_writable_dir
        from fairdiff.world.config import load_world_config
        from fairdiff.world.dataset import contact_sheet

        world = load_world_config(config)
        ensure_writable_dir(out.parent)
        contact_sheet(list(world.occupations), seed=seed).save(out)
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
) -> None:
    """Recipe: train the tiny text-to-image model on the world (resumable; checkpoints + log in --out)."""
    with expected_errors():
        import shutil

        from fairdiff.generate import ensure_writable_dir
        from fairdiff.models.loading import resolve_device
        from fairdiff.models.tiny import bundled_model_dir
        from fairdiff.world.config import load_world_config
        from fairdiff.world.train_model import TrainModelConfig, train_model

        if steps < 1 or batch_size < 1:
            raise FairdiffError(f"--steps and --batch-size must be >= 1, got {steps} and {batch_size}")
        resolve_device(device)
        world = load_world_config(config)
        ensure_writable_dir(out)
        cfg = TrainModelConfig(
            steps=steps,
            batch_size=batch_size,
            lr=lr,
            seed=seed,
            device=device,
            bf16=device == "cpu" or device.startswith("cuda"),
        )
        with _progress() as progress:
            task = progress.add_task("train-model", total=steps)
            pipeline_dir = train_model(world, cfg, out, on_step=lambda s, loss: progress.update(task, completed=s))
        if bundle:
            target = bundled_model_dir()
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(pipeline_dir, target)
            pipeline_dir = target
        console.print(f"model written to {pipeline_dir}; try `fairdiff generate --model {pipeline_dir} -p '...'`")


@world_app.command("gates")
def world_gates(
    model: str = typer.Option("tiny", "--model", "-m", help="'tiny' (bundled) or a pipeline directory."),
    out: Path = typer.Option(Path("out/gates.json"), "--out", "-o", help="JSON file for the full results."),
    config: Path = typer.Option(None, "--config", "-c", help="World config YAML the model was trained on."),
    scale: float = typer.Option(1.0, "--scale", help="Multiply every sample size (0.1 for a quick look)."),
    steps: int = typer.Option(25, "--steps"),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("cpu", "--device"),
    batch_size: int = typer.Option(256, "--batch-size"),
) -> None:
    """Measure the model's quality gates (controllability, fidelity, validity, paraphrase) with the classifier."""
    with expected_errors():
        import json

        from fairdiff.generate import ensure_writable_dir, run_pipeline
        from fairdiff.models.loading import load_pipeline
        from fairdiff.world.classifier import load_classifier, predict_probs
        from fairdiff.world.config import load_world_config
        from fairdiff.world.gates import GateConfig, run_gates

        if not scale > 0 or steps < 1:
            raise FairdiffError(f"--scale must be > 0 and --steps >= 1, got {scale} and {steps}")
        world = load_world_config(config)
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
            return run_pipeline(loaded, prompts, [""] * len(prompts), seeds, cfg.steps, guidance)

        with _progress() as progress:
            task = progress.add_task("gates", total=total)
            report = run_gates(
                world,
                sample,
                lambda imgs: predict_probs(classifier, imgs),
                cfg,
                on_images=lambda k: progress.advance(task, k),
            )
        out.write_text(json.dumps({"model": model, **report.as_dict()}, indent=2) + "\n")
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

        from fairdiff.metrics.csv_input import assess_csv

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
            json_out.parent.mkdir(parents=True, exist_ok=True)
            json_out.write_text(json.dumps(payload, indent=2) + "\n")
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


# Commands owned by subsystems register themselves on `app` when imported.
from fairdiff.adapters import cli as _adapters_cli  # noqa: E402,F401
from fairdiff.audit import cli as _audit_cli  # noqa: E402,F401

if __name__ == "__main__":  # pragma: no cover
    # `python -m fairdiff.cli`: run the imported module's app, the one the subsystems registered on
    from fairdiff.cli import app as _registered_app

    _registered_app()
