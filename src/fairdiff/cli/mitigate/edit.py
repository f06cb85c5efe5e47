"""`fairdiff mitigate edit`: the closed-form cross-attention edit (UCE) with its re-estimation from audits."""

from __future__ import annotations

import re
from pathlib import Path

import typer
from rich.table import Table

from fairdiff.cli.app import console, expected_errors, key_values, progress_bar
from fairdiff.cli.mitigate.app import mitigate_app
from fairdiff.errors import FairdiffError
from fairdiff.models.defaults import DEFAULT_AUTOCAST, DEFAULT_STEPS

TRAIN_SUITE = "world-train"


def _suite_concepts(name: str, templates: list[str]):
    """The concepts of a suite: its field values (the `occupation` field, else the suite's one field), each
    measured on the suite's own prompts and written in those prompts' templates, then in `templates`."""
    from fairdiff.audit.suites import load_suite
    from fairdiff.mitigate.edit import Concept, concept_word

    suite = load_suite(name)
    by_value: dict[str, list[str]] = {}
    for p in suite.prompts:
        fields = [f for f in p.fields if f != "of"]
        field = "occupation" if "occupation" in p.fields else (fields[0] if len(fields) == 1 else None)
        if field is None:
            raise FairdiffError(f"suite {name}: prompts have fields {fields}; --suite needs one concept field")
        by_value.setdefault(p.fields[field], []).append(p.text)
    if not by_value:
        raise FairdiffError(f"suite {name}: no prompts")
    concepts = []
    for value, prompts in by_value.items():
        word = concept_word(value)
        own = []
        for text in prompts:
            m = re.search(rf"\b(?:(an?) )?{re.escape(word)}\b", text, flags=re.IGNORECASE)
            if m:
                own.append(text[: m.start()] + ("a {}" if m.group(1) else "{}") + text[m.end() :])
        concepts.append(Concept(value, word, tuple(dict.fromkeys([*own, *templates])), tuple(prompts)))
    return concepts


def _shares_text(shares: dict[str, float]) -> str:
    return " ".join(f"{v} {p:.2f}" for v, p in shares.items())


def _alpha_text(alpha: dict[str, dict[str, float]]) -> str:
    return "; ".join(" ".join(f"{v} {a:+.2f}" for v, a in per.items()) for per in alpha.values())


@mitigate_app.command("edit")
def edit(
    model: str = typer.Option("tiny", "--model", "-m", help="'tiny' (bundled), a pipeline directory, or a hub id."),
    concept: list[str] = typer.Option(
        [], "--concept", "-c", help="A concept to debias, e.g. doctor (repeatable; default: the training suite's)."
    ),
    suite: str = typer.Option(
        None, "--suite", "-s", help=f"Take the concepts from a suite's field values ({TRAIN_SUITE})."
    ),
    attribute: list[str] = typer.Option(
        [], "--attribute", "-a", help="Attribute to debias (repeatable; default gender)."
    ),
    mix: list[str] = typer.Option([], "--mix", help="Wanted mix, e.g. skin=uniform or gender=man:0.3,woman:0.7."),
    preserve: list[str] = typer.Option(
        [],
        "--preserve",
        help="Word or prompt the edit keeps (repeatable; replaces the default attribute + neutral words).",
    ),
    template: list[str] = typer.Option(
        [],
        "--template",
        help="Template with {} for the concept's texts (repeatable; default: UCE's five in world wording).",
    ),
    iterations: int = typer.Option(3, "--iterations", help="Re-estimation rounds (0: measure only, α stays 0)."),
    images: int = typer.Option(16, "--images-per-concept", help="Images per concept and round to measure shares."),
    step: float = typer.Option(1.0, "--step", help="α += STEP x (wanted share - measured share) each round."),
    tolerance: float = typer.Option(0.05, "--tolerance", help="A concept within this of its mix is left as it is."),
    lam: float = typer.Option(0.5, "--lambda", help="λ: how strongly W stays W outside the edited directions."),
    preserve_scale: float = typer.Option(1.0, "--preserve-scale", help="Weight of the preserved texts in the solve."),
    as_lora: int = typer.Option(None, "--as-lora", help="Also write the edit as a PEFT LoRA of this rank (SVD of ΔW)."),
    lora_out: Path = typer.Option(None, "--lora-out", help="Folder of the --as-lora LoRA (default: OUT-loraRANK)."),
    detector: str = typer.Option("world", "--detector", "-d", help="Detector of the re-estimation: world, clip, ..."),
    detector_option: list[str] = typer.Option([], "--detector-option", help="KEY=VALUE for the detector."),
    seed: int = typer.Option(0, "--seed", help="Image i of every concept and round uses seed SEED+i."),
    steps: int = typer.Option(DEFAULT_STEPS, "--steps", help="Denoising steps of the re-estimation images."),
    guidance: float = typer.Option(None, "--guidance", help="Guidance scale (default: the model's)."),
    height: int = typer.Option(None, "--height", help="Image height (SD/SDXL only)."),
    width: int = typer.Option(None, "--width", help="Image width (SD/SDXL only)."),
    autocast: str = typer.Option(DEFAULT_AUTOCAST, "--autocast", help="bf16 autocast: auto, on, off."),
    batch_size: int = typer.Option(32, "--batch-size"),
    device: str = typer.Option("cpu", "--device"),
    dtype: str = typer.Option("float32", "--dtype"),
    out: Path = typer.Option(Path("out/edit.safetensors"), "--out", "-o", help="Edit file to write."),
) -> None:
    """Debias concepts by the closed-form cross-attention edit of UCE (Gandikota et al. 2024), α re-estimated
    from audits; writes a small edit file that `fairdiff audit` runs as an arm ({kind: edit, edit: FILE})."""
    with expected_errors():
        _run_edit(**locals())


