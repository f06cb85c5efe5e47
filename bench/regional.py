"""Benchmark: the regional sampler on the bundled model: plan adherence against one plain prompt, and its cost.

Two parts, each writing its own section of bench/results/regional.md (the others are kept):

- adherence: five-person rows (32 x 160) planned by the rules planner with a uniform skin-tone mix, drawn by
  each variant on the same seeds and canvas; the world classifier on every box crop. Adherence = share of people
  whose detected skin tone is the planned one, with 95% Wilson CIs. Variants (`--variants`, comma-separated):
  `regional` (the default sampler: the canvas folded into 32 x 32 squares, one per person), `whole-canvas`
  (the masked cross-attention on the whole 32 x 160 canvas, `cells="off"`), `whole-canvas-box-only` (the same,
  boxed pixels attend to their box's prompt only), `fold-0.8` (squares for the first 80% of the denoising, then
  the whole canvas), `multidiffusion` (the second mode, about 6x the time), `plain` (the base prompt alone on the
  same canvas: the model's skew) and `single` (the ceiling: every planned person drawn alone as a 32 x 32
  portrait from its box prompt, seed = image seed x 100 + seat, classified whole).
- cost: plain generation, the regional sampler (squares, and on the whole canvas) and MultiDiffusion (one pass
  per box plus the background) on rows of 1, 3, 5 and 8 people as the rules planner places them (canvas 32 x 32N,
  each box its square less a margin), interleaved in rounds (the machine is shared); each cell is the median over
  rounds of seconds per image and of the per-round ratio to plain measured in the same round.

    python bench/regional.py adherence [--images 40] [--steps 25] [--variants regional,plain] [--section NAME]
    python bench/regional.py cost [--rounds 3] [--steps 10] [--batch 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from fairdiff.detect import build_detector
from fairdiff.metrics.bootstrap import wilson_ci
from fairdiff.models.loading import load_pipeline
from fairdiff.models.precision import bf16_is_native
from fairdiff.models.sampling import ImageOptions, SamplingRequest, draw
from fairdiff.provenance import machine_line
from fairdiff.scene.draw import summarize, verify_image
from fairdiff.scene.layout import Layout
from fairdiff.scene.planner import grid_boxes, plan_rules
from fairdiff.scene.regional import draw_layouts
from fairdiff.world.schema import ATTRIBUTES

RESULTS = Path(__file__).parent / "results" / "regional.md"
PROMPT = "a photo of five people"


def write_section(name: str, lines: list[str], path: Path = RESULTS) -> None:
    """Replace section `name` (between its markers) in the results file, keeping the other."""
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    text = path.read_text() if path.is_file() else "# Regional sampler on the bundled model\n"
    block = "\n".join([start, *lines, end])
    if start in text and end in text:
        before, rest = text.split(start, 1)
        text = before + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def header() -> list[str]:
    return [
        "",
        f"command: `python bench/regional.py {' '.join(sys.argv[1:])}`",
        f"machine: {machine_line()}, torch {torch.__version__}, bf16 native: {bf16_is_native('cpu')}",
        f"python {sys.version.split()[0]}; run {time.strftime('%Y-%m-%d %H:%M')}",
        "",
    ]


def _fmt_ci(k: int, n: int) -> str:
    low, high = wilson_ci(np.array(k), np.array(n), 0.95)
    return f"{k / n:.1%} [{float(low):.1%}, {float(high):.1%}] ({k}/{n})"


#: variant -> (what the table calls it, draw_layouts options); `single` is drawn apart (`_draw_single`)
VARIANTS: dict[str, tuple[str, dict]] = {
    "regional": ("regional (squares, the default)", {"mode": "regional"}),
    "whole-canvas": ("regional, whole canvas", {"mode": "regional", "cells": "off"}),
    "whole-canvas-box-only": (
        "regional, whole canvas, box prompt only in boxes",
        {"mode": "regional", "cells": "off", "base_in_boxes": False},
    ),
    "fold-0.8": ("regional, squares for 80% then whole canvas", {"mode": "regional", "fold_until": 0.8}),
    "multidiffusion": ("MultiDiffusion", {"mode": "multidiffusion"}),
    "plain": ("plain (base prompt alone)", {"mode": "plain"}),
    "single": ("single 32 x 32 portraits (ceiling)", {}),
}
DEFAULT_VARIANTS = "regional,whole-canvas,whole-canvas-box-only,fold-0.8,plain,single"


def _draw_single(loaded, layouts: list[Layout], seeds: list[int], steps: int, batch: int) -> list[np.ndarray]:
    """Every person of `layouts` alone, as a 32 x 32 portrait from its box prompt; one array of crops per layout."""
    jobs = [
        (p.prompt, seed * 100 + k) for lay, seed in zip(layouts, seeds, strict=True) for k, p in enumerate(lay.people)
    ]
    images = []
    for start in range(0, len(jobs), batch * 5):
        opts = [ImageOptions(prompt, "", s) for prompt, s in jobs[start : start + batch * 5]]
        images.append(draw(loaded, SamplingRequest(opts, steps=steps)))
    flat = np.concatenate(images)
    out, at = [], 0
    for lay in layouts:
        out.append(flat[at : at + len(lay.people)])
        at += len(lay.people)
    return out


def _single_record(crops: np.ndarray, layout: Layout, detector) -> dict:
    """verify_image on a row of the single portraits (one per person, in box order) laid side by side."""
    k = len(layout.people)
    row = Layout.model_validate(
        {
            "canvas": {"width": 32 * k, "height": 32},
            "prompt": layout.prompt,
            "people": [
                {**p.model_dump(), "box": list(b)} for p, b in zip(layout.people, grid_boxes(k, 0.0), strict=True)
            ],
            "planner": layout.planner.model_dump() if layout.planner else None,
        }
    )
    return verify_image(np.concatenate(list(crops), axis=1), row, detector)


def run_adherence(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {', '.join(unknown)}; choose from: {', '.join(VARIANTS)}")
    loaded = load_pipeline("tiny")
    loaded.pipeline.set_progress_bar_config(disable=True)
    detector = build_detector("world", measure_accuracy=False)
    layouts = plan_rules(PROMPT, images=args.images, seed=args.seed, mix={"skin": _uniform("skin")})
    seeds = [args.seed + i for i in range(args.images)]
    skins = list(ATTRIBUTES["skin"])
    lines = header()
    rows, shares = {}, {}
    for variant in variants:
        records, t0 = [], time.time()
        if variant == "single":
            crops = _draw_single(loaded, layouts, seeds, args.steps, args.batch)
            records = [_single_record(c, lay, detector) for c, lay in zip(crops, layouts, strict=True)]
        else:
            for start in range(0, len(layouts), args.batch):
                batch = layouts[start : start + args.batch]
                images = draw_layouts(
                    loaded, batch, seeds[start : start + args.batch], steps=args.steps, **VARIANTS[variant][1]
                )
                records += [verify_image(img, lay, detector) for img, lay in zip(images, batch, strict=True)]
        summary = summarize(records)
        detected = [p["detected"]["skin"] for r in records for p in r["people"]]
        shares[variant] = {s: detected.count(s) / len(detected) for s in skins}
        rows[variant] = (summary, time.time() - t0)
        print(variant, summary["adherence"], summary["adherence_ci"], f"{time.time() - t0:.0f}s", flush=True)
    lines += [
        f"Rules plan of {PROMPT!r}, `skin=uniform`, {args.images} images of 32 x 160 (five people in a row, "
        f"{args.images * 5} people), {args.steps} steps, guidance 3 (the default), seeds {seeds[0]}..{seeds[-1]}; "
        "every variant on the same plan, seeds and canvas (variants: the script's docstring). World classifier "
        "on each box crop (28 x 28 inside a 32-pixel square, resized to 32 x 32; single portraits whole). "
        "95% Wilson CIs. Target: regional >= 90%, plain showing the model's skew.",
        "",
        "| variant | adherence (skin as planned) | mean image mix error | "
        + " | ".join(f"detected {s}" for s in skins)
        + " | s |",
        "|---|---|---:|" + "---:|" * len(skins) + "---:|",
    ]
    for variant, (summary, seconds) in rows.items():
        cells = " | ".join(f"{shares[variant][s]:.2f}" for s in skins)
        lines.append(
            f"| {VARIANTS[variant][0]} | {_fmt_ci(summary['people_as_planned'], summary['people_judged'])} | "
            f"{summary['mix_error_mean']:.3f} | {cells} | {seconds:.0f} |"
        )
    lines += ["", "Planned shares: " + ", ".join(f"{s} {_planned(layouts, s):.2f}" for s in skins), ""]
    write_section(args.section, lines)


def _uniform(attribute: str) -> dict[str, float]:
    values = ATTRIBUTES[attribute]
    return {v: 1 / len(values) for v in values}


def _planned(layouts: list[Layout], skin: str) -> float:
    people = [p for lay in layouts for p in lay.people]
    return sum(p.attributes.get("skin") == skin for p in people) / len(people)


def _row_layout(boxes: int) -> Layout:
    """A row of `boxes` people as the rules planner places them: canvas 32 x 32N, each box its square less a margin."""
    words = ["light-skinned", "medium-skinned", "brown-skinned", "dark-skinned"]
    people = [
        {"id": f"p{i}", "box": list(box), "prompt": f"a photo of the face of a {words[i % 4]} woman"}
        for i, box in enumerate(grid_boxes(boxes))
    ]
    return Layout.model_validate({"canvas": {"width": 32 * boxes, "height": 32}, "prompt": PROMPT, "people": people})


#: cost columns: name -> draw_layouts options
COST_MODES = {
    "plain": {"mode": "plain"},
    "regional": {"mode": "regional"},
    "whole-canvas": {"mode": "regional", "cells": "off"},
    "multidiffusion": {"mode": "multidiffusion"},
}


def run_cost(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)  # on a shared machine a thread waiting at a barrier makes timings erratic
    loaded = load_pipeline("tiny")
    loaded.pipeline.set_progress_bar_config(disable=True)
    counts = (1, 3, 5, 8)
    seeds = list(range(args.batch))
    times: dict[tuple[int, str], list[float]] = {}
    ratios: dict[tuple[int, str], list[float]] = {}
    for mode in COST_MODES.values():  # warm-up
        draw_layouts(loaded, [_row_layout(2)] * args.batch, seeds, steps=1, **mode)
    for round_ in range(args.rounds):
        for boxes in counts:
            layouts = [_row_layout(boxes)] * args.batch
            measured = {}
            for name, mode in COST_MODES.items():
                t0 = time.perf_counter()
                draw_layouts(loaded, layouts, seeds, steps=args.steps, **mode)
                measured[name] = (time.perf_counter() - t0) / args.batch
                times.setdefault((boxes, name), []).append(measured[name])
            for name in COST_MODES:
                ratios.setdefault((boxes, name), []).append(measured[name] / measured["plain"])
            print(round_, boxes, {k: round(v, 3) for k, v in measured.items()}, flush=True)
    lines = header() + [
        f"Rows of N people as the rules planner places them (canvas 32 x 32N on the bundled model, each box its "
        f"32 x 32 square less a margin), {args.steps} steps at guidance 3, batch {args.batch}, {args.rounds} "
        f"interleaved rounds, {args.threads} torch thread(s); s/image and ratio to plain are medians (ratios per "
        "round; the regional and MultiDiffusion calls include encoding the box prompts). regional = the default "
        '(the canvas folded into its squares, one UNet pass per step); whole canvas = `cells="off"`. '
        "Target: regional <= 1.15x plain at 5 boxes.",
        "",
        "| boxes | canvas | plain s/image | regional s/image | regional / plain | whole canvas / plain "
        "| MultiDiffusion s/image | MultiDiffusion / plain |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for boxes in counts:
        med = {m: statistics.median(times[(boxes, m)]) for m in COST_MODES}
        ratio = {m: statistics.median(ratios[(boxes, m)]) for m in COST_MODES}
        lines.append(
            f"| {boxes} | 32 x {32 * boxes} | {med['plain']:.3f} | {med['regional']:.3f} | {ratio['regional']:.2f}x "
            f"| {ratio['whole-canvas']:.2f}x | {med['multidiffusion']:.3f} | {ratio['multidiffusion']:.2f}x |"
        )
    lines.append("")
    write_section("cost", lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="part", required=True)
    adherence = sub.add_parser("adherence")
    adherence.add_argument("--images", type=int, default=40)
    adherence.add_argument("--steps", type=int, default=25)
    adherence.add_argument("--batch", type=int, default=8)
    adherence.add_argument("--seed", type=int, default=0)
    adherence.add_argument("--threads", type=int, default=1)
    adherence.add_argument("--variants", default=DEFAULT_VARIANTS, help=f"comma-separated, of: {', '.join(VARIANTS)}")
    adherence.add_argument("--section", default="adherence", help="the results section to write")
    cost = sub.add_parser("cost")
    cost.add_argument("--rounds", type=int, default=3)
    cost.add_argument("--steps", type=int, default=10)
    cost.add_argument("--batch", type=int, default=2)
    cost.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    {"adherence": run_adherence, "cost": run_cost}[args.part](args)


if __name__ == "__main__":
    main()
