"""Benchmark: one training step of the tiny UNet (forward + backward, batch 64) in fp32 and under bf16 autocast.

Why `train-model` turns autocast on only where bf16 is native (`bf16_is_native`): on a CPU with avx512_bf16
autocast is faster than fp32, on an AVX2-only CPU it is emulated and far slower. Both in one run, as a ratio.
Writes bench/results/train_step.md with the machine and the command.

    python bench/train_step.py [--batch 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from fairdiff.models.precision import bf16_is_native
from fairdiff.models.tiny import build_tiny_unet
from fairdiff.provenance import machine_line


def step_seconds(bf16: bool, batch: int, repeats: int) -> float:
    unet = build_tiny_unet(0)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, 32, 32, generator=gen)
    t = torch.randint(0, 1000, (batch,), generator=gen)
    cond = torch.randn(batch, 24, 384, generator=gen)
    times = []
    for _ in range(repeats + 1):  # the first step warms up kernels and is not counted
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            pred = unet(x, t, encoder_hidden_states=cond).sample
        pred.float().pow(2).mean().backward()
        times.append(time.perf_counter() - t0)
    return min(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "train_step.md")
    args = parser.parse_args()

    fp32 = step_seconds(False, args.batch, args.repeats)
    bf16 = step_seconds(True, args.batch, args.repeats)
    native = bf16_is_native(torch.device("cpu"))
    lines = [
        "# Tiny-UNet training step on CPU: fp32 vs bf16 autocast",
        "",
        f"command: `python bench/train_step.py --batch {args.batch} --repeats {args.repeats}`",
        f"machine: {machine_line()}, torch {torch.__version__}",
        f"python {sys.version.split()[0]}; best of {args.repeats} steps after one warm-up",
        "",
        f"| forward + backward, batch {args.batch} | seconds | vs fp32 |",
        "|---|---:|---:|",
        f"| fp32 | {fp32:.2f} | 1.00x |",
        f"| bf16 autocast | {bf16:.2f} | {bf16 / fp32:.2f}x |",
        "",
        f"bf16 native on this CPU (`bf16_is_native`): {native}; train-model uses {'bf16' if native else 'fp32'} here.",
        "",
    ]
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
