"""Benchmark: portrait-world rendering throughput (target >= 1,000 images/s on 2 CPU cores).

Renders the same images three ways in one run: one at a time (`render_portrait`), in batches
(`render_batch`), and in batches plus sampling captions (`sample_world`, what training does per step).
Writes bench/results/render_throughput.md with the machine and the command.

    python bench/render_throughput.py [--n 20000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from fairdiff.provenance import library_versions, machine_line
from fairdiff.world.captions import sample_world
from fairdiff.world.config import load_world_config
from fairdiff.world.render import render_batch, render_portrait


def best_of(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "render_throughput.md")
    args = parser.parse_args()

    world = load_world_config()
    samples = sample_world(world, args.n, seed=0)
    portraits, seeds = [s.portrait for s in samples], [s.seed for s in samples]
    single_n = min(2000, args.n)

    t_single = best_of(
        lambda: [render_portrait(p, s) for p, s in zip(portraits[:single_n], seeds[:single_n], strict=True)]
    )
    t_batch = best_of(
        lambda: [
            render_batch(portraits[i : i + args.batch], seeds[i : i + args.batch]) for i in range(0, args.n, args.batch)
        ]
    )

    def with_captions():
        for i in range(0, args.n, args.batch):
            part = sample_world(world, args.batch, seed=i)
            render_batch([s.portrait for s in part], [s.seed for s in part])

    t_captions = best_of(with_captions)
    rows = [
        ("render_portrait, one at a time", single_n / t_single),
        (f"render_batch, batches of {args.batch}", args.n / t_batch),
        (f"sample_world + render_batch, batches of {args.batch}", args.n / t_captions),
    ]
    batch_rate = rows[1][1]
    lines = [
        "# Portrait-world rendering throughput",
        "",
        f"command: `python bench/render_throughput.py --n {args.n} --batch {args.batch}`",
        f"machine: {machine_line()}",
        f"python {sys.version.split()[0]}, numpy {library_versions()['numpy']}",
        "",
        "| path | images/s | vs batch |",
        "|---|---:|---:|",
        *[f"| {name} | {rate:,.0f} | {rate / batch_rate:.2f}x |" for name, rate in rows],
        "",
        f"target >= 1,000 images/s with render_batch: {'met' if batch_rate >= 1000 else 'NOT met'}",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
