"""`fairdiff scene schema` and `fairdiff scene plan`: the layout JSON Schema and the planners."""

from __future__ import annotations

import os
import re
from pathlib import Path

import typer

from fairdiff.cli.app import console, expected_errors
from fairdiff.cli.scene.app import scene_app
from fairdiff.errors import FairdiffError


@scene_app.command("schema")
def schema(
    out: Path = typer.Option(None, "--out", "-o", help="Write the schema to this file (default: print it)."),
) -> None:
    """Print (or write) the JSON Schema of layout files (docs/layout.schema.json is written by this)."""
    with expected_errors():
        from fairdiff.checks import check_output_file
        from fairdiff.files import write_atomic
        from fairdiff.scene.layout import schema_json

        text = schema_json()
        if out is None:
            typer.echo(text, nl=False)
            return
        check_output_file(out)
        write_atomic(out, text.encode())
        console.print(f"wrote {out}", highlight=False)


def parse_canvas(text: str | None) -> tuple[int, int] | None:
    """`--canvas WxH` -> (width, height) in pixels, each in [8, 8192] and a multiple of 8."""
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d{1,5})\s*[xX]\s*(\d{1,5})\s*", text)
    if not match:
        raise FairdiffError(f"--canvas must be WIDTHxHEIGHT in pixels, e.g. 160x32, got {text!r}")
    size = int(match.group(1)), int(match.group(2))
    if any(v < 8 or v > 8192 or v % 8 for v in size):
        raise FairdiffError(f"--canvas {text}: width and height must be multiples of 8 in [8, 8192]")
    return size


def detector_classes(name: str) -> dict[str, list[str]]:
    """The classes a planned layout's attributes are checked against: the world's or the CLIP detector's."""
    if name == "world":
        from fairdiff.world.schema import ATTRIBUTES

        return {a: list(v) for a, v in ATTRIBUTES.items()}
    if name == "clip":
        from fairdiff.detect.clip import DEFAULT_TEMPLATES

        return {a: list(spec["classes"]) for a, spec in DEFAULT_TEMPLATES.items()}
    raise FairdiffError(f"--detector must be world or clip, got {name!r}")


