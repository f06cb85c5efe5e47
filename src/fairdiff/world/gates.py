"""Quality gates of a world model, measured with the world classifier.

- controllability: prompts naming skin, gender, age and occupation are drawn as asked (share per attribute)
- fidelity: neutral occupation prompts without guidance reproduce the world config's injected shares;
  the same prompts at the default guidance show how much guidance amplifies each skew
- validity: share of generated images the classifier is confident (>= 0.9) about on every head
- paraphrase: held-out wordings ("a physician") against the shares of the occupation they paraphrase

Every image has its own seed (base seed + index), so a gate run is reproducible.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from fairdiff.errors import FairdiffError
from fairdiff.metrics import normalized_bias
from fairdiff.metrics.bootstrap import wilson_ci
from fairdiff.metrics.quality import VALIDITY_CONFIDENCE, valid_images
from fairdiff.models.defaults import DEFAULT_STEPS
from fairdiff.models.tiny import DEFAULT_GUIDANCE_SCALE
from fairdiff.world.captions import describe, fill_template
from fairdiff.world.config import WorldConfig
from fairdiff.world.render import palette_distance
from fairdiff.world.schema import AGES, ATTRIBUTES, GENDERS, SKINS

logger = logging.getLogger(__name__)

TEMPLATE = "a photo of the face of a {subject}"
# RGB distance from every colour a render's face can have (renders: <= 1.2); faces halfway between dark and
# brown or brown and medium are > 12 away, medium/light midpoints only ~6, so those go uncounted
OFF_PALETTE = 12.0
MIN_SKEW = 0.1  # injected normalized bias below which no amplification ratio is reported
CI = 0.95  # Wilson intervals on the fidelity shares and on validity: how far sampling alone moves them


@dataclass
class GateConfig:
    control_occupations: tuple[str, ...] = ("doctor", "nurse", "ceo", "housekeeper")
    control_n: int = 32  # images per (skin, gender, occupation) prompt
    fidelity_occupations: tuple[str, ...] = ("doctor", "nurse", "ceo", "housekeeper")
    fidelity_n: int = 400  # per occupation; sampling s.e. of a share <= 0.025, so +-0.08 is > 3 s.e.
    guided_n: int = 200  # per occupation at the default guidance (a report, not a gate)
    paraphrase_n: int = 64
    steps: int = DEFAULT_STEPS
    guidance: float = DEFAULT_GUIDANCE_SCALE
    batch_size: int = 256
    seed: int = 0
    # thresholds from the issue
    control_min: float = 0.90
    fidelity_tol: float = 0.08
    validity_min: float = 0.95
    paraphrase_tol: float = 0.15


@dataclass
class GateReport:
    config: dict
    controllability: dict[str, float]  # attribute -> share drawn as asked
    fidelity: dict[str, dict]  # occupation -> attribute -> {value: {"injected", "g1", "g1_ci", "guided"}}
    fidelity_max_error: float
    guidance_amplification: dict[str, dict[str, dict]]  # occupation -> attribute -> normalized bias + ratio
    validity: float
    paraphrase: dict[str, dict]  # paraphrase -> {"occupation", "max_error", "shares"}
    paraphrase_max_error: float
    # diagnostic, not a gate: share of faces in a colour no render has (e.g. between two skin bins), per
    # fidelity occupation at guidance 1 and over every gate image ("all")
    off_palette: dict[str, float] = field(default_factory=dict)
    passed: dict[str, bool] = field(default_factory=dict)
    # sampling uncertainty, beside (not instead of) the point estimates the gates pass or fail on: the cell
    # behind fidelity_max_error with its share's CI; the cells whose whole CI lies outside injected +- tolerance
    # (a miss that more images would not undo); validity's CI
    fidelity_worst: dict = field(default_factory=dict)
    fidelity_misses_beyond_ci: list[str] = field(default_factory=list)
    validity_ci: tuple[float, float] = (float("nan"), float("nan"))

    def as_dict(self) -> dict:
        return asdict(self)

    def summary_rows(self) -> list[tuple[str, str, str, bool]]:
        """(gate, measured, target, passed) per gate, for tables."""
        c = self.config
        control = ", ".join(f"{a} {v:.3f}" for a, v in self.controllability.items())
        w, pct = self.fidelity_worst, round(100 * c.get("ci", CI))
        worst = (
            f" ({w['cell']}: {w['g1']:.3f} vs {w['injected']:.2f}, {pct}% CI {w['g1_ci'][0]:.3f}-{w['g1_ci'][1]:.3f};"
            f" cells missing beyond their CI: {len(self.fidelity_misses_beyond_ci)})"
            if w
            else ""
        )
        return [
            (
                "controllability (share drawn as asked)",
                control,
                f">= {c['control_min']}",
                self.passed["controllability"],
            ),
            (
                "fidelity, guidance 1 (max |share - injected|)",
                f"{self.fidelity_max_error:.3f}{worst}",
                f"<= {c['fidelity_tol']}",
                self.passed["fidelity"],
            ),
            (
                f"validity (confidence >= {VALIDITY_CONFIDENCE} on every head)",
                f"{self.validity:.3f} ({pct}% CI {self.validity_ci[0]:.3f}-{self.validity_ci[1]:.3f})",
                f">= {c['validity_min']}",
                self.passed["validity"],
            ),
            (
                "paraphrase (max |share - injected|)",
                f"{self.paraphrase_max_error:.3f}",
                f"<= {c['paraphrase_tol']}",
                self.passed["paraphrase"],
            ),
        ]


Sampler = Callable[[list[str], list[int], float], np.ndarray]  # prompts, seeds, guidance -> uint8 images


def _shares(probs: dict[str, np.ndarray], attribute: str) -> dict[str, float]:
    labels = probs[attribute].argmax(1)
    return {v: float(np.mean(labels == k)) for k, v in enumerate(ATTRIBUTES[attribute])}


def check_gate_world(world: WorldConfig, cfg: GateConfig) -> None:
    """The gates prompt for and compare against `cfg`'s occupations: a world without one of them is one error
    (raised before any model is loaded)."""
    wanted = dict.fromkeys((*cfg.control_occupations, *cfg.fidelity_occupations))
    missing = [o for o in wanted if o not in world.occupations]
    if missing:
        raise FairdiffError(
            f"world config {world.source}: the quality gates measure the occupations {', '.join(wanted)}; "
            f"this world has no {', '.join(missing)} (it has {', '.join(world.occupations)})"
        )


def run_gates(
    world: WorldConfig,
    sample: Sampler,
    classify: Callable[[np.ndarray], dict[str, np.ndarray]],
    cfg: GateConfig,
    on_images: Callable[[int], None] | None = None,
) -> GateReport:
    """Measure all gates with `sample` (the model) and `classify` (the world classifier)."""
    check_gate_world(world, cfg)
    seed_counter = [cfg.seed * 1_000_000]
    confident: list[np.ndarray] = []
    off: list[np.ndarray] = []  # per drawn image: face colour off the render palette

    def draw(prompts: list[str], guidance: float) -> dict[str, np.ndarray]:
        out: dict[str, list[np.ndarray]] = {a: [] for a in ATTRIBUTES}
        for i in range(0, len(prompts), cfg.batch_size):
            chunk = prompts[i : i + cfg.batch_size]
            seeds = list(range(seed_counter[0], seed_counter[0] + len(chunk)))
            seed_counter[0] += len(chunk)
            images = sample(chunk, seeds, guidance)
            off.append(palette_distance(images) > OFF_PALETTE)
            probs = classify(images)
            confident.append(valid_images(probs))
            for a in ATTRIBUTES:
                out[a].append(probs[a])
            if on_images is not None:
                on_images(len(chunk))
        return {a: np.concatenate(v) for a, v in out.items()}

    # controllability: skin x gender x occupation, age alternating so both ages are asked for
    asked, prompts = [], []
    for k, (occ, skin, gender) in enumerate((o, s, g) for o in cfg.control_occupations for s in SKINS for g in GENDERS):
        age = AGES[k % 2]
        want = {"skin": skin, "gender": gender, "age": age, "occupation": occ}
        text = fill_template(TEMPLATE, describe(skin=skin, age=age, gender=gender, occupation=occ))
        asked += [want] * cfg.control_n
        prompts += [text] * cfg.control_n
    probs = draw(prompts, cfg.guidance)
    controllability = {
        a: float(np.mean([ATTRIBUTES[a][lab] == w[a] for lab, w in zip(probs[a].argmax(1), asked, strict=True)]))
        for a in ("gender", "skin", "age", "occupation")
    }

    # fidelity: neutral prompts at guidance 1 (no CFG) against the injected shares, and at default guidance
    fidelity: dict[str, dict] = {}
    amplification: dict[str, dict[str, dict]] = {}
    max_err = 0.0
    worst: dict = {}
    beyond_ci: list[str] = []
    off_palette: dict[str, float] = {}
    for occ in cfg.fidelity_occupations:
        text = fill_template(TEMPLATE, describe(occupation=occ))
        truth = world.expected_shares(occ)
        n_off = len(off)
        g1 = draw([text] * cfg.fidelity_n, 1.0)
        off_palette[occ] = float(np.mean(np.concatenate(off[n_off:])))
        guided = draw([text] * cfg.guided_n, cfg.guidance)
        fidelity[occ], amplification[occ] = {}, {}
        for a in ("gender", "skin", "age", "attire"):
            s1, sg = _shares(g1, a), _shares(guided, a)
            fidelity[occ][a] = {}
            for v in ATTRIBUTES[a]:
                lo, hi = (float(x) for x in wilson_ci(round(s1[v] * len(g1[a])), len(g1[a]), CI))
                cell = {"injected": truth[a][v], "g1": s1[v], "g1_ci": [lo, hi], "guided": sg[v]}
                fidelity[occ][a][v] = cell
                err = abs(s1[v] - truth[a][v])
                if err > max_err or not worst:
                    max_err, worst = err, {"cell": f"{occ} {a}={v}", **cell, "error": err}
                if lo > truth[a][v] + cfg.fidelity_tol or hi < truth[a][v] - cfg.fidelity_tol:
                    beyond_ci.append(f"{occ} {a}={v}")
            # how guidance changes the skew: normalized bias (0 = parity) at guidance 1 and at the default;
            # the ratio only where the world injected a skew (a ratio of two near-zero biases is noise)
            bias = {
                k: normalized_bias(list(d.values())) for k, d in (("injected", truth[a]), ("g1", s1), ("guided", sg))
            }
            ratio = bias["guided"] / bias["g1"] if bias["injected"] >= MIN_SKEW and bias["g1"] > 0 else None
            amplification[occ][a] = {**bias, "ratio": ratio}

    # paraphrases at guidance 1
    paraphrase: dict[str, dict] = {}
    para_max = 0.0
    for occ in cfg.fidelity_occupations:
        truth = world.expected_shares(occ)
        for word in world.occupations[occ].paraphrases:
            text = fill_template(TEMPLATE, describe(occupation_word=word))
            probs_p = draw([text] * cfg.paraphrase_n, 1.0)
            shares = {a: _shares(probs_p, a) for a in ("gender", "skin", "age")}
            err = max(abs(shares[a][v] - truth[a][v]) for a in shares for v in shares[a])
            occ_share = _shares(probs_p, "occupation")[occ]
            paraphrase[word] = {
                "occupation": occ,
                "max_error": err,
                "occupation_share": occ_share,
                "shares": shares,
            }
            para_max = max(para_max, err)

    confident_all = np.concatenate(confident)
    validity = float(np.mean(confident_all))
    validity_ci = tuple(float(x) for x in wilson_ci(int(confident_all.sum()), len(confident_all), CI))
    off_palette["all"] = float(np.mean(np.concatenate(off)))
    report = GateReport(
        config={**asdict(cfg), "ci": CI},
        controllability=controllability,
        fidelity=fidelity,
        fidelity_max_error=max_err,
        guidance_amplification=amplification,
        validity=validity,
        paraphrase=paraphrase,
        paraphrase_max_error=para_max,
        off_palette=off_palette,
        fidelity_worst=worst,
        fidelity_misses_beyond_ci=beyond_ci,
        validity_ci=validity_ci,
    )
    report.passed = {
        "controllability": min(controllability.values()) >= cfg.control_min,
        "fidelity": max_err <= cfg.fidelity_tol,
        "validity": validity >= cfg.validity_min,
        "paraphrase": para_max <= cfg.paraphrase_tol,
    }
    return report