def _run_edit(**o) -> None:
    import time

    from fairdiff.audit.suites import BUILTIN_SUITES
    from fairdiff.checks import (
        MAX_IMAGES_PER_PROMPT,
        MAX_STEPS,
        check_count,
        check_output_dir,
        check_output_file,
        check_seed,
    )
    from fairdiff.detect import build_detector
    from fairdiff.detect.registry import check_detector_options
    from fairdiff.mitigate import edit as uce
    from fairdiff.mitigate.edit_file import write_edit
    from fairdiff.mix import parse_mix
    from fairdiff.models.defaults import check_autocast
    from fairdiff.models.loading import load_pipeline

    check_count(o["iterations"], "--iterations", minimum=0, maximum=1000)
    check_count(o["images"], "--images-per-concept", maximum=MAX_IMAGES_PER_PROMPT)
    check_count(o["steps"], "--steps", maximum=MAX_STEPS)
    check_count(o["batch_size"], "--batch-size")
    check_seed(o["seed"], count=o["images"])
    check_autocast(o["autocast"])
    for option, value in (("--step", o["step"]), ("--tolerance", o["tolerance"])):
        if not (value == value and abs(value) != float("inf") and value >= 0):
            raise FairdiffError(f"{option} must be a finite number >= 0, got {value}")
    if o["as_lora"] is not None:
        check_count(o["as_lora"], "--as-lora")
    out: Path = o["out"]
    check_output_file(out)
    lora_out = o["lora_out"] or out.with_name(f"{out.stem}-lora{o['as_lora']}")
    if o["as_lora"] is not None:
        check_output_dir(lora_out, "--lora-out")
    templates = list(o["template"]) or list(uce.DEFAULT_TEMPLATES)
    for t in templates:
        uce.fill(t, "x")  # one {} each
    if o["concept"] and o["suite"]:
        raise FairdiffError("give --concept or --suite, not both")
    if o["concept"]:
        concepts = [uce.Concept(c, uce.concept_word(c), tuple(templates)) for c in dict.fromkeys(o["concept"])]
    elif o["suite"] or TRAIN_SUITE in BUILTIN_SUITES:
        concepts = _suite_concepts(o["suite"] or TRAIN_SUITE, templates)
    else:  # the training suite is not built in yet: its occupations
        concepts = [uce.Concept(c, uce.concept_word(c), tuple(templates)) for c in uce.TRAIN_OCCUPATIONS]
    options = key_values(o["detector_option"], "--detector-option")
    if o["detector"] == "world":
        options.setdefault("measure_accuracy", False)  # the loop needs shares, not an accuracy report
    check_detector_options(o["detector"], options)

    loaded = load_pipeline(o["model"], device=o["device"], dtype=o["dtype"])
    det = build_detector(o["detector"], **options)
    attributes = list(dict.fromkeys(o["attribute"])) or []
    wanted = parse_mix(o["mix"], det.classes)
    attributes = list(dict.fromkeys([*attributes, *wanted])) or ["gender"]
    unknown = [a for a in attributes if a not in det.classes]
    if unknown:
        raise FairdiffError(f"--attribute {unknown[0]!r}: detector {det.name} detects {', '.join(det.classes)}")
    mix = {a: wanted.get(a) or {v: 1.0 / len(det.classes[a]) for v in det.classes[a]} for a in attributes}
    classes = {a: list(det.classes[a]) for a in attributes}

    t0 = time.perf_counter()
    problem = uce.build_problem(
        loaded,
        concepts,
        classes,
        preserve_words=list(o["preserve"]) or None,
        lam=o["lam"],
        preserve_scale=o["preserve_scale"],
    )
    solve = time.perf_counter() - t0
    console.print(
        f"edit of {len(concepts)} concept(s) x {', '.join(attributes)}: {len(problem.keys)} projections, "
        f"{problem.C.shape[0]} edited and {problem.Cp.shape[0]} preserved token rows, solved in {solve:.2f} s",
        highlight=False,
    )
    opts = uce.DrawOptions(
        images=o["images"],
        seed=o["seed"],
        steps=o["steps"],
        guidance=o["guidance"],
        batch_size=o["batch_size"],
        autocast=o["autocast"],
        height=o["height"],
        width=o["width"],
    )
    per_round = len(concepts) * o["images"]
    rounds = o["iterations"] + 1
    times: list[float] = []
    with progress_bar() as bar:
        task = bar.add_task("re-estimating α: round 0", total=rounds * per_round)

        def on_round(r: int, entry: dict) -> None:
            times.append(entry["seconds"])
            gap = max(entry["max_gap"].values())
            bar.update(
                task,
                completed=(r + 1) * per_round,
                description=f"re-estimating α: round {r + 1}/{rounds}, gap {gap:.2f}",
            )

        fit = uce.fit_edit(
            problem,
            loaded,
            det,
            concepts,
            mix,
            opts,
            iterations=o["iterations"],
            step=o["step"],
            tolerance=o["tolerance"],
            on_round=on_round,
            on_images=lambda n: bar.advance(task, n),
        )
        bar.update(task, completed=rounds * per_round)
    settings = {
        "iterations": o["iterations"],
        "rounds_run": len(fit.history),
        "step": o["step"],
        "tolerance": o["tolerance"],
        "draw": {k: getattr(opts, k) for k in opts.__dataclass_fields__},
        "detector": {"name": det.name, "options": {k: str(v) for k, v in options.items()}},
    }
    edit_file = uce.edit_file(problem, fit, loaded, concepts, mix, settings)

    table = Table("concept", "attribute", "shares before", "shares after", "α", title="UCE edit: measured shares")
    for c in concepts:
        for i, a in enumerate(attributes):
            table.add_row(
                c.name if i == 0 else "",
                a,
                _shares_text(fit.before[c.name][a]),
                _shares_text(fit.after[c.name][a]),
                _alpha_text({a: fit.alpha[c.name][a]}),
            )
    console.print(table)
    line = ", ".join(f"{t:.1f}" for t in times)
    console.print(f"edit solve {solve:.2f} s; re-estimation rounds (s): {line}", highlight=False)

    if o["as_lora"] is not None:
        from fairdiff.adapters.formats import write_peft

        adapter, errors, overall = uce.edit_as_lora(fit.deltas, o["as_lora"])
        write_peft(adapter, lora_out, base_model=loaded.name)
        edit_file.meta["lora"] = {
            "rank": o["as_lora"],
            "path": str(lora_out),
            "relative_error": errors,
            "overall_relative_error": overall,
        }
        lt = Table("layer", "||ΔW - BA||_F / ||ΔW||_F", title=f"edit as a rank-{o['as_lora']} LoRA")
        for key, err in errors.items():
            lt.add_row(key, f"{err:.2e}")
        lt.add_row("[bold]overall[/]", f"{overall:.2e}")
        console.print(lt)
        console.print(f"wrote LoRA {lora_out} (fairdiff generate --adapter {lora_out})", highlight=False)
    write_edit(edit_file, out)
    console.print(
        f"wrote {out} ({out.stat().st_size // 1024} KiB); audit it as an arm: {{kind: edit, name: uce, edit: {out}}}",
        highlight=False,
    )
