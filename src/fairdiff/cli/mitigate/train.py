"""`fairdiff mitigate lora` and `fairdiff mitigate finetune`: the fairness LoRA and the same recipe on W.

Both run `fairdiff.mitigate.training.train_mitigation` on the training suite's prompts (resolved here, at the top
layer, with `fairdiff.audit.suites.load_suite`): `lora` writes a PEFT adapter to `OUT/adapter`, `finetune` the
whole pipeline with the new weights of the same modules to `OUT/pipeline`; both write `OUT/card.json`,
`OUT/train.jsonl` and the resumable `OUT/checkpoint.pt` (rerun the same command to continue).
"""

from __future__ import annotations

from pathlib import Path

import typer

from fairdiff.cli.app import console, expected_errors, key_values, progress_bar
from fairdiff.cli.mitigate.app import mitigate_app
from fairdiff.models.defaults import DEFAULT_AUTOCAST

_MIX_HELP = "Wanted mix, ATTRIBUTE=uniform | VALUE:W,VALUE:W,... (repeatable; default gender and skin uniform)."


def train_prompts(suite: str) -> list:
    """The training suite's prompts with their fields, as the training loop takes them."""
    from fairdiff.audit.suites import load_suite
    from fairdiff.mitigate.training import TrainPrompt

    loaded = load_suite(suite)
    return [TrainPrompt(p.text, dict(p.fields), p.context) for p in loaded.prompts]


def parse_train_mix(items: list[str]) -> dict[str, dict[str, float]]:
    """`--mix` items over the portrait world's classes (what renders, the world classifier and the detector know);
    none given: uniform gender and skin."""
    from fairdiff.mitigate.training import default_mix
    from fairdiff.mix import parse_mix
    from fairdiff.world.schema import ATTRIBUTES

    classes = {a: list(v) for a, v in ATTRIBUTES.items() if a != "occupation"}
    return parse_mix(items, classes) if items else default_mix()


def _run(cfg, model: str, out: Path, suite: str) -> None:
    import contextlib
    import time

    from fairdiff.checks import check_output_dir
    from fairdiff.mitigate.training import check_config, train_mitigation

    check_config(cfg)
    check_output_dir(out)
    prompts = train_prompts(suite)
    t0 = time.time()
    last: dict[str, float] = {}
    label = f"mitigate {cfg.mode} ({cfg.method})"
    with contextlib.ExitStack() as stack:
        bar: list = []

        def on_start(step: int) -> None:  # the bar starts once the model is loaded and every option checked
            progress = stack.enter_context(progress_bar())
            bar.extend([progress, progress.add_task(label, total=cfg.steps, completed=step)])

        def on_step(step: int, stats: dict[str, float]) -> None:
            last.update(stats)
            bar[0].update(bar[1], completed=step, description=f"{label} loss {stats['loss']:.4f}")

        result = train_mitigation(cfg, model, out, on_step=on_step, prompts=prompts, on_start=on_start)
    seconds = time.time() - t0
    loss = f", last loss {last['loss']:.4f}" if last else " (already trained: exported again)"
    use = (
        f"--adapter {result}"
        if cfg.mode == "lora"
        else f"--model {result} (or an arm: {{kind: finetune, pipeline: {result}}})"
    )
    console.print(
        f"trained {cfg.method} {cfg.mode} on {model} ({cfg.target}, {len(prompts)} prompts of {suite}): {cfg.steps} "
        f"steps of {cfg.batch_size} in {seconds:.1f}s{loss}; wrote [bold]{result}[/] and {out / 'card.json'}. "
        f"Audit it with {use}",
        highlight=False,
    )


def _train(mode: str, model: str, out: Path, suite: str, mix: list[str], method_option: list[str], **fields) -> None:
    """The config of `lora` / `finetune` from their options (the rest of MitigateConfig's fields), then the run."""
    from fairdiff.mitigate.training import MitigateConfig

    options = key_values(method_option, "--method-option")
    cfg = MitigateConfig(mode=mode, mix=parse_train_mix(mix), train_suite=suite, method_options=options, **fields)
    _run(cfg, model, out, suite)


