"""Benchmark: audit overhead against bare generation of the same images (target: <= 5%).

In one run, on the same loaded model, alternating repeats: (a) bare generation — `draw` over the
audit's exact batches (prompts, negatives, seeds), images discarded; (b) the audit — the same batches plus
detection, PNG encoding, atomic writes and the SQLite store, into a fresh run dir. Overhead = b / a - 1,
from the median of the repeats. Writes bench/results/audit_overhead.md with the machine and the command.

    python bench/audit_overhead.py [--n 16] [--max-prompts 4] [--repeats 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from fairdiff.audit.arms import arm_from_spec
from fairdiff.audit.runner import AuditConfig, build_plan, run_audit, shard_batches
from fairdiff.audit.suites import load_suite
from fairdiff.detect import build_detector
from fairdiff.models.loading import load_pipeline
from fairdiff.models.sampling import SamplingRequest, draw
from fairdiff.provenance import library_versions, machine_line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=16, help="images per prompt and arm")
    parser.add_argument("--max-prompts", type=int, default=4)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "audit_overhead.md")
    args = parser.parse_args()

    cfg = AuditConfig(
        suites=["world-occupations"],
        arms=[{"kind": "base", "name": "base"}, {"kind": "negative", "name": "neg", "negative": "revealing clothes"}],
        images_per_prompt=args.n,
        max_prompts=args.max_prompts,
        steps=args.steps,
        batch_size=args.batch_size,
    )
    loaded = load_pipeline("tiny")
    detector = build_detector("world", measure_accuracy=False)
    arms = {a["name"]: arm_from_spec(a) for a in cfg.arms}
    jobs = build_plan([load_suite(s) for s in cfg.suites], list(arms.values()), cfg)
    batches = [b for _, b in shard_batches(jobs, arms, cfg, 0, 1)]

    def bare() -> None:
        for batch in batches:
            draw(loaded, SamplingRequest([j.options(cfg.guidance) for j in batch], steps=cfg.steps))

    def audit() -> None:
        out = Path(tempfile.mkdtemp(prefix="fairdiff-bench-"))
        try:
            run_audit(cfg, out / "run", loaded=loaded, detector=detector)
        finally:
            shutil.rmtree(out)

    bare()  # warm-up (first-call allocations)
    times: dict[str, list[float]] = {"bare": [], "audit": []}
    for _ in range(args.repeats):
        for name, fn in (("bare", bare), ("audit", audit)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    overhead = med["audit"] / med["bare"] - 1
    n_images = len(jobs)
    cmd = "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    lines = [
        "# Audit overhead vs bare generation",
        "",
        f"Command: `{cmd}`  ",
        f"Machine: {machine_line()}; fairdiff {library_versions()['fairdiff']}, torch {library_versions()['torch']}",
        "",
        f"{n_images} images per repeat (tiny model, {cfg.steps} steps, guidance 3, batch {cfg.batch_size}, "
        f"2 arms x {args.max_prompts} prompts x {args.n} seeds), {args.repeats} alternating repeats, median:",
        "",
        "| | seconds | images/s |",
        "|---|---:|---:|",
        f"| bare generation (`draw`, same batches) | {med['bare']:.2f} | {n_images / med['bare']:.1f} |",
        f"| audit (generation + detector + PNG + SQLite) | {med['audit']:.2f} | {n_images / med['audit']:.1f} |",
        "",
        f"**Audit overhead: {overhead:+.1%}** (target <= +5%). All repeats (s): bare "
        f"{', '.join(f'{t:.2f}' for t in times['bare'])}; audit {', '.join(f'{t:.2f}' for t in times['audit'])}.",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
