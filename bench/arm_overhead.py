"""Benchmark: inference overhead of each arm against base, side by side in one run.

Every arm draws the same suite prompts and seeds on the same loaded model, exactly as `fairdiff audit` draws them
(the runner's plan and batches, `ArmRuntime` slots for adapter arms, each arm's `model()` and `sampling()` context
around `draw`); detection and storage are left out. Rounds are interleaved (base, arm 1, arm 2, ..., then again),
so a machine that slows down mid-run slows every arm alike; the table gives the median images/s of each arm and its
ratio to base. The arms are an input: the default list (base, negative prompt, quota, Fair Diffusion guidance) or
an arm file (`--arms arms.yaml`, the `fairdiff audit --arms` format: edit, finetune and adapter arms as well), whose
first arm is the reference. Writes bench/results/arm_overhead.md with the machine and the command.

    python bench/arm_overhead.py [--n 8] [--max-prompts 2] [--rounds 3] [--arms arms.yaml]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from fairdiff.audit.arm_specs import load_arms_file
from fairdiff.audit.arms import ArmRuntime, arm_from_spec, check_arms
from fairdiff.audit.runner import AuditConfig, build_plan, shard_batches
from fairdiff.audit.suites import load_suite
from fairdiff.models.loading import load_pipeline
from fairdiff.models.sampling import SamplingRequest, draw
from fairdiff.provenance import library_versions, machine_line

MIX = ["gender=uniform", "skin=uniform"]
DEFAULT_ARMS = [
    {"kind": "base", "name": "base"},
    {"kind": "negative", "name": "negative", "negative": "revealing clothes"},
    {"kind": "quota", "name": "quota", "mix": MIX},
    {"kind": "guidance", "name": "guidance", "mix": MIX},
    {"kind": "guidance", "name": "guidance-gender", "mix": ["gender=uniform"]},
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arms", type=Path, default=None, help="an arm file; its first arm is the reference")
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--suite", default="world-occupations")
    parser.add_argument("--n", type=int, default=8, help="images per prompt and arm")
    parser.add_argument("--max-prompts", type=int, default=2)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "arm_overhead.md")
    args = parser.parse_args()

    specs = load_arms_file(args.arms) if args.arms else DEFAULT_ARMS
    arms = [arm_from_spec(s) for s in specs]
    check_arms(arms)
    cfg = AuditConfig(
        model=args.model,
        suites=[args.suite],
        arms=[a.spec() for a in arms],
        images_per_prompt=args.n,
        max_prompts=args.max_prompts,
        steps=args.steps,
        batch_size=args.batch_size,
    )
    loaded = load_pipeline(args.model)
    loaded.pipeline.set_progress_bar_config(disable=True)
    runtime = ArmRuntime(loaded)
    for arm in arms:
        arm.setup(runtime)
    runtime.attach()
    by_name = {a.name: a for a in arms}
    jobs = build_plan([load_suite(args.suite)], arms, cfg)
    batches: dict[str, list] = {a.name: [] for a in arms}
    for _, batch in shard_batches(jobs, by_name, cfg, 0, 1):
        for job in batch:  # one arm per batch here, whatever the batch keys, so each arm is timed alone
            group = batches[job.arm]
            if not group or len(group[-1]) == cfg.batch_size:
                group.append([])
            group[-1].append(job)

    def run(name: str) -> float:
        arm = by_name[name]
        t0 = time.perf_counter()
        for batch in batches[name]:
            runtime.activate([arm] * len(batch))
            with arm.sampling(runtime, batch) as extra:
                request = SamplingRequest([j.options(cfg.guidance) for j in batch], steps=cfg.steps, **extra)
                draw(arm.model(runtime), request)
        return time.perf_counter() - t0

    for arm in arms:  # warm-up: first-call allocations, text embeddings of edit prompts
        run(arm.name)
    times: dict[str, list[float]] = {a.name: [] for a in arms}
    for _ in range(args.rounds):
        for arm in arms:
            times[arm.name].append(run(arm.name))
    if runtime.handle is not None:
        runtime.handle.detach()

    per_arm = {name: sum(len(b) for b in batches[name]) for name in times}
    rate = {name: per_arm[name] / statistics.median(t) for name, t in times.items()}
    ref = arms[0].name
    cmd = "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    versions = library_versions()
    lines = [
        "# Inference overhead of each arm against base",
        "",
        f"Command: `{cmd}`  ",
        f"Machine: {machine_line()}; fairdiff {versions['fairdiff']}, torch {versions['torch']}",
        "",
        f"Model {args.model}, suite {args.suite}: {args.max_prompts} prompts x {args.n} seeds per arm, {args.steps} "
        f"steps, batch {args.batch_size}, the run's guidance; {args.rounds} interleaved rounds, median. Drawing only "
        f"(no detector, no PNGs).",
        "",
        f"| arm | spec | images/s | ratio to {ref} (images/s) | time per image vs {ref} |",
        "|---|---|---:|---:|---:|",
    ]
    for arm in arms:
        spec = {k: v for k, v in arm.spec().items() if k not in ("name", "words", "concepts") and v is not None}
        r = rate[arm.name] / rate[ref]
        lines.append(f"| {arm.name} | `{spec}` | {rate[arm.name]:.2f} | {r:.2f} | {1 / r:.2f}x |")
    lines += [
        "",
        "All rounds (s): " + "; ".join(f"{n} {', '.join(f'{t:.2f}' for t in ts)}" for n, ts in times.items()) + ".",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