@mitigate_app.command("lora")
def lora(
    out: Path = typer.Option(..., "--out", "-o", help="Run directory: adapter/, card.json, train.jsonl, checkpoint."),
    method: str = typer.Option("align", "--method", help="align (Shen et al. 2024) or balanced (diffusion loss)."),
    target: str = typer.Option("unet", "--target", help="unet, text or both: where the LoRA layers go."),
    rank: int = typer.Option(8, "--rank", help="LoRA rank."),
    alpha: float = typer.Option(None, "--alpha", help="LoRA alpha (default: the rank, scale 1)."),
    steps: int = typer.Option(300, "--steps", help="Optimizer steps."),
    lr: float = typer.Option(1e-3, "--lr", help="AdamW learning rate."),
    batch_size: int = typer.Option(32, "--batch-size", help="Images per optimizer step."),
    mix: list[str] = typer.Option([], "--mix", help=_MIX_HELP),
    suite: str = typer.Option("world-train", "--suite", help="Training suite (kept apart from evaluation suites)."),
    model: str = typer.Option("tiny", "--model", "-m", help="'tiny' (bundled), a pipeline directory, or a hub id."),
    seed: int = typer.Option(0, "--seed", help="Seed of the data, noise and LoRA initialization."),
    sample_steps: int = typer.Option(10, "--sample-steps", help="Denoising steps of the images align draws."),
    checkpoint_every: int = typer.Option(50, "--checkpoint-every", help="Steps between checkpoints."),
    method_option: list[str] = typer.Option([], "--method-option", help="KEY=VALUE method option (repeatable)."),
    autocast: str = typer.Option(DEFAULT_AUTOCAST, "--autocast", help="bf16 autocast: auto, on, off."),
    device: str = typer.Option("cpu", "--device", help="torch device: cpu, cuda, cuda:1, mps."),
    dtype: str = typer.Option("float32", "--dtype", help="float32, float16 or bfloat16 (LoRA layers stay fp32)."),
) -> None:
    """Train a fairness LoRA (resumable: rerun the same command to continue); writes a PEFT adapter."""
    with expected_errors():
        extra = {"rank": rank, "alpha": float(rank if alpha is None else alpha)}
        _train(
            "lora",
            model,
            out,
            suite,
            mix,
            method_option,
            method=method,
            target=target,
            lr=lr,
            steps=steps,
            batch_size=batch_size,
            seed=seed,
            sample_steps=sample_steps,
            checkpoint_every=checkpoint_every,
            autocast=autocast,
            device=device,
            dtype=dtype,
            **extra,
        )


@mitigate_app.command("finetune")
def finetune(
    out: Path = typer.Option(..., "--out", "-o", help="Run directory: pipeline/, card.json, train.jsonl, checkpoint."),
    method: str = typer.Option("balanced", "--method", help="balanced (diffusion loss) or align."),
    target: str = typer.Option("unet", "--target", help="unet, text or both: whose attention weights change."),
    steps: int = typer.Option(300, "--steps", help="Optimizer steps."),
    lr: float = typer.Option(1e-4, "--lr", help="AdamW learning rate (full weights: lower than a LoRA's)."),
    batch_size: int = typer.Option(32, "--batch-size", help="Images per optimizer step."),
    mix: list[str] = typer.Option([], "--mix", help=_MIX_HELP),
    suite: str = typer.Option("world-train", "--suite", help="Training suite (kept apart from evaluation suites)."),
    model: str = typer.Option("tiny", "--model", "-m", help="'tiny' (bundled), a pipeline directory, or a hub id."),
    seed: int = typer.Option(0, "--seed", help="Seed of the data and noise."),
    sample_steps: int = typer.Option(10, "--sample-steps", help="Denoising steps of the images align draws."),
    checkpoint_every: int = typer.Option(50, "--checkpoint-every", help="Steps between checkpoints."),
    method_option: list[str] = typer.Option([], "--method-option", help="KEY=VALUE method option (repeatable)."),
    autocast: str = typer.Option(DEFAULT_AUTOCAST, "--autocast", help="bf16 autocast: auto, on, off."),
    device: str = typer.Option("cpu", "--device", help="torch device: cpu, cuda, cuda:1, mps."),
    dtype: str = typer.Option("float32", "--dtype", help="float32, float16 or bfloat16."),
) -> None:
    """Fine-tune the full weights of the same modules with the same recipe; writes a pipeline directory."""
    with expected_errors():
        _train(
            "finetune",
            model,
            out,
            suite,
            mix,
            method_option,
            method=method,
            target=target,
            lr=lr,
            steps=steps,
            batch_size=batch_size,
            seed=seed,
            sample_steps=sample_steps,
            checkpoint_every=checkpoint_every,
            autocast=autocast,
            device=device,
            dtype=dtype,
        )
