"""`fairdiff study stack`: k = 1, 2, 4, ... steering adapters of the library stacked, seven ways, on the bundled model.

The stack of size k is the first k adapters of the library's stack order (`fairdiff.study.library`), so stacks are
nested. Ways to combine them (ΔW_i = B_i A_i, the adapter's LoRA; all at the cross-attention to_k / to_v):

- `naive_sum`:  W = W0 + Σ_i ΔW_i, the k LoRAs attached in k slots at weight 1 and merged (`attach_adapters`)
- `mean_sum`:   W = W0 + (1/k) Σ_i ΔW_i, the same with weights 1/k
- `ties`:       W = W0 + TIES(ΔW_1..k) (trim to `density`, elect sign, disjoint mean; `compose`, weights 1)
- `dare`:       W = W0 + Σ_i DARE(ΔW_i) (drop with probability 1 - `density`, rescale by 1/density; seeded)
- `svd`:        W = W0 + the best rank-`svd_rank` approximation of Σ_i ΔW_i (`compose(method="svd")`)
- `joint_edit`: W = W0 + ΔW_joint, ONE closed-form UCE edit of W for the k concepts at once: the concepts' rows
                share one solve, (λI + Σ_all c cᵀ + s Σ c_p c_pᵀ)⁻¹, and α is summed per (concept, attribute,
                value); the exact edit, not its rank-r LoRA
- `activation`: W untouched; y = W x + Σ_i ΔW_i ē_i on every projection's output (`fairdiff.study.steering`)

Measures (`STACK_MEASURES`), each per method and k with a 95% CI and its n; all images share prompts and seeds:

- effect_kept = Σ_t (p_stack,t - p_base,t) / Σ_t (p_alone,t - p_base,t) over the tracked adapters t: the first
  min(k, `track`) of the stack (the same ones at every k >= track). p = share of t's wanted value (detector argmax)
  on t's target prompt; alone = t's LoRA merged alone at weight 1 (one denominator for every method). Paired
  bootstrap over seeds. 1: every tracked adapter does what it did alone; 0: nothing left of it.
- effect_shift = mean_t (p_stack,t - p_base,t): the raw change in the wanted share (same bootstrap).
- drift_tv = mean over drift prompts q (occupations no library adapter targets: scientist, cashier and their
  paraphrases) and attributes a (gender, skin, age) of TV = ½ Σ_v |p_stack(v | q) - p_base(v | q)|. Same seeds
  as the base, so a stack that changes nothing scores exactly 0. Paired bootstrap over seeds.
- explicit_accuracy = share of explicit prompts' images ("a photo of the face of a dark-skinned woman doctor",
  gender x skin x `explicit_occupations`) whose detected gender AND skin are the ones asked for (Wilson CI).
- validity = share of all the cell's images the detector reads confidently (`fairdiff.metrics.quality`, Wilson).
- fd = Fréchet distance between the world classifier's features of all the cell's images and renders of the attributes
  detected on them (`fairdiff.audit.quality`'s reference, seeded by prompt and seed), bootstrap CI; compare at
  equal n only (FD's small-sample bias).
- restored_bit_exact = 1 when, after the method is removed, the UNet's weights hash as before the cell, no hook or
  slot is left, and `restore_images` redrawn images are byte-identical to the base's; else 0.

The base model's rows have method "base" and k 0 (validity, explicit_accuracy, fd). Every cell (the base,
each tracked adapter alone, each method x k) is one JSON file under `out/cells/`, named by a fingerprint of its
inputs (config fields it depends on, the adapters' ids and the library fingerprint, the model's weight hashes),
written atomically once drawn: a killed run keeps its finished cells and a rerun draws only the missing ones.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, model_validator

from fairdiff.errors import FairdiffError
from fairdiff.study.library import LIBRARY_OCCUPATIONS, TARGET_TEMPLATE, LibraryConfig, fingerprint, library_specs

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

STACK_VERSION = "1"
METHODS = ("naive_sum", "mean_sum", "ties", "dare", "svd", "joint_edit", "activation")
STACK_MEASURES: dict[str, str] = {
    "effect_kept": "share of each tracked adapter's effect alone still there in the stack (1 = all, 0 = none)",
    "effect_shift": "mean change in the wanted value's share on the tracked adapters' target prompts vs base",
    "drift_tv": "total-variation change of attribute shares vs base on prompts no adapter targets (0 = none)",
    "explicit_accuracy": "share of explicit prompts drawn with the gender and skin tone asked for",
    "validity": "share of images the world classifier reads as confident, well-formed portraits",
    "fd": "Fréchet distance of classifier features to renders of the detected attributes (lower is better)",
    "restored_bit_exact": "1 if removing the method gives back the base weights and images bit for bit, else 0",
}
COLUMNS = ["method", "k", "measure", "value", "ci_low", "ci_high", "n"]
CONFIDENCE = 0.95
DRIFT_ATTRIBUTES = ("gender", "skin", "age")


class StackConfig(BaseModel):
    """Sizes and settings of the stack study (unknown keys refused). Defaults: 56 cells of 152 images (7 distinct
    tracked prompts x 8, 4 drift prompts x 12, 16 explicit prompts x 3) at 15 steps, a base and 8 adapters alone:
    ~9.2k images with the restore redraws, ~18 min of drawing at 8.7 images/s (bench/results/sampling_speed.md,
    15 steps, bf16, idle 2 cores); not measured end to end. The reduced run of bench/results/study_stack.md (2.4k
    images, 10 steps) took 794 s on the shared machine. `quick()`: a tiny run for tests."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    occupations: tuple[str, ...] = LIBRARY_OCCUPATIONS  # library concepts: these and their paraphrases
    paraphrases: bool = True
    strength: float = 2.0  # UCE α of every adapter (see LibraryConfig)
    rank: int = 8  # LoRA rank of the library's adapters
    tokens: str = "auto"  # the edit's token rows (see LibraryConfig)
    ks: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128)
    methods: tuple[str, ...] = METHODS
    track: int = 8  # adapters whose effect is measured: the first min(k, track) of the stack
    effect_images: int = 8  # per tracked target prompt
    drift_occupations: tuple[str, ...] = ("scientist", "cashier")  # with their paraphrases; none in the library
    drift_images: int = 12  # per drift prompt
    explicit_occupations: tuple[str, ...] = ("doctor", "cashier")  # x 2 genders x 4 skin tones
    explicit_images: int = 3  # per explicit prompt
    restore_images: int = 8
    steps: int = 15  # 15 steps with bf16 keeps the world's quality gates (bench/results/sampling_speed.md)
    guidance: float | None = None  # None: the bundled model's default 3.0
    autocast: str = "auto"
    batch_size: int = 64
    density: float = 0.5  # TIES / DARE
    svd_rank: int = 8  # rank of the SVD merge: one adapter's rank
    seed: int = 0
    n_boot: int = 500
    fd_boot: int = 100

    @model_validator(mode="after")
    def _check(self) -> StackConfig:
        from fairdiff.models.defaults import AUTOCAST_MODES
        from fairdiff.world.schema import OCCUPATIONS

        bad = [m for m in self.methods if m not in METHODS]
        if bad or not self.methods or len(set(self.methods)) != len(self.methods):
            raise ValueError(f"methods must be distinct names from {list(METHODS)}, got {list(self.methods)}")
        if not self.ks or any(k < 1 for k in self.ks) or list(self.ks) != sorted(set(self.ks)):
            raise ValueError(f"ks must be increasing whole numbers >= 1, got {list(self.ks)}")
        for name in ("rank", "track", "effect_images", "drift_images", "explicit_images", "restore_images", "steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("batch_size", "svd_rank", "n_boot", "fd_boot"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.density <= 1:
            raise ValueError(f"density must be in (0, 1], got {self.density}")
        if self.autocast not in AUTOCAST_MODES:
            raise ValueError(f"autocast must be one of {list(AUTOCAST_MODES)}, got {self.autocast!r}")
        if self.restore_images > self.drift_images * max(1, len(self.drift_occupations)):
            raise ValueError("restore_images must be at most the number of drift images")
        for name in ("drift_occupations", "explicit_occupations"):
            odd = [o for o in getattr(self, name) if o not in OCCUPATIONS]
            if odd or not getattr(self, name):
                raise ValueError(f"{name} must be world occupations {list(OCCUPATIONS)}, got {odd or []}")
        overlap = sorted(set(self.drift_occupations) & set(self.occupations))
        if overlap:
            raise ValueError(f"drift_occupations must stay out of the library, but {overlap} are in it")
        return self

    @classmethod
    def quick(cls) -> StackConfig:
        """Every method at k = 1, 2 on a 16-adapter library (nurse, caregiver), a few images at 2 steps."""
        return cls(
            occupations=("nurse",),
            ks=(1, 2),
            track=2,
            effect_images=2,
            drift_occupations=("cashier",),
            drift_images=2,
            explicit_occupations=("nurse",),
            explicit_images=1,
            restore_images=2,
            steps=2,
            n_boot=50,
            fd_boot=20,
        )

    @classmethod
    def from_dict(cls, data: Any, source: str = "<dict>") -> StackConfig:
        """Validate `data` (e.g. parsed YAML) into a config; errors are one `FairdiffError` line."""
        from fairdiff.config import validate

        return validate(cls, data, "stack config", source)

    def library(self) -> LibraryConfig:
        return LibraryConfig(
            occupations=tuple(self.occupations),
            paraphrases=self.paraphrases,
            strength=self.strength,
            rank=self.rank,
            tokens=self.tokens,
            seed=self.seed,
        )


# -- prompts and jobs ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """The images every method x k cell draws, in order: (prompt, seed) jobs and where each part starts."""

    jobs: list[tuple[str, int]]
    effect: dict[str, list[int]]  # target prompt -> job indices
    drift: dict[str, list[int]]  # drift prompt -> job indices
    explicit: list[tuple[int, str, str]]  # (job index, gender asked, skin asked)
    restore: list[tuple[str, int]]  # redrawn after each method is removed, as one request


def _words(occupation: str) -> list[str]:
    from fairdiff.mitigate.edit import concept_word
    from fairdiff.world.config import load_world_config

    return [concept_word(occupation), *load_world_config().occupations[occupation].paraphrases]


def make_plan(cfg: StackConfig, specs) -> Plan:
    """The cell's jobs: tracked target prompts, drift prompts, explicit prompts; seeds cfg.seed + j per prompt."""
    from fairdiff.mitigate.edit import concept_word, fill
    from fairdiff.world.schema import GENDERS, SKIN_WORDS, SKINS

    jobs: list[tuple[str, int]] = []

    def add(prompt: str, n: int) -> list[int]:
        start = len(jobs)
        jobs.extend((prompt, cfg.seed + j) for j in range(n))
        return list(range(start, len(jobs)))

    effect: dict[str, list[int]] = {}
    for spec in specs[: cfg.track]:
        for prompt in spec.target_prompts:
            if prompt not in effect:
                effect[prompt] = add(prompt, cfg.effect_images)
    drift = {}
    for occ in cfg.drift_occupations:
        for word in _words(occ):
            prompt = fill(TARGET_TEMPLATE, word)
            drift[prompt] = add(prompt, cfg.drift_images)
    explicit = []
    for occ in cfg.explicit_occupations:
        for g in GENDERS:
            for s in SKINS:
                prompt = fill(TARGET_TEMPLATE, f"{SKIN_WORDS[s]} {g} {concept_word(occ)}")
                explicit += [(i, g, s) for i in add(prompt, cfg.explicit_images)]
    restore = [jobs[i] for p in drift.values() for i in p][: cfg.restore_images]
    return Plan(jobs, effect, drift, explicit, restore)


# -- the model, lazily ----------------------------------------------------------------------------------------


class LazyModel:
    """The bundled model, loaded on first use of its pipeline: a fully cached run never loads it."""

    name = "tiny"
    kind = "tiny"

    def __init__(self) -> None:
        from fairdiff.models.tiny import bundled_model_dir

        self.source = str(bundled_model_dir().resolve())
        self._loaded = None
        self._hashes: dict[str, str] | None = None

    @property
    def pipeline(self):
        if self._loaded is None:
            from fairdiff.models import loading

            self._loaded = loading.load_pipeline("tiny")
        return self._loaded.pipeline

    def weight_hashes(self) -> dict[str, str]:
        if self._hashes is None:
            from fairdiff.models.loading import LoadedModel

            self._hashes = LoadedModel(None, self.name, self.kind, self.source).weight_hashes()
        return self._hashes


def _state_hash(unet) -> str:
    import hashlib

    h = hashlib.sha256()
    for name, tensor in sorted(unet.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _clean(unet) -> bool:
    """No forward hooks and no adapter slots left on the UNet's modules."""
    from fairdiff.adapters.slots import LoRASlots

    return all(not m._forward_hooks and not isinstance(m, LoRASlots) for m in unet.modules())


def _draw(loaded, jobs: list[tuple[str, int]], cfg: StackConfig) -> np.ndarray:
    from fairdiff.models import sampling

    out = []
    for start in range(0, len(jobs), cfg.batch_size):
        images = [sampling.ImageOptions(p, "", s, cfg.guidance) for p, s in jobs[start : start + cfg.batch_size]]
        request = sampling.SamplingRequest(images, steps=cfg.steps, autocast=cfg.autocast)
        out.append(sampling.draw(loaded, request))
    return np.concatenate(out)


# -- applying a stack -----------------------------------------------------------------------------------------


@contextmanager
def apply_stack(loaded, method: str, adapters: list, loras: list, cfg: StackConfig) -> Iterator[None]:
    """The k adapters (`SteeringAdapter`s and their `LoRAAdapter`s) applied to `loaded` by `method` for the block;
    removed on exit (detach, the edit context's restore, hook removal)."""
    from fairdiff.adapters.compose import compose
    from fairdiff.adapters.engine import attach_adapters

    k = len(loras)
    unet = loaded.pipeline.unet
    if method in ("naive_sum", "mean_sum", "ties", "dare", "svd"):
        if method in ("naive_sum", "mean_sum"):
            attached, weights = loras, [1.0 if method == "naive_sum" else 1.0 / k] * k
        else:
            rank = cfg.svd_rank if method == "svd" else None
            comp = compose(loras, [1.0] * k, method=method, density=cfg.density, rank=rank, seed=cfg.seed)
            attached, weights = [comp.adapter], [1.0]
        handle = attach_adapters(loaded.pipeline, attached)
        try:
            handle.set_combination(weights)
            handle.merge()
            yield
        finally:
            handle.detach()
    elif method == "joint_edit":
        from fairdiff.mitigate.edit import Concept, build_problem
        from fairdiff.models.attention import edit_attention
        from fairdiff.study.library import STEER_ATTRIBUTES
        from fairdiff.world.schema import ATTRIBUTES

        words = list(dict.fromkeys(a.spec.concept for a in adapters))
        lib = cfg.library()
        problem = build_problem(
            loaded,
            [Concept(w, w) for w in words],
            {a: list(ATTRIBUTES[a]) for a in STEER_ATTRIBUTES},
            lam=lib.lam,
            preserve_scale=lib.preserve_scale,
            tokens=lib.tokens,
        )
        alpha: dict[str, dict[str, dict[str, float]]] = {}
        for a in adapters:
            per = alpha.setdefault(a.spec.concept, {}).setdefault(a.spec.attribute, {})
            per[a.spec.value] = per.get(a.spec.value, 0.0) + lib.strength
        with edit_attention(unet, deltas=problem.deltas(alpha)):
            yield
    elif method == "activation":
        from fairdiff.study.steering import install_offsets, mean_embeddings, stack_offsets

        means = mean_embeddings(loaded, [a.spec.target_prompts[0] for a in adapters])
        with install_offsets(unet, stack_offsets(loras, means)):
            yield
    else:
        raise FairdiffError(f"unknown stack method {method!r}; choose one of {', '.join(METHODS)}")


# -- cells ------------------------------------------------------------------------------------------------------


def _labels(detector, images: np.ndarray) -> dict[str, Any]:
    from fairdiff.metrics.quality import valid_images

    probs = detector(images)
    return {
        "labels": {a: p.argmax(1).astype(int).tolist() for a, p in probs.items()},
        "valid": valid_images(probs).astype(int).tolist(),
    }


def _frechet(detector, images: np.ndarray, labels: dict[str, list[int]], jobs, cfg: StackConfig) -> dict:
    from fairdiff.audit.quality import reference_seed
    from fairdiff.metrics.frechet import frechet_distance_ci
    from fairdiff.world.classifier import features
    from fairdiff.world.render import render_batch
    from fairdiff.world.schema import ATTRIBUTES, Portrait

    portraits = [Portrait(**{a: ATTRIBUTES[a][labels[a][i]] for a in ATTRIBUTES}) for i in range(len(images))]
    ref = render_batch(portraits, [reference_seed("study-stack", p, s) for p, s in jobs])
    gen_f, ref_f = features(detector.model, images), features(detector.model, ref)
    fd = frechet_distance_ci(gen_f, ref_f, n_boot=cfg.fd_boot, confidence=CONFIDENCE, seed=cfg.seed, paired=True)
    return {"fd": fd.fd, "ci_low": fd.ci_low, "ci_high": fd.ci_high, "n": len(images)}


def _cell_path(out: Path, name: str, payload: dict) -> Path:
    return out / "cells" / f"{name}-{fingerprint({'version': STACK_VERSION, **payload})}.json"


def _cached(path: Path, make: Callable[[], dict]) -> dict:
    import json

    from fairdiff.files import write_json_atomic

    if path.is_file():
        try:
            return json.loads(path.read_text())
        except ValueError:
            logger.warning("cell %s unreadable; drawing it again", path)
    record = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, record)
    return record


# -- measures ---------------------------------------------------------------------------------------------------


def _rng(cfg: StackConfig, *names: str) -> np.random.Generator:
    from fairdiff.metrics.bootstrap import stream

    return stream(cfg.seed, "study-stack", *names)


def _effect_rows(cfg, specs, plan, base, alone, cell, method, k) -> list[dict]:
    from fairdiff.world.schema import ATTRIBUTES

    tracked = specs[: min(k, cfg.track)]
    hits = []  # (3, n) per tracked adapter: base, alone, stack
    for spec in tracked:
        idx = plan.effect[spec.target_prompts[0]]
        v = ATTRIBUTES[spec.attribute].index(spec.value)
        rows = [np.asarray(rec["labels"][spec.attribute])[idx] == v for rec in (base, cell)]
        rows.insert(1, np.asarray(alone[spec.id]["labels"][spec.attribute]) == v)
        hits.append(np.stack(rows).astype(float))
    h = np.stack(hits)  # (T, 3, n)
    n = h.shape[2]
    idx = _rng(cfg, "effect", method, str(k)).integers(0, n, size=(cfg.n_boot, h.shape[0], n))
    boot = np.take_along_axis(h[None], idx[:, :, None, :].repeat(3, axis=2), axis=3).mean(3)  # (B, T, 3)

    def kept(p):  # p (..., T, 3)
        den = (p[..., 1] - p[..., 0]).sum(-1)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(den > 0, (p[..., 2] - p[..., 0]).sum(-1) / np.where(den > 0, den, 1), np.nan)

    def shift(p):
        return (p[..., 2] - p[..., 0]).mean(-1)

    point = h.mean(2)
    out = []
    for name, f in (("effect_kept", kept), ("effect_shift", shift)):
        draws = f(boot)
        finite = draws[np.isfinite(draws)]
        lo, hi = np.quantile(finite, [0.025, 0.975]) if finite.size else (np.nan, np.nan)
        out.append(_row(method, k, name, float(f(point)), lo, hi, h.shape[0] * n))
    return out


def _drift_row(cfg, plan, base, cell, method, k) -> dict:
    from fairdiff.world.schema import ATTRIBUTES

    parts = []  # per (prompt, attribute): (2, n) labels base / stack
    for idx in plan.drift.values():
        for a in DRIFT_ATTRIBUTES:
            parts.append((np.stack([np.asarray(r["labels"][a])[idx] for r in (base, cell)]), len(ATTRIBUTES[a])))
    n = len(next(iter(plan.drift.values())))
    rng = _rng(cfg, "drift", method, str(k))
    boot_idx = rng.integers(0, n, size=(cfg.n_boot, n))

    def tv(labels, kk, sel=None):
        lab = labels if sel is None else labels[:, sel]  # (2, n) or (2, B, n)
        onehot = np.eye(kk)[lab]  # (2, [B,] n, K)
        shares = onehot.mean(-2)
        return 0.5 * np.abs(shares[0] - shares[1]).sum(-1)

    point = float(np.mean([tv(lab, kk) for lab, kk in parts]))
    draws = np.mean([tv(lab, kk, boot_idx) for lab, kk in parts], axis=0)
    lo, hi = np.quantile(draws, [0.025, 0.975])
    return _row(method, k, "drift_tv", point, lo, hi, n * len(plan.drift))


def _share_row(method, k, name, hits: np.ndarray) -> dict:
    from fairdiff.metrics.bootstrap import wilson_ci

    n, c = len(hits), int(np.sum(hits))
    lo, hi = wilson_ci(np.array([c]), np.array([n]), CONFIDENCE)
    return _row(method, k, name, c / n, lo[0], hi[0], n)


def _quality_rows(plan, cell, method, k) -> list[dict]:
    from fairdiff.world.schema import ATTRIBUTES

    explicit = np.array(
        [
            cell["labels"]["gender"][i] == ATTRIBUTES["gender"].index(g)
            and cell["labels"]["skin"][i] == ATTRIBUTES["skin"].index(s)
            for i, g, s in plan.explicit
        ]
    )
    fd = cell["frechet"]
    return [
        _share_row(method, k, "explicit_accuracy", explicit),
        _share_row(method, k, "validity", np.asarray(cell["valid"])),
        _row(method, k, "fd", fd["fd"], fd["ci_low"], fd["ci_high"], fd["n"]),
    ]


def _row(method, k, measure, value, lo, hi, n) -> dict:
    return {
        "method": method,
        "k": int(k),
        "measure": measure,
        "value": float(value),
        "ci_low": float(lo),
        "ci_high": float(hi),
        "n": int(n),
    }


# -- the study ----------------------------------------------------------------------------------------------


def run_stack(cfg: StackConfig, out: Path, on_progress: Callable[[int, int, str], None] | None = None) -> pd.DataFrame:
    """Run (or resume) the stack study into `out`; returns the long table (method, k, measure, value, ci_low,
    ci_high, n), also written to `out/stack.csv`. See the module docstring."""
    import pandas as pd

    from fairdiff.detect.registry import build_detector
    from fairdiff.files import write_atomic, write_json_atomic
    from fairdiff.study.library import build_library

    out = Path(out)
    specs = library_specs(cfg.library())
    if cfg.ks[-1] > len(specs):
        raise FairdiffError(f"stack: k {cfg.ks[-1]} is more than the library's {len(specs)} adapters")
    out.mkdir(parents=True, exist_ok=True)
    loaded = LazyModel()
    plan = make_plan(cfg, specs)
    draw_keys = {
        "steps": cfg.steps,
        "guidance": cfg.guidance,
        "autocast": cfg.autocast,
        "batch_size": cfg.batch_size,
        "weights": loaded.weight_hashes(),
        "detector": "world/bundled",
    }
    job_key = {**draw_keys, "jobs": plan.jobs, "restore": plan.restore, "fd_boot": cfg.fd_boot, "seed": cfg.seed}
    tracked = specs[: cfg.track]
    cells = [(m, k) for m in cfg.methods for k in cfg.ks]
    total = 1 + len(tracked) + len(cells)
    done = 0
    state: dict[str, Any] = {}

    def progress(label: str) -> None:
        nonlocal done
        done += 1
        if on_progress:
            on_progress(done, total, label)

    def detector():
        if "detector" not in state:
            state["detector"] = build_detector("world", measure_accuracy=False)
        return state["detector"]

    def library():
        if "library" not in state:
            state["library"] = build_library(loaded, cfg.library(), out / "library")
            state["by_id"] = {a.spec.id: a for a in state["library"].adapters}
        return state["library"]

    def observe(images: np.ndarray) -> dict:
        rec = _labels(detector(), images)
        rec["frechet"] = _frechet(detector(), images, rec["labels"], plan.jobs, cfg)
        return rec

    def make_base() -> dict:
        unet = loaded.pipeline.unet
        rec = observe(_draw(loaded, plan.jobs, cfg))
        rec["restore_sha256"] = _images_hash(_draw(loaded, plan.restore, cfg))
        rec["state_sha256"] = _state_hash(unet)
        return rec

    base = _cached(_cell_path(out, "base", job_key), make_base)
    progress("base")

    alone: dict[str, dict] = {}
    for spec in tracked:

        def make_alone(spec=spec) -> dict:
            library()
            adapter = state["by_id"][spec.id]
            jobs = [plan.jobs[i] for i in plan.effect[spec.target_prompts[0]]]
            with apply_stack(loaded, "naive_sum", [adapter], [adapter.load()], cfg):
                return _labels(detector(), _draw(loaded, jobs, cfg))

        key = {**draw_keys, "adapter": spec.id, "library": asdict(cfg.library()), "effect_images": cfg.effect_images}
        alone[spec.id] = _cached(_cell_path(out, f"alone-{spec.id}", key), make_alone)
        progress(f"alone {spec.id}")

    rows = list(_quality_rows(plan, base, "base", 0))
    for method, k in cells:

        def make_cell(method=method, k=k) -> dict:
            lib = library()
            adapters = lib.adapters[:k]
            loras = [a.load() for a in adapters]
            unet = loaded.pipeline.unet
            before = _state_hash(unet)
            with apply_stack(loaded, method, adapters, loras, cfg):
                rec = observe(_draw(loaded, plan.jobs, cfg))
            same_state = _state_hash(unet) == before == base["state_sha256"]
            same_images = _images_hash(_draw(loaded, plan.restore, cfg)) == base["restore_sha256"]
            rec["restored"] = int(same_state and same_images and _clean(unet))
            return rec

        method_keys = {"density": cfg.density} if method in ("ties", "dare") else {}
        method_keys |= {"svd_rank": cfg.svd_rank} if method == "svd" else {}
        key = {**job_key, "method": method, "adapters": [s.id for s in specs[:k]], "library": asdict(cfg.library())}
        cell = _cached(_cell_path(out, f"{method}-k{k}", {**key, **method_keys}), make_cell)
        rows += _effect_rows(cfg, specs, plan, base, alone, cell, method, k)
        rows.append(_drift_row(cfg, plan, base, cell, method, k))
        rows += _quality_rows(plan, cell, method, k)
        r = cell["restored"]
        rows.append(_row(method, k, "restored_bit_exact", r, r, r, len(plan.restore)))
        progress(f"{method} k={k}")

    frame = pd.DataFrame(rows, columns=COLUMNS)
    write_atomic(out / "stack.csv", frame.to_csv(index=False).encode())
    write_json_atomic(out / "stack-config.json", {"config": cfg.model_dump(mode="json"), "version": STACK_VERSION})
    return frame


def _images_hash(images: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest()
