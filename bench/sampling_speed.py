"""Benchmark: sampling speed of the bundled tiny model, today's settings against faster candidates, side by side.

"Today" is 25 DPM-Solver++ steps in fp32, batch 32. A candidate is written `STEPS[:bf16][:bN][:compile][:SCHED]`,
e.g. `12:bf16:b64` (SCHED: a scheduler variant, see SCHEDULERS). Three modes, each writing its own section of
bench/results/sampling_speed.md (the other sections are kept):

- speed: images/s of every candidate at guidance 3 (CFG, two UNet passes per step) and 1. The machine is
  shared, so configurations are interleaved in rounds; each one's rate is the median over rounds and its ratio
  vs today is the median of the per-round ratios (today measured in the same round).
- quality: a paired proxy, cheap enough to screen many candidates: the same seeds drawn with today's settings
  and with each candidate, classified by the world classifier; how often every head's label agrees with
  today's image, validity (confident on every head), off-palette faces, and controllability.
- gates: `run_gates` (the real quality gates of `fairdiff world gates`) at `--scale` for each candidate, on the
  same seeds, with the candidate's steps, scheduler, batch and autocast.

    python bench/sampling_speed.py speed [--rounds 3] [--candidates 25 12:bf16 ...]
    python bench/sampling_speed.py quality [--n 64] [--candidates ...]
    python bench/sampling_speed.py gates --scale 0.15 --candidates 25 12:bf16:b64
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import DPMSolverMultistepScheduler

from fairdiff.models.loading import load_pipeline
from fairdiff.models.precision import bf16_is_native
from fairdiff.provenance import machine_line

RESULTS = Path(__file__).parent / "results" / "sampling_speed.md"
TODAY = "25"
#: scheduler variants: overrides of the bundled DPMSolverMultistepScheduler config (2nd-order multistep
#: DPM-Solver++, midpoint, linspace timesteps, lower_order_final, final sigma 0)
SCHEDULERS: dict[str, dict] = {
    "default": {},
    "karras": {"use_karras_sigmas": True},
    "lu": {"use_lu_lambdas": True},  # steps uniform in log-SNR
    "order3": {"solver_order": 3},
    "trailing": {"timestep_spacing": "trailing"},
    "eulerfinal": {"euler_at_final": True},
    "heun": {"solver_type": "heun"},
}
SPEED_CANDIDATES = [
    "25",
    "25:bf16",
    "12",
    "15:bf16",
    "12:bf16",
    "10:bf16",
    "12:bf16:b64",
    "12:bf16:b128",
    "12:bf16:compile",
]
QUALITY_CANDIDATES = [
    "25:bf16",
    "20:bf16",
    "15:bf16",
    "12:bf16",
    "10:bf16",
    "12:bf16:lu",
    "12:bf16:karras",
    "12:bf16:order3",
    "10:bf16:lu",
    "8:bf16:lu",
]
TEMPLATE_OCCUPATIONS = ("doctor", "nurse", "ceo", "housekeeper")


@dataclass(frozen=True)
class Candidate:
    steps: int = 25
    bf16: bool = False
    batch: int = 32
    compile: bool = False
    scheduler: str = "default"

    @classmethod
    def parse(cls, text: str) -> Candidate:
        """`12:bf16:b64:compile:lu` -> Candidate(12, True, 64, True, "lu")."""
        fields: dict = {}
        for token in text.split(":"):
            if token.isdigit():
                fields["steps"] = int(token)
            elif token in ("bf16", "fp32"):
                fields["bf16"] = token == "bf16"
            elif token.startswith("b") and token[1:].isdigit():
                fields["batch"] = int(token[1:])
            elif token == "compile":
                fields["compile"] = True
            elif token in SCHEDULERS:
                fields["scheduler"] = token
            else:
                raise SystemExit(
                    f"candidate {text!r}: unknown token {token!r} (steps, bf16, bN, compile, {SCHEDULERS})"
                )
        return cls(**fields)

    @property
    def label(self) -> str:
        parts = [
            f"{self.steps} steps",
            "bf16" if self.bf16 else "fp32",
            f"batch {self.batch}",
            *(["compile"] if self.compile else []),
            *([self.scheduler] if self.scheduler != "default" else []),
        ]
        return ", ".join(parts)


class Sampler:
    """The bundled pipeline, reconfigured per candidate (scheduler, compiled UNet, autocast) and restored."""

    def __init__(self) -> None:
        self.loaded = load_pipeline("tiny")
        self.pipe = self.loaded.pipeline
        self.unet = self.pipe.unet
        self.scheduler = self.pipe.scheduler
        self.compiled: dict[bool, torch.nn.Module] = {}  # bf16 -> compiled copy of the UNet

    @contextmanager
    def configured(self, cand: Candidate):
        self.pipe.scheduler = DPMSolverMultistepScheduler.from_config(
            self.scheduler.config, **SCHEDULERS[cand.scheduler]
        )
        if cand.compile:
            if cand.bf16 not in self.compiled:
                unet = copy.deepcopy(self.unet)
                unet.compile(dynamic=False)
                self.compiled[cand.bf16] = unet
            self.pipe.unet = self.compiled[cand.bf16]
        try:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cand.bf16):
                yield
        finally:
            self.pipe.scheduler, self.pipe.unet = self.scheduler, self.unet

    def __call__(
        self, cand: Candidate, prompts: list[str], seeds: list[int], guidance: float, steps: int | None = None
    ) -> np.ndarray:
        """uint8 images (N, 32, 32, 3), drawn in batches of `cand.batch`, image i seeded by seeds[i]."""
        out = []
        with self.configured(cand):
            for i in range(0, len(prompts), cand.batch):
                chunk = prompts[i : i + cand.batch]
                images = self.pipe(
                    prompt=chunk,
                    negative_prompt=[""] * len(chunk),
                    num_inference_steps=steps or cand.steps,
                    guidance_scale=guidance,
                    generator=[torch.Generator("cpu").manual_seed(s) for s in seeds[i : i + cand.batch]],
                    output_type="np",
                ).images
                out.append((np.clip(np.asarray(images, dtype=np.float32), 0, 1) * 255).round().astype(np.uint8))
        return np.concatenate(out)


def world_prompts(n: int) -> list[str]:
    """n prompts cycling over the occupation prompts the gates use."""
    from fairdiff.world.captions import describe, fill_template
    from fairdiff.world.gates import TEMPLATE

    base = [fill_template(TEMPLATE, describe(occupation=o)) for o in TEMPLATE_OCCUPATIONS]
    return [base[i % len(base)] for i in range(n)]


def write_section(name: str, lines: list[str], path: Path = RESULTS) -> None:
    """Replace section `name` (between its markers) in the results file, keeping the others."""
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    text = path.read_text() if path.is_file() else "# Sampling speed of the bundled tiny model\n"
    block = "\n".join([start, *lines, end])
    if start in text and end in text:
        before, rest = text.split(start, 1)
        text = before + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def header(command: str) -> list[str]:
    return [
        "",
        f"command: `python bench/sampling_speed.py {command}`",
        f"machine: {machine_line()}, torch {torch.__version__}, bf16 native: {bf16_is_native('cpu')}",
        f"python {sys.version.split()[0]}; run {time.strftime('%Y-%m-%d %H:%M')}",
        "",
    ]


# -- speed ---------------------------------------------------------------------------------------------------


def run_speed(args: argparse.Namespace) -> None:
    cands = [Candidate.parse(c) for c in args.candidates]
    today = Candidate.parse(TODAY)
    if today not in cands:
        cands.insert(0, today)
    sampler = Sampler()
    configs = [(c, g) for c in cands for g in args.guidance]
    warm: dict[tuple[Candidate, float], float] = {}
    for c, g in configs:  # first call per shape: oneDNN primitives, and for compile the compilation itself
        t0 = time.perf_counter()
        sampler(c, world_prompts(c.batch), list(range(c.batch)), g, steps=2)
        warm[(c, g)] = time.perf_counter() - t0
        print(f"warm-up {c.label} g{g:g}: {warm[(c, g)]:.1f}s", flush=True)
    rates: dict[tuple[Candidate, float], list[float]] = {k: [] for k in configs}
    ratios: dict[tuple[Candidate, float], list[float]] = {k: [] for k in configs}
    for r in range(args.rounds):
        order = configs[r % len(configs) :] + configs[: r % len(configs)]  # rotate so no config always runs first
        this: dict[tuple[Candidate, float], float] = {}
        for c, g in order:
            t0 = time.perf_counter()
            sampler(c, world_prompts(c.batch), list(range(1000 * r, 1000 * r + c.batch)), g)
            this[(c, g)] = c.batch / (time.perf_counter() - t0)
            print(f"round {r + 1} {c.label} g{g:g}: {this[(c, g)]:.2f} images/s", flush=True)
        for c, g in configs:
            rates[(c, g)].append(this[(c, g)])
            ratios[(c, g)].append(this[(c, g)] / this[(today, g)])

    rows = []
    for c in cands:
        cells = []
        for g in args.guidance:
            rate, ratio = statistics.median(rates[(c, g)]), statistics.median(ratios[(c, g)])
            cells.append(f"{rate:.2f} | {ratio:.2f}x ({min(ratios[(c, g)]):.2f}-{max(ratios[(c, g)]):.2f})")
        rows.append(f"| {c.label} | " + " | ".join(cells) + " |")
    compile_rows = []
    for c in cands:
        if c.compile:
            eager = Candidate(c.steps, c.bf16, c.batch, False, c.scheduler)
            for g in args.guidance:
                extra = warm[(c, g)] - warm.get((eager, g), float("nan"))
                compile_rows.append(f"| {c.label}, g{g:g} | {warm[(c, g)]:.1f} | {extra:.1f} |")
    g_cols = " | ".join(f"g{g:g} images/s | g{g:g} vs today" for g in args.guidance)
    lines = [
        "## Speed",
        *header(
            f"speed --rounds {args.rounds} --guidance {' '.join(f'{g:g}' for g in args.guidance)} "
            f"--candidates {' '.join(args.candidates)}"
        ),
        f"images/s: median of {args.rounds} interleaved rounds, one pipeline call of `batch` images per config "
        "and round; vs today: median of the per-round ratios to today (25 steps, fp32, batch 32) at the same "
        "guidance (min-max over rounds). Guidance 3 runs two UNet passes per step (CFG), guidance 1 one.",
        "",
        f"| config | {g_cols} |",
        "|---|" + "---:|---:|" * len(args.guidance),
        *rows,
    ]
    if compile_rows:
        lines += [
            "",
            "torch.compile cost: the first 2-step call per shape (warm-up) with the compiled UNet, and its excess over "
            "the same call eager (≈ compile time; paid once per process and batch shape)",
            "",
            "| config | first call s | compile s |",
            "|---|---:|---:|",
            *compile_rows,
        ]
    write_section("speed", lines)
    print("\n".join(lines))


# -- quality proxy -------------------------------------------------------------------------------------------


def _labels(probs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {a: p.argmax(1) for a, p in probs.items()}


def run_quality(args: argparse.Namespace) -> None:
    from fairdiff.metrics.quality import valid_images
    from fairdiff.world.captions import describe, fill_template
    from fairdiff.world.classifier import load_classifier, predict_probs
    from fairdiff.world.gates import OFF_PALETTE, TEMPLATE
    from fairdiff.world.render import palette_distance
    from fairdiff.world.schema import AGES, ATTRIBUTES, GENDERS, SKINS

    sampler, classifier = Sampler(), load_classifier()
    # guidance 1: neutral occupation prompts (fidelity); guidance 3: skin x gender x occupation (controllability)
    g1_prompts = world_prompts(args.n)
    asked = [
        {"skin": s, "gender": g, "age": AGES[k % 2], "occupation": o}
        for k, (o, s, g) in enumerate((o, s, g) for o in TEMPLATE_OCCUPATIONS for s in SKINS for g in GENDERS)
    ]
    asked = [asked[i % len(asked)] for i in range(args.n)]
    g3_prompts = [fill_template(TEMPLATE, describe(**w)) for w in asked]
    seeds = list(range(args.n))

    def measure(cand: Candidate) -> dict:
        t0 = time.perf_counter()
        imgs = {1.0: sampler(cand, g1_prompts, seeds, 1.0), 3.0: sampler(cand, g3_prompts, seeds, 3.0)}
        seconds = time.perf_counter() - t0
        probs = {g: predict_probs(classifier, im) for g, im in imgs.items()}
        return {"imgs": imgs, "probs": probs, "labels": {g: _labels(p) for g, p in probs.items()}, "s": seconds}

    ref = measure(Candidate.parse(TODAY))
    rows = []
    for text in [TODAY, *args.candidates]:
        cand = Candidate.parse(text)
        try:
            res = ref if text == TODAY else measure(cand)
        except (IndexError, ValueError) as exc:  # e.g. karras sigmas on this cosine schedule (diffusers)
            rows.append(f"| {cand.label} | fails: {type(exc).__name__}: {exc} |" + " |" * 9)
            print(rows[-1], flush=True)
            continue
        cells = []
        for g in (1.0, 3.0):
            agree = np.all([res["labels"][g][a] == ref["labels"][g][a] for a in ATTRIBUTES], axis=0).mean()
            valid = valid_images(res["probs"][g]).mean()
            off = (palette_distance(res["imgs"][g]) > OFF_PALETTE).mean()
            pixel = np.abs(res["imgs"][g].astype(float) - ref["imgs"][g]).mean()
            cells += [f"{agree:.3f}", f"{valid:.3f}", f"{off:.3f}", f"{pixel:.1f}"]
        control = min(
            np.mean([ATTRIBUTES[a][lab] == w[a] for lab, w in zip(res["labels"][3.0][a], asked, strict=True)])
            for a in ("gender", "skin", "age", "occupation")
        )
        rows.append(f"| {cand.label} | " + " | ".join(cells) + f" | {control:.3f} | {res['s']:.0f} |")
        print(rows[-1], flush=True)
    lines = [
        "## Quality proxy (paired, same seeds)",
        *header(f"quality --n {args.n} --candidates {' '.join(args.candidates)}"),
        f"{args.n} images at guidance 1 (the gates' neutral occupation prompts) and {args.n} at guidance 3 (skin x "
        "gender x age x occupation prompts), seeds 0..n-1, each candidate against today's images on the same seeds. "
        "agree: share of images whose label on every classifier head equals today's; valid: confident (>= 0.9) "
        "on every head; off-pal: face colour off the render palette; px: mean |pixel difference| to today "
        "(0-255, not a gate); control: the lowest per-attribute share drawn as asked at guidance 3; s: seconds to "
        "draw both sets (shared machine: a rough figure). A screen, not the gates: see the gates section.",
        "",
        "| config | g1 agree | g1 valid | g1 off-pal | g1 px | g3 agree | g3 valid | g3 off-pal | g3 px "
        "| g3 control | s |",
        "|---|" + "---:|" * 10,
        *rows,
    ]
    write_section("quality", lines)
    print("\n".join(lines))


# -- gates ---------------------------------------------------------------------------------------------------


def run_gates_mode(args: argparse.Namespace) -> None:
    import json

    from fairdiff.world.classifier import load_classifier, predict_probs
    from fairdiff.world.config import load_world_config
    from fairdiff.world.gates import GateConfig, run_gates

    sampler, classifier, world = Sampler(), load_classifier(), load_world_config()
    base = GateConfig()
    rows = []
    args.json_dir.mkdir(parents=True, exist_ok=True)
    for text in args.candidates:
        cand = Candidate.parse(text)
        cfg = GateConfig(  # as `fairdiff world gates --scale` sizes it
            control_n=max(1, round(base.control_n * args.scale)),
            fidelity_n=max(1, round(base.fidelity_n * args.scale)),
            guided_n=max(1, round(base.guided_n * args.scale)),
            paraphrase_n=max(1, round(base.paraphrase_n * args.scale)),
            steps=cand.steps,
            seed=args.seed,
            batch_size=cand.batch,
        )
        t0 = time.perf_counter()
        report = run_gates(
            world,
            lambda prompts, seeds, guidance, cand=cand: sampler(cand, prompts, seeds, guidance),
            lambda imgs: predict_probs(classifier, imgs),
            cfg,
        )
        seconds = time.perf_counter() - t0
        slug = text.replace(":", "-")
        (args.json_dir / f"gates-{slug}-scale{args.scale:g}.json").write_text(
            json.dumps({"candidate": text, "seconds": seconds, **report.as_dict()}, indent=2) + "\n"
        )
        w = report.fidelity_worst
        control = ", ".join(f"{a[:3]} {v:.3f}" for a, v in report.controllability.items())
        lo, hi = report.validity_ci
        rows.append(
            f"| {cand.label} | {control} | {report.fidelity_max_error:.3f} ({w['cell']}: {w['g1']:.3f} vs "
            f"{w['injected']:.2f}, CI {w['g1_ci'][0]:.3f}-{w['g1_ci'][1]:.3f}) | "
            f"{len(report.fidelity_misses_beyond_ci)} | {report.validity:.3f} ({lo:.3f}-{hi:.3f}) | "
            f"{report.paraphrase_max_error:.3f} | {report.off_palette['all']:.3f} | {seconds:.0f} |"
        )
        print(rows[-1], flush=True)
        lines = [
            f"## Quality gates at scale {args.scale:g}",
            *header(f"gates --scale {args.scale:g} --seed {args.seed} --candidates {' '.join(args.candidates)}"),
            f"`run_gates` as `fairdiff world gates --scale {args.scale:g}` sizes it (fidelity: "
            f"{cfg.fidelity_n} images per occupation at guidance 1; controllability: {cfg.control_n} per prompt), "
            "the same seeds for every candidate. 95% Wilson CIs. Targets at full scale: controllability >= 0.90 "
            "per attribute, fidelity max error <= 0.08, validity >= 0.95, paraphrase <= 0.15. s: wall seconds "
            "(shared machine).",
            "",
            "| config | controllability | fidelity max error (worst cell) | cells missing beyond CI | validity (CI) "
            "| paraphrase max error | off-palette | s |",
            "|---|---|---|---:|---|---:|---:|---:|",
            *rows,
        ]
        write_section(f"gates-{args.scale:g}", lines)  # after every candidate: a killed run keeps what it has
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("speed", "quality", "gates"))
    parser.add_argument("--candidates", nargs="+", default=None, help="e.g. 25 12:bf16:b64 10:bf16:lu:compile")
    parser.add_argument("--rounds", type=int, default=3, help="speed: interleaved rounds")
    parser.add_argument("--guidance", type=float, nargs="+", default=[3.0, 1.0], help="speed: guidance scales")
    parser.add_argument("--n", type=int, default=64, help="quality: images per guidance")
    parser.add_argument("--scale", type=float, default=0.15, help="gates: sample-size scale")
    parser.add_argument("--seed", type=int, default=0, help="gates: base seed")
    parser.add_argument("--json-dir", type=Path, default=Path("out/bench-sampling"), help="gates: full JSON reports")
    args = parser.parse_args()
    if args.candidates is None:
        args.candidates = {
            "speed": SPEED_CANDIDATES,
            "quality": QUALITY_CANDIDATES,
            "gates": ["12:bf16", TODAY, "15:bf16"],
        }[args.mode]
    if not bf16_is_native("cpu") and any("bf16" in c for c in args.candidates):
        print("note: bf16 is emulated on this CPU (no avx512_bf16 / AMX): bf16 candidates will be slow", flush=True)
    {"speed": run_speed, "quality": run_quality, "gates": run_gates_mode}[args.mode](args)


if __name__ == "__main__":
    main()
