"""Benchmark: the stack study (`fairdiff.study.stack.run_stack`) at a chosen size, with its curves as a table.

Runs (or resumes from --out) the study with the given overrides of `StackConfig` and writes
bench/results/study_stack.md: the command, the machine, the wall time of this invocation, the sizes, and one
table per measure (rows: method; columns: k; cells: value [95% CI]).

    python bench/study_stack.py --out OUT [--ks 1 4 16 64 128] [--steps 10] [--effect-images 4] [--drift-images 6]
        [--explicit-occupations doctor] [--explicit-images 2] [--restore-images 4] [--strength 4] [--methods ...]
        [--results FILE]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from fairdiff.provenance import machine_line
from fairdiff.study.stack import STACK_MEASURES, StackConfig, run_stack

RESULTS = Path(__file__).parent / "results" / "study_stack.md"


def table(frame, measure: str) -> str:
    d = frame[frame["measure"] == measure]
    ks = sorted(k for k in d["k"].unique() if k > 0)
    lines = ["| method | " + " | ".join(f"k={k}" for k in ks) + " |", "|---|" + "---:|" * len(ks)]
    for method in dict.fromkeys(d["method"]):
        row = d[d["method"] == method].set_index("k")
        if method == "base":
            r = row.iloc[0]
            lines.append(
                f"| base (k=0) | {r['value']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}] |" + " |" * (len(ks) - 1)
            )
            continue
        cells = []
        for k in ks:
            if k not in row.index:
                cells.append("")
                continue
            r = row.loc[k]
            cells.append(
                f"{r['value']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]" if r["value"] == r["value"] else "n/a"
            )
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    n = ", ".join(f"{v}" for v in sorted(d["n"].unique()))
    return f"### {measure}\n\n{STACK_MEASURES[measure]} (n per cell: {n})\n\n" + "\n".join(lines) + "\n"


def alone_table(cfg: StackConfig, out: Path) -> str:
    """Per tracked adapter: its wanted value's share on its target prompt in the base and with it alone, and the
    validity of those images (read from the run's cells; the newest cell file where several exist)."""
    import json

    import numpy as np

    from fairdiff.study.library import library_specs
    from fairdiff.study.stack import make_plan
    from fairdiff.world.schema import ATTRIBUTES

    def newest(pattern: str) -> dict:
        return json.loads(max((out / "cells").glob(pattern), key=lambda p: p.stat().st_mtime).read_text())

    specs = library_specs(cfg.library())
    plan = make_plan(cfg, specs)
    base = newest("base-*.json")
    lines = ["| adapter | base share | alone share | alone validity |", "|---|---:|---:|---:|"]
    for spec in specs[: cfg.track]:
        alone = newest(f"alone-{spec.id}-*.json")
        v = ATTRIBUTES[spec.attribute].index(spec.value)
        idx = plan.effect[spec.target_prompts[0]]
        p_base = np.mean(np.asarray(base["labels"][spec.attribute])[idx] == v)
        p_alone = np.mean(np.asarray(alone["labels"][spec.attribute]) == v)
        lines.append(f"| {spec.id} | {p_base:.2f} | {p_alone:.2f} | {np.mean(alone['valid']):.2f} |")
    n = len(plan.effect[specs[0].target_prompts[0]])
    return f"### tracked adapters alone\n\n{n} images each, the same seeds as the base\n\n" + "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the markdown goes")
    parser.add_argument("--ks", type=int, nargs="+")
    parser.add_argument("--strength", type=float)
    parser.add_argument("--methods", nargs="+")
    parser.add_argument("--tokens", choices=["auto", "tail", "all"])
    parser.add_argument("--steps", type=int)
    parser.add_argument("--effect-images", type=int)
    parser.add_argument("--drift-images", type=int)
    parser.add_argument("--explicit-occupations", nargs="+")
    parser.add_argument("--explicit-images", type=int)
    parser.add_argument("--restore-images", type=int)
    args = parser.parse_args()
    overrides = {
        k: tuple(v) if isinstance(v, list) else v
        for k, v in vars(args).items()
        if k not in ("out", "results") and v is not None
    }
    cfg = StackConfig(**overrides)
    t0 = time.perf_counter()
    frame = run_stack(cfg, args.out, on_progress=lambda d, t, label: print(f"{d}/{t} {label}", flush=True))
    seconds = time.perf_counter() - t0
    command = "python bench/study_stack.py " + " ".join(sys.argv[1:])
    sizes = {k: v for k, v in cfg.model_dump().items() if k in overrides or k in ("track", "strength", "rank")}
    text = [
        "# The stack study: steering adapters stacked k at a time",
        "",
        f"command: `{command}`",
        f"machine: {machine_line()}",
        f"wall seconds of this invocation: {seconds:.0f} (cells already under --out are reused, not redrawn)",
        f"config (besides StackConfig defaults): {sizes}",
        "",
        alone_table(cfg, args.out),
        *[table(frame, m) for m in STACK_MEASURES if m in set(frame["measure"])],
    ]
    args.results.write_text("\n".join(text) + "\n")
    print(args.results.read_text())


if __name__ == "__main__":
    main()
