"""Benchmark: the closed-form UCE edit (`fairdiff mitigate edit`) on the bundled model.

Times the edit solve for the world's training occupations x gender + skin (encoding every text, aligning the
token rows, one solve for all layers: `build_problem`), one evaluation of ΔW for given α (`deltas`, what each
round recomputes), and each re-estimation round (draw + classify the concepts' images with the current edit);
reports the measured shares before and after the loop and the reconstruction error of the edit as a LoRA at a
few ranks. Writes bench/results/edit_time.md with the machine and the command.

    python bench/edit_time.py [--iterations 2] [--images 8] [--steps 10] [--ranks 1 4 16]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from fairdiff.detect import build_detector
from fairdiff.mitigate.edit import (
    TRAIN_OCCUPATIONS,
    Concept,
    DrawOptions,
    build_problem,
    concept_word,
    edit_as_lora,
    fit_edit,
)
from fairdiff.models.loading import load_pipeline
from fairdiff.provenance import machine_line


def _shares(shares: dict[str, float]) -> str:
    return " ".join(f"{v} {p:.2f}" for v, p in shares.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--images", type=int, default=8, help="images per concept and round")
    parser.add_argument("--steps", type=int, default=10, help="denoising steps of the re-estimation images")
    parser.add_argument("--step", type=float, default=0.5, help="α step")
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "edit_time.md")
    args = parser.parse_args()

    loaded = load_pipeline("tiny")
    detector = build_detector("world", measure_accuracy=False)
    concepts = [Concept(c, concept_word(c)) for c in TRAIN_OCCUPATIONS]
    classes = {a: list(detector.classes[a]) for a in ("gender", "skin")}
    mix = {a: {v: 1.0 / len(vals) for v in vals} for a, vals in classes.items()}
    build_problem(loaded, concepts[:1], classes)  # warm-up: first calls of the text encoder
    t0 = time.perf_counter()
    problem = build_problem(loaded, concepts, classes)
    solve = time.perf_counter() - t0
    alpha = {c.name: {"gender": {"man": -0.2, "woman": 0.2}} for c in concepts}
    t0 = time.perf_counter()
    problem.deltas(alpha)
    deltas_s = time.perf_counter() - t0
    rounds: list[float] = []
    fit = fit_edit(
        problem,
        loaded,
        detector,
        concepts,
        mix,
        DrawOptions(images=args.images, steps=args.steps),
        iterations=args.iterations,
        step=args.step,
        on_round=lambda r, e: (rounds.append(e["seconds"]), print(f"round {r}: {e['seconds']:.1f} s", flush=True)),
    )
    lora = {r: edit_as_lora(fit.deltas, r)[2] for r in args.ranks}
    full = min(min(d.shape) for d in fit.deltas.values())
    lora[full] = edit_as_lora(fit.deltas, full)[2]

    command = f"python bench/edit_time.py --iterations {args.iterations} --images {args.images} --steps {args.steps}"
    command += f" --step {args.step} --ranks {' '.join(map(str, args.ranks))}"
    lines = [
        "# Closed-form UCE edit on the bundled model: edit time, re-estimation rounds, shares, LoRA error",
        "",
        f"command: `{command}`",
        f"machine: {machine_line()}, torch {torch.__version__}, {torch.get_num_threads()} threads",
        f"python {sys.version.split()[0]}; the machine may be shared (wall times, one run)",
        "",
        f"{len(concepts)} training occupations ({', '.join(TRAIN_OCCUPATIONS)}) x gender + skin, "
        f"{len(problem.keys)} projections (to_k, to_v of every cross-attention layer), "
        f"{problem.C.shape[0]} edited and {problem.Cp.shape[0]} preserved token rows",
        "",
        "| part | seconds |",
        "|---|---:|",
        f"| edit solve (encode texts, align rows, one solve for all layers) | {solve:.2f} |",
        f"| ΔW for given α (every round) | {deltas_s:.3f} |",
        *[
            f"| re-estimation round {i} ({len(concepts)} x {args.images} images, {args.steps} steps) | {t:.1f} |"
            for i, t in enumerate(rounds)
        ],
        "",
        f"Measured shares (world classifier, argmax, {args.images} images per concept; round 0 = base, "
        f"after {len(rounds) - 1} re-estimation round(s), α step {args.step}):",
        "",
        "| concept | attribute | before | after | α |",
        "|---|---|---|---|---|",
    ]
    for c in concepts:
        for a in classes:
            alpha_text = " ".join(f"{v} {x:+.2f}" for v, x in fit.alpha[c.name][a].items())
            lines.append(
                f"| {c.name} | {a} | {_shares(fit.before[c.name][a])} | {_shares(fit.after[c.name][a])} | "
                f"{alpha_text} |"
            )
    lines += [
        "",
        "The edit as a LoRA (truncated SVD of each ΔW), overall ||ΔW - BA||_F / ||ΔW||_F:",
        "",
        "| rank | relative error |",
        "|---:|---:|",
        *[f"| {r}{' (full)' if r == full else ''} | {e:.2e} |" for r, e in sorted(lora.items())],
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
