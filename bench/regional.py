"""Benchmark: the regional sampler on the bundled model: plan adherence against one plain prompt, and its cost.

Two parts, each writing its own section of bench/results/regional.md (the other section is kept):

- adherence: five-person rows (32 x 160) planned by the rules planner with a uniform skin-tone mix, drawn with
  the regional sampler and, on the same seeds and canvas, with the base prompt alone ("plain"); the world
  classifier on every box crop. Adherence = share of people whose detected skin tone is the planned one, with
  95% Wilson CIs; the per-box detected skin shares of the plain images show the model's own skew.
- cost: the regional sampler (one UNet pass per step) and MultiDiffusion (one pass per box plus the background)
  against plain generation of the same canvas (32 x 256) at 1, 3, 5 and 8 boxes, interleaved in rounds (the
  machine is shared); each cell is the median over rounds of seconds per image and of the per-round ratio to
  plain measured in the same round.

    python bench/regional.py adherence [--images 40] [--steps 25]
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
from fairdiff.provenance import machine_line
from fairdiff.scene.draw import summarize, verify_image
from fairdiff.scene.layout import Layout
from fairdiff.scene.planner import plan_rules
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


def run_adherence(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    loaded = load_pipeline("tiny")
    loaded.pipeline.set_progress_bar_config(disable=True)
    detector = build_detector("world", measure_accuracy=False)
    layouts = plan_rules(PROMPT, images=args.images, seed=args.seed, mix={"skin": _uniform("skin")})
    seeds = [args.seed + i for i in range(args.images)]
    skins = list(ATTRIBUTES["skin"])
    lines = header()
    rows, shares = {}, {}
    for mode in ("regional", "plain"):
        records, t0 = [], time.time()
        for start in range(0, len(layouts), args.batch):
            batch = layouts[start : start + args.batch]
            images = draw_layouts(loaded, batch, seeds[start : start + args.batch], mode=mode, steps=args.steps)
            records += [verify_image(img, lay, detector) for img, lay in zip(images, batch, strict=True)]
        summary = summarize(records)
        detected = [p["detected"]["skin"] for r in records for p in r["people"]]
        shares[mode] = {s: detected.count(s) / len(detected) for s in skins}
        rows[mode] = (summary, time.time() - t0)
        print(mode, summary["adherence"], summary["adherence_ci"], f"{time.time() - t0:.0f}s", flush=True)
    lines += [
        f"Rules plan of {PROMPT!r}, `skin=uniform`, {args.images} images of 32 x 160 (five people in a row, "
        f"{args.images * 5} people), {args.steps} steps, guidance 3 (the default), seeds {seeds[0]}..{seeds[-1]}; "
        "plain = the base prompt alone on the same canvas and seeds. World classifier on each box crop "
        "(28 x 28 inside a 32-pixel cell, resized to 32 x 32). 95% Wilson CIs. Target: regional >= 90%.",
        "",
        "| mode | adherence (skin as planned) | mean image mix error | "
        + " | ".join(f"detected {s}" for s in skins)
        + " | s |",
        "|---|---|---:|" + "---:|" * len(skins) + "---:|",
    ]
    for mode, (summary, seconds) in rows.items():
        cells = " | ".join(f"{shares[mode][s]:.2f}" for s in skins)
        lines.append(
            f"| {mode} | {_fmt_ci(summary['people_as_planned'], summary['people_judged'])} | "
            f"{summary['mix_error_mean']:.3f} | {cells} | {seconds:.0f} |"
        )
    lines += ["", "Planned shares: " + ", ".join(f"{s} {_planned(layouts, s):.2f}" for s in skins), ""]
    write_section("adherence", lines)


def _uniform(attribute: str) -> dict[str, float]:
    values = ATTRIBUTES[attribute]
    return {v: 1 / len(values) for v in values}


def _planned(layouts: list[Layout], skin: str) -> float:
    people = [p for lay in layouts for p in lay.people]
    return sum(p.attributes.get("skin") == skin for p in people) / len(people)


def _row_layout(boxes: int, width: int = 256) -> Layout:
    words = ["light-skinned", "medium-skinned", "brown-skinned", "dark-skinned"]
    people = [
        {
            "id": f"p{i}",
            "box": [round(i / boxes, 6), 0.0, round((i + 1) / boxes, 6), 1.0],
            "prompt": f"a photo of the face of a {words[i % 4]} woman",
        }
        for i in range(boxes)
    ]
    return Layout.model_validate({"canvas": {"width": width, "height": 32}, "prompt": PROMPT, "people": people})


def run_cost(args: argparse.Namespace) -> None:
    torch.set_num_threads(
        args.threads
    )  # on a shared machine a thread waiting at a barrier makes 2-thread timings erratic
    loaded = load_pipeline("tiny")
    loaded.pipeline.set_progress_bar_config(disable=True)
    counts = (1, 3, 5, 8)
    seeds = list(range(args.batch))
    times: dict[tuple[int, str], list[float]] = {}
    ratios: dict[tuple[int, str], list[float]] = {}
    draw_layouts(loaded, [_row_layout(1)] * args.batch, seeds, mode="regional", steps=1)  # warm-up
    for round_ in range(args.rounds):
        for boxes in counts:
            layouts = [_row_layout(boxes)] * args.batch
            measured = {}
            for mode in ("plain", "regional", "multidiffusion"):
                t0 = time.perf_counter()
                draw_layouts(loaded, layouts, seeds, mode=mode, steps=args.steps)
                measured[mode] = (time.perf_counter() - t0) / args.batch
                times.setdefault((boxes, mode), []).append(measured[mode])
            for mode in ("regional", "multidiffusion"):
                ratios.setdefault((boxes, mode), []).append(measured[mode] / measured["plain"])
            print(round_, boxes, {k: round(v, 3) for k, v in measured.items()}, flush=True)
    lines = header() + [
        f"Canvas 32 x 256 (bundled model), boxes side by side, {args.steps} steps at guidance 3, batch {args.batch}, "
        f"{args.rounds} interleaved rounds, {args.threads} torch thread(s); s/image and ratio to plain are medians "
        "(ratios per round; the regional and MultiDiffusion calls include encoding the box prompts). "
        "Target: regional <= 1.15x plain at 5 boxes.",
        "",
        "| boxes | plain s/image | regional s/image | regional / plain | MultiDiffusion s/image "
        "| MultiDiffusion / plain |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for boxes in counts:
        med = {m: statistics.median(times[(boxes, m)]) for m in ("plain", "regional", "multidiffusion")}
        lines.append(
            f"| {boxes} | {med['plain']:.3f} | {med['regional']:.3f} | "
            f"{statistics.median(ratios[(boxes, 'regional')]):.2f}x | {med['multidiffusion']:.3f} | "
            f"{statistics.median(ratios[(boxes, 'multidiffusion')]):.2f}x |"
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
    cost = sub.add_parser("cost")
    cost.add_argument("--rounds", type=int, default=3)
    cost.add_argument("--steps", type=int, default=10)
    cost.add_argument("--batch", type=int, default=2)
    cost.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    {"adherence": run_adherence, "cost": run_cost}[args.part](args)


if __name__ == "__main__":
    main()