@scene_app.command("plan")
def plan(
    prompt: str = typer.Argument(..., help='Group prompt, e.g. "a women\'s basketball team of 5".'),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory: layout-000.json, ... and plan.json."),
    mix: list[str] = typer.Option(
        [],
        "--mix",
        help="Wanted mix, e.g. skin=uniform or gender=man:0.3,woman:0.7 (repeatable; default: "
        "gender=uniform and skin=uniform). Attributes the prompt states are never diversified.",
    ),
    n: int = typer.Option(1, "-n", "--images", help="Layouts (images) to plan; counts are exact over all of them."),
    seed: int = typer.Option(0, "--seed", help="Seed of the placement and of ties between equal quotas."),
    people: int = typer.Option(None, "--people", help="People per image (default: the count the prompt gives)."),
    canvas: str = typer.Option(None, "--canvas", help="Canvas WIDTHxHEIGHT (default: 32 px per person, world)."),
    no_diversify: bool = typer.Option(False, "--no-diversify", help="Only the attributes the prompt states."),
    force_diversify: bool = typer.Option(
        False, "--force-diversify", help="Diversify even where the prompt states a historical or named context."
    ),
    vocabulary: str = typer.Option("world", "--vocabulary", help="Person prompts for: world (bundled model), sd."),
    detector: str = typer.Option("world", "--detector", help="Attribute classes to plan in: world or clip."),
    negative: str = typer.Option("", "--negative", help="Base negative prompt (the -terms of PROMPT are added)."),
    llm_url: str = typer.Option(None, "--llm-url", help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1."),
    llm_model: str = typer.Option(None, "--llm-model", help="Model name on the LLM server."),
    llm_key_env: str = typer.Option("OPENAI_API_KEY", "--llm-key-env", help="Env variable holding the API key."),
    llm_timeout: float = typer.Option(60.0, "--llm-timeout", help="Seconds per LLM request."),
    llm_retries: int = typer.Option(2, "--llm-retries", help="Further LLM attempts per image after the first."),
) -> None:
    """Plan group-scene layouts: exact attribute counts per image and over the batch, boxes and prompts."""
    with expected_errors():
        from fairdiff.checks import check_count, check_output_dir, check_seed
        from fairdiff.files import ensure_writable_dir, write_json_atomic
        from fairdiff.mix import format_mix, parse_mix
        from fairdiff.scene.layout import write_layout
        from fairdiff.scene.planner import MAX_IMAGES, plan_counts, resolve, rules_layout

        if no_diversify and force_diversify:
            raise FairdiffError("--no-diversify and --force-diversify contradict each other")
        check_count(n, "-n", maximum=MAX_IMAGES)
        check_seed(seed)
        if (llm_url is None) != (llm_model is None):
            raise FairdiffError("--llm-url and --llm-model go together")
        if llm_timeout is not None and not 0 < llm_timeout <= 3600:
            raise FairdiffError(f"--llm-timeout must be in (0, 3600] seconds, got {llm_timeout}")
        check_count(llm_retries, "--llm-retries", minimum=0, maximum=10)
        classes = detector_classes(detector)
        request = resolve(
            prompt,
            people=people,
            images=n,
            seed=seed,
            mix=parse_mix(mix, classes) if mix else None,
            canvas=parse_canvas(canvas),
            diversify="off" if no_diversify else "on" if force_diversify else "auto",
            vocabulary=vocabulary,
            classes=classes,
            negative=negative,
        )
        check_output_dir(out)
        statuses = None
        if llm_url is not None:
            from fairdiff.scene.llm import LLMConfig, check_url, plan_llm

            config = LLMConfig(
                url=check_url(llm_url),
                model=llm_model,
                api_key=os.environ.get(llm_key_env),
                timeout=llm_timeout,
                retries=llm_retries,
            )
            results = plan_llm(request, config, classes=classes)
            layouts = [r.layout for r in results]
            statuses = [
                {"status": r.status, "attempts": r.attempts, "corrections": r.corrections, "errors": r.errors}
                for r in results
            ]
        else:
            layouts = [rules_layout(request, i) for i in range(n)]
        ensure_writable_dir(out)
        names = [f"layout-{i:03d}.json" for i in range(n)]
        for name, layout in zip(names, layouts, strict=True):
            write_layout(out / name, layout)
        for stale in out.glob("layout-[0-9][0-9][0-9].json"):  # from an earlier, longer plan in this folder
            if stale.name not in names:
                stale.unlink()
        per_image = [plan_counts([layout]) for layout in layouts]
        summary = {
            "prompt": prompt,
            "people": request.people,
            "images": n,
            "seed": seed,
            "mix": format_mix(request.mix),
            "stated": request.stated,
            "note": request.note,
            "planner": "llm" if llm_url else "rules",
            "llm": {"url": llm_url, "model": llm_model, "results": statuses} if llm_url else None,
            "layouts": names,
            "counts": plan_counts(layouts),
            "counts_per_image": per_image,
        }
        write_json_atomic(out / "plan.json", summary)
        for attribute, counts in summary["counts"].items():
            shown = ", ".join(f"{v} {c}" for v, c in counts.items())
            console.print(f"{attribute}: {shown}", highlight=False)
        if request.note:
            console.print(f"note: {request.note}", highlight=False)
        if statuses:
            fallbacks = sum(s["status"] == "fallback" for s in statuses)
            corrected = sum(s["status"] == "corrected" for s in statuses)
            console.print(f"LLM: {n - fallbacks} planned ({corrected} corrected), {fallbacks} fell back to rules")
        console.print(f"wrote {n} layout(s) and {out / 'plan.json'}", highlight=False)
