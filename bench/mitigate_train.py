"""Benchmark: seconds per training step of each mitigation method, side by side in one run.

Each method trains through the real loop (`fairdiff.mitigate.training.train_mitigation`: data, loss, backward,
AdamW) on the bundled model at the same batch size: balanced LoRA, balanced full fine-tune of the same modules,
and align LoRA (when `fairdiff.mitigate.align` is there). The first step (kernel warm-up) and the last (it also
writes the checkpoint and the export) are not counted; the table gives the median of the others.
`--fairness-steps N` also trains a balanced LoRA for N steps and reads the world detector's gender and skin
shares of `--images` images of a training prompt, base against the adapter, on the same seeds.
Writes bench/results/mitigate_train.md with the machine and the command.

    python bench/mitigate_train.py [--batch 32] [--steps 3] [--fairness-steps 0] [--images 64]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fairdiff.mitigate.training import METHODS, MitigateConfig, TrainPrompt, train_mitigation
from fairdiff.models.loading import load_pipeline
from fairdiff.provenance import machine_line

OCCUPATIONS = ("doctor", "nurse", "ceo", "engineer", "teacher", "housekeeper")  # world-train's
PROMPTS = [TrainPrompt(f"a photo of the face of a{'n' * (o[0] in 'ae')} {o}", {"occupation": o}) for o in OCCUPATIONS]


def step_seconds(loaded, cfg: MitigateConfig, out: Path) -> tuple[float, float]:
    """(median seconds per step, final loss) of a run of cfg.steps steps, first and last not counted."""
    stamps: list[float] = []
    losses: list[float] = []
    train_mitigation(
        cfg,
        loaded.name,
        out,
        loaded=loaded,
        prompts=PROMPTS,
        on_start=lambda step: stamps.append(time.perf_counter()),
        on_step=lambda step, stats: (stamps.append(time.perf_counter()), losses.append(stats["loss"])),
    )
    durations = np.diff(stamps)[1:-1]
    return statistics.median(durations.tolist()), losses[-1]


def shares(loaded, detector, adapter: Path | None, prompt: str, n: int, steps: int) -> dict[str, dict[str, float]]:
    """The detector's gender and skin shares (argmax) of n images of `prompt`, with or without the adapter."""
    from fairdiff.adapters.engine import attach_adapters
    from fairdiff.adapters.loading import load_adapter
    from fairdiff.models.sampling import ImageOptions, SamplingRequest, draw

    handle = attach_adapters(loaded.pipeline, [load_adapter(adapter)]) if adapter else None
    try:
        if handle is not None:
            handle.set_combination([1.0])
        images = np.concatenate(
            [
                draw(loaded, SamplingRequest([ImageOptions(prompt, seed=s) for s in range(i, min(n, i + 32))], steps))
                for i in range(0, n, 32)
            ]
        )
    finally:
        if handle is not None:
            handle.detach()
    probs = detector(images)
    out = {}
    for attribute in ("gender", "skin"):
        classes = detector.classes[attribute]
        counts = np.bincount(probs[attribute].argmax(1), minlength=len(classes))
        out[attribute] = {c: float(k / n) for c, k in zip(classes, counts, strict=True)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3, help="timed steps (plus a warm-up and a last one)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--methods", default="balanced-lora,balanced-finetune,align-lora", help="METHOD-MODE,...")
    parser.add_argument("--fairness-steps", type=int, default=0)
    parser.add_argument("--fairness-lr", type=float, default=1e-3)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--sample-steps", type=int, default=25, help="denoising steps of the share images")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "mitigate_train.md")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    loaded = load_pipeline("tiny", device=args.device)
    lrs = {"lora": 1e-3, "finetune": 1e-4}  # the CLI's defaults
    runs = [(*item.rsplit("-", 1), 0.0) for item in args.methods.split(",") if item]
    runs = [(m, mode, lrs[mode]) for m, mode, _ in runs if m in METHODS]  # align only where it is installed
    rows = []
    with tempfile.TemporaryDirectory(prefix="fairdiff-bench-") as tmp:
        for method, mode, lr in runs:
            cfg = MitigateConfig(
                method=method, mode=mode, lr=lr, steps=args.steps + 2, batch_size=args.batch, device=args.device
            )
            cfg.checkpoint_every = cfg.steps  # one checkpoint, in the last (uncounted) step
            seconds, loss = step_seconds(loaded, cfg, Path(tmp) / f"{method}-{mode}")
            rows.append(f"| {method} | {mode} | {seconds:.3f} | {loss:.4f} |")
            print(rows[-1], flush=True)

        fairness = []
        if args.fairness_steps:
            from fairdiff.detect import build_detector

            detector = build_detector("world", measure_accuracy=False)
            cfg = MitigateConfig(
                method="balanced",
                lr=args.fairness_lr,
                steps=args.fairness_steps,
                batch_size=args.batch,
                device=args.device,
                checkpoint_every=args.fairness_steps,
            )
            t0 = time.perf_counter()
            adapter = train_mitigation(cfg, "tiny", Path(tmp) / "fair", loaded=loaded, prompts=PROMPTS)
            train_s = time.perf_counter() - t0
            fairness = [
                "",
                f"## Balanced LoRA, {args.fairness_steps} steps of {args.batch} (lr {args.fairness_lr}, rank 8, "
                f"{train_s:.0f} s): world-detector shares, {args.images} images per prompt, guidance 3, "
                f"{args.sample_steps} steps, seeds 0..{args.images - 1}",
                "",
                "| prompt | arm | man | woman | light | medium | brown | dark |",
                "|---|---|---:|---:|---:|---:|---:|---:|",
            ]
            for occupation in ("doctor", "housekeeper"):
                prompt = f"a photo of the face of a {occupation}"
                for arm, path in (("base", None), ("balanced LoRA", adapter)):
                    s = shares(loaded, detector, path, prompt, args.images, args.sample_steps)
                    cells = [s["gender"][g] for g in ("man", "woman")] + [
                        s["skin"][k] for k in detector.classes["skin"]
                    ]
                    fairness.append(f"| {prompt} | {arm} | " + " | ".join(f"{c:.2f}" for c in cells) + " |")
                    print(fairness[-1], flush=True)

    command = " ".join(["python bench/mitigate_train.py", *sys.argv[1:]])
    lines = [
        "# Mitigation training: seconds per step of each method (bundled model)",
        "",
        f"command: `{command}`",
        f"machine: {machine_line()}, torch {torch.__version__}, device {args.device}",
        f"batch {args.batch}; median of {args.steps} steps after one warm-up (the last step, which checkpoints and "
        "exports, not counted); balanced: renders + v-prediction loss; align: 10 sampling steps, 2 with gradients",
        "",
        "| method | mode | seconds / step | last loss |",
        "|---|---|---:|---:|",
        *rows,
        *fairness,
        "",
    ]
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
