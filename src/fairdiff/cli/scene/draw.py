"""`fairdiff scene draw`: draw a layout (or plan a prompt first) with the regional sampler and verify it."""

from __future__ import annotations

from pathlib import Path

import typer

from fairdiff.cli.app import console, expected_errors, progress_bar
from fairdiff.cli.scene.app import scene_app
from fairdiff.models.defaults import DEFAULT_AUTOCAST, DEFAULT_STEPS

LAYOUT_SUFFIXES = (".json", ".yaml", ".yml")


@scene_app.command("draw")
def draw(
    source: str = typer.Argument(..., help="A layout file (.json, .yaml) or a group prompt to plan first."),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory (replaced whole when the run succeeds)."),
    mix: list[str] = typer.Option(
        [], "--mix", help="Wanted mix when planning a prompt, e.g. skin=uniform (repeatable; default gender, skin)."
    ),
    mode: str = typer.Option(
        "regional",
        "--mode",
        help="regional (masked cross-attention, one UNet pass per step), multidiffusion (one pass per box), "
        "or plain (the base prompt alone, a baseline).",
    ),
    n: int = typer.Option(1, "-n", "--images", help="Images: a layout is drawn with seeds SEED..; a prompt planned."),
    seed: int = typer.Option(0, "--seed", help="Seed of the first image (and of the plan)."),
    people: int = typer.Option(None, "--people", help="People per image when planning (default: the prompt's)."),
    canvas: str = typer.Option(None, "--canvas", help="Canvas WIDTHxHEIGHT when planning (default: 32 px a person)."),
    no_diversify: bool = typer.Option(False, "--no-diversify", help="Plan only the attributes the prompt states."),
    vocabulary: str = typer.Option(None, "--vocabulary", help="Person prompts for: world, sd (default: by model)."),
    model: str = typer.Option("tiny", "--model", "-m", help="'tiny' (bundled), a pipeline directory, or a hub id."),
    detector: str = typer.Option(None, "--detector", help="Detector on the box crops (default: world for tiny)."),
    steps: int = typer.Option(DEFAULT_STEPS, "--steps", help="Denoising steps."),
    guidance: float = typer.Option(None, "--guidance", help="Classifier-free guidance scale (default: the model's)."),
    autocast: str = typer.Option(DEFAULT_AUTOCAST, "--autocast", help="bf16 autocast: auto, on, off."),
    batch_size: int = typer.Option(8, "--batch-size", help="Images per forward pass."),
    device: str = typer.Option("cpu", "--device", help="torch device: cpu, cuda, cuda:1, mps."),
    dtype: str = typer.Option("float32", "--dtype", help="float32, float16 or bfloat16."),
) -> None:
    """Draw group scenes box by box and verify them: image, layout and verification JSON (adherence) per image."""
    with expected_errors():
        from fairdiff.checks import MAX_STEPS, check_count, check_output_dir, check_seed
        from fairdiff.cli.scene.plan import detector_classes, parse_canvas
        from fairdiff.errors import FairdiffError
        from fairdiff.scene.regional import MODES

        if mode not in MODES:
            raise FairdiffError(f"--mode must be one of {', '.join(MODES)}, got {mode!r}")
        check_count(n, "-n", maximum=10_000)
        check_count(steps, "--steps", maximum=MAX_STEPS)
        check_count(batch_size, "--batch-size", maximum=1024)
        check_seed(seed, count=n)
        check_output_dir(out)
        detector_name = detector or ("world" if model == "tiny" else "clip")
        is_layout = source.lower().endswith(LAYOUT_SUFFIXES) or Path(source).is_file()
        if is_layout:
            from fairdiff.scene.layout import load_layout

            if mix or people is not None or canvas is not None or no_diversify:
                raise FairdiffError("--mix, --people, --canvas and --no-diversify plan a prompt; SOURCE is a layout")
            layouts = [load_layout(source)] * n
        else:
            from fairdiff.mix import parse_mix
            from fairdiff.scene.planner import plan_rules

            classes = detector_classes(detector_name.split("+")[0])
            layouts = plan_rules(
                source,
                people=people,
                images=n,
                seed=seed,
                mix=parse_mix(mix, classes) if mix else None,
                canvas=parse_canvas(canvas),
                diversify="off" if no_diversify else "auto",
                vocabulary=vocabulary or ("world" if model == "tiny" else "sd"),
                classes=classes,
            )
        from fairdiff.detect import build_detector
        from fairdiff.models.loading import load_pipeline
        from fairdiff.scene.draw import draw_scenes
        from fairdiff.scene.layout import check_attributes
        from fairdiff.scene.regional import check_layouts

        found = build_detector(detector_name)
        for i, layout in enumerate(layouts):
            check_attributes(layout, found.classes, source=source if is_layout else f"planned image {i}")
        loaded = load_pipeline(model, device=device, dtype=dtype)
        loaded.pipeline.set_progress_bar_config(disable=True)
        check_layouts(loaded, layouts)
        with progress_bar() as progress:
            task = progress.add_task(f"scene draw ({mode}, {model})", total=n)
            summary = draw_scenes(
                loaded,
                layouts,
                [seed + i for i in range(n)],
                found,
                out,
                mode=mode,
                steps=steps,
                guidance=guidance,
                autocast=autocast,
                batch_size=batch_size,
                on_batch=lambda k: progress.advance(task, k),
            )
        ci = summary["adherence_ci"]
        shown = "n/a" if summary["adherence"] is None else f"{summary['adherence']:.1%} [{ci[0]:.1%}, {ci[1]:.1%}]"
        console.print(
            f"adherence {shown} ({summary['people_as_planned']}/{summary['people_judged']} people as planned), "
            f"mean mix error {summary['mix_error_mean']}; wrote {n} image(s), layouts and verification to "
            f"[bold]{out}[/] ({summary['seconds']:.1f}s)",
            highlight=False,
        )
