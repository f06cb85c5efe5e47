"""The closed-form cross-attention edit of Unified Concept Editing (Gandikota et al., WACV 2024) for debiasing.

For every edited projection W (`to_k`, `to_v` of each cross-attention layer) the edit solves, in closed form,

    W' = (λ W + Σ_i v*_i c_iᵀ + s Σ_p W c_p c_pᵀ) (λ I + Σ_i c_i c_iᵀ + s Σ_p c_p c_pᵀ)⁻¹

so ΔW = W' - W = Σ_i (v*_i - W c_i) c_iᵀ (λ I + Σ c cᵀ + s Σ c_p c_pᵀ)⁻¹: the edited token embeddings c_i map to
v*_i, the preserved ones c_p keep W c_p (in the least-squares sense, weighted by `preserve_scale` s), and every
direction neither names stays where λ holds it. The matrix to invert depends on the text embeddings only, so
one linear solve serves every layer, and ΔW has rank at most the number of edited token rows. Defaults: UCE's
λ = 0.5; s = 1 (UCE's debiasing script uses 0.1 over many more preserved professions).

Which c (UCE's conventions, `train_debias.py` of rohitgandikota/unified-concept-editing): each concept is
written in several templates ("a photo of a {}", ..., "{}"); its edited rows are the token embeddings from the
concept's last token to the end of the padded sequence, aligned token by token with the same rows of each
attribute text ("a photo of a woman doctor"), which is the concept's text with the attribute word put before
the concept (UCE's `add=True` form). CLIP (SD, SDXL) is causal, so tokens before the concept do not see it;
the bundled model's MiniLM is bidirectional, so there the common prefix rows ("[CLS] a photo of a") are edited
as well (`tokens="auto"`). The targets are UCE's

    v* = W c + ||W c|| Σ_a α_a W c_a / ||W c_a||        (norms over the aligned rows of one text)

with one α per concept and attribute value. Preserved texts keep all their rows: the empty prompt (the
unconditional branch of guidance), the attribute words, neutral words, and the explicit attribute + concept
texts themselves (so "a photo of a woman doctor" still draws a woman).

The α are re-estimated from audits as in UCE's debiasing loop: draw images of every concept with the current
edit, classify them with the detector (argmax), and move each α by `step` x (wanted share - measured share),
where `fairdiff.mix` gives the wanted shares (uniform by default; step 1.0 against UCE's 0.1, for a few rounds
rather than UCE's up to 30); a concept within `tolerance` of its mix on every attribute is left as it is.
Unlike UCE, which edits the already edited W again every round, each round solves the edit from W0 with the
summed α, so the result is one ΔW from W0 with the α that made it.

Written by hand: UCE ships as research scripts, not a library, and the algebra is a few matrix products.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from fairdiff.errors import FairdiffError

logger = logging.getLogger(__name__)

#: The training occupations of the world (the `world-train` suite); the other four are held out for evaluation.
TRAIN_OCCUPATIONS = ("doctor", "nurse", "ceo", "engineer", "teacher", "housekeeper")
HELD_OUT_OCCUPATIONS = ("firefighter", "scientist", "cashier", "pilot")
#: UCE's five concept templates, in the world's wording; the first is the audits' prompt and is drawn to measure.
DEFAULT_TEMPLATES = ("a photo of the face of a {}", "a photo of a {}", "a portrait of a {}", "an image of a {}", "{}")
#: Neutral words preserved besides the attribute words (UCE preserves words the edit must not move).
NEUTRAL_WORDS = ("person", "face", "photo")
PROJECTIONS = ("to_k", "to_v")
DEFAULT_LAMBDA = 0.5  # UCE's debiasing λ
DEFAULT_PRESERVE_SCALE = 1.0
DEFAULT_STEP = 1.0
DEFAULT_TOLERANCE = 0.05  # UCE's max_bias_diff


@dataclass(frozen=True)
class Concept:
    """One edited concept: its name (e.g. a suite field value), the word prompts say, the templates its texts
    are written in (each with one `{}`) and the prompts drawn to measure its shares."""

    name: str
    word: str
    templates: tuple[str, ...] = DEFAULT_TEMPLATES
    measure: tuple[str, ...] = ()

    def texts(self) -> list[str]:
        return [fill(t, self.word) for t in self.templates]

    def measure_prompts(self) -> list[str]:
        return list(self.measure) or [fill(self.templates[0], self.word)]


def fill(template: str, subject: str) -> str:
    """`template` with `{}` replaced by `subject`, "a"/"an" before it fixed ("a {}" + "engineer" -> "an engineer")."""
    from fairdiff.world.captions import fill_template

    if template.count("{}") != 1:
        raise FairdiffError(f"edit template {template!r}: needs exactly one '{{}}' where the concept goes")
    return fill_template(template.replace("{}", "{subject}"), subject)


def attribute_word(attribute: str, value: str) -> str:
    """How a prompt names an attribute value: the world's words ("dark" skin -> "dark-skinned"), else the value."""
    from fairdiff.world.schema import SKIN_WORDS

    return SKIN_WORDS.get(value, value) if attribute == "skin" else value


def concept_word(name: str) -> str:
    """The word for a concept name: the world's occupation words ("ceo" -> "CEO"), else the name."""
    from fairdiff.world.schema import OCCUPATION_WORDS

    return OCCUPATION_WORDS.get(name, name)


# -- the closed form ---------------------------------------------------------------------------------------


def closed_form_delta(
    W: torch.Tensor,
    C: torch.Tensor,
    V: torch.Tensor,
    Cp: torch.Tensor | None,
    lam: float,
    preserve_scale: float = 1.0,
) -> torch.Tensor:
    """ΔW of one projection: W (out, d); edited rows C (n, d) with targets V (n, out); preserved rows Cp (m, d).
    Solves W' = (λW + Σ v cᵀ + s Σ W c_p c_pᵀ)(λI + Σ c cᵀ + s Σ c_p c_pᵀ)⁻¹ and returns W' - W (float64)."""
    W, C, V = W.double(), C.double(), V.double()
    A = _gram(C, Cp, lam, preserve_scale, W.shape[1])
    M = torch.linalg.solve(A, C.T).T  # C A⁻¹ (A is symmetric)
    return (V - C @ W.T).T @ M


def _gram(C: torch.Tensor, Cp: torch.Tensor | None, lam: float, preserve_scale: float, d: int) -> torch.Tensor:
    A = lam * torch.eye(d, dtype=torch.float64) + C.T @ C
    if Cp is not None and len(Cp):
        A = A + preserve_scale * (Cp.double().T @ Cp.double())
    return A


# -- texts -> token rows -----------------------------------------------------------------------------------


def encode_texts(loaded, texts: Sequence[str], chunk: int = 64) -> tuple[torch.Tensor, list[list[int]], int]:
    """(embeddings (B, L, d) float64 on the CPU, token ids per text without padding, L) as the UNet sees them:
    the tiny model's MiniLM token embeddings, or SD / SDXL's `encode_prompt` (SDXL: both encoders concatenated)."""
    pipe = loaded.pipeline
    tokenizer = pipe.tokenizer
    out = []
    with torch.no_grad():
        for start in range(0, len(texts), chunk):
            part = list(texts[start : start + chunk])
            if loaded.kind == "tiny":
                embeds = pipe.encode_prompt(part)
            else:
                device = getattr(pipe, "_execution_device", None) or pipe.device
                embeds = pipe.encode_prompt(
                    prompt=part, device=device, num_images_per_prompt=1, do_classifier_free_guidance=False
                )[0]
            out.append(embeds.detach().to("cpu", torch.float64))
    embeds = torch.cat(out)
    ids = [list(tokenizer(t)["input_ids"]) for t in texts]
    return embeds, ids, embeds.shape[1]


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def aligned_rows(
    concept_ids: list[int],
    attribute_ids: Sequence[list[int]],
    length: int,
    with_prefix: bool,
    after: int = 1,
) -> tuple[list[int], list[list[int]]] | None:
    """Token rows of a concept text and, for each attribute text, the rows aligned with them (UCE's alignment):
    from the concept's last token (`after` tokens before the end of the text: the template's text after the
    concept plus the end token) to the end of the padded sequence, each attribute text shifted so that its
    last concept token lands on the concept's, cut where a longer attribute text runs out of positions; with
    `with_prefix` also the common prefix the texts share. None where a text is longer than the encoder's window
    (its tail is cut off)."""
    if len(concept_ids) > length or any(len(ids) > length for ids in attribute_ids):
        return None
    end_c = len(concept_ids) - after - 1
    if end_c < 1:
        return None
    shifts = [len(ids) - after - 1 - end_c for ids in attribute_ids]
    stop = length - max(0, *shifts)
    prefix = []
    if with_prefix:
        p = min(_common_prefix(concept_ids, ids) for ids in attribute_ids)
        prefix = list(range(min(p, end_c)))
    rows = prefix + list(range(end_c, stop))
    attr_rows = [prefix + [j + shift for j in range(end_c, stop)] for shift in shifts]
    return rows, attr_rows


# -- the edit problem --------------------------------------------------------------------------------------


def _weight(module, proj: str) -> torch.Tensor:
    for part in proj.split("."):
        module = getattr(module, part)
    return getattr(module, "base_layer", module).weight


@dataclass
class _Block:
    """One concept text: its edited rows (into the stacked rows) and, per attribute value, the aligned rows."""

    concept: str
    text: str
    rows: slice
    attr: dict[tuple[str, str], torch.Tensor]  # (attribute, value) -> (n, d) embeddings aligned with the rows


@dataclass
class EditProblem:
    """Everything of one edit that does not change with α: the text embeddings, the token rows, the solve
    matrix and each projection's W0 and norms. `deltas(alpha)` is the edit for given α, in milliseconds."""

    keys: list[str]
    weights: dict[str, torch.Tensor]  # key -> W0 (out, d) float64
    blocks: list[_Block]
    C: torch.Tensor  # (n, d) edited rows, stacked
    Cp: torch.Tensor  # (m, d) preserved rows
    M: torch.Tensor  # C A⁻¹ (n, d)
    ratios: dict[str, list[dict[tuple[str, str], float]]]  # key -> per block: ||W C_t|| / ||W C_t,a||
    lam: float
    preserve_scale: float
    preserve_texts: list[str] = field(default_factory=list)
    texts: dict[str, list[str]] = field(default_factory=dict)  # concept -> its texts used
    solve_seconds: float = 0.0

    def targets(self, key: str, alpha: Mapping[str, Mapping[str, Mapping[str, float]]]) -> torch.Tensor:
        """The UCE targets V* (n, out) of projection `key` for `alpha` (for tests and inspection)."""
        W = self.weights[key]
        V = self.C @ W.T
        for b, ratio in zip(self.blocks, self.ratios[key], strict=True):
            for (attribute, value), rows in b.attr.items():
                a = alpha.get(b.concept, {}).get(attribute, {}).get(value, 0.0)
                V[b.rows] += a * ratio[(attribute, value)] * (rows @ W.T)
        return V

    def deltas(self, alpha: Mapping[str, Mapping[str, Mapping[str, float]]]) -> dict[str, torch.Tensor]:
        """{key: ΔW float32} of the edit for `alpha` ({concept: {attribute: {value: α}}}; missing: 0)."""
        out = {}
        for key in self.keys:
            W = self.weights[key]
            E = torch.zeros_like(self.C)  # Σ_a α ||W c|| / ||W c_a|| c_a, so that V* - W C = E Wᵀ
            for b, ratio in zip(self.blocks, self.ratios[key], strict=True):
                for (attribute, value), rows in b.attr.items():
                    a = alpha.get(b.concept, {}).get(attribute, {}).get(value, 0.0)
                    if a:
                        E[b.rows] += (a * ratio[(attribute, value)]) * rows
            out[key] = (W @ E.T @ self.M).to(torch.float32)
        return out


def default_preserve(
    concepts: Sequence[Concept], words: Mapping[str, Mapping[str, str]], extra: Sequence[str] | None = None
) -> list[str]:
    """The texts an edit keeps: the empty prompt (the unconditional branch of guidance), each preserved word
    alone and in every template (default: the attribute words, "woman", "dark-skinned person", and
    `NEUTRAL_WORDS`; `extra` replaces them; an item with a space is kept as given only), and the explicit
    attribute + concept texts in each concept's first template ("a photo of the face of a woman doctor").
    Texts the edit changes are left out."""
    templates = list(dict.fromkeys(t for c in concepts for t in c.templates)) or list(DEFAULT_TEMPLATES)
    if extra is None:
        extra = [w if a == "gender" else f"{w} person" for a, per in words.items() for w in per.values()]
        extra += list(NEUTRAL_WORDS)
    texts = [""]
    for item in extra:
        texts.append(item)
        if " " not in item.strip():
            texts += [fill(t, item) for t in templates]
    for c in concepts:
        texts += [fill(c.templates[0], f"{w} {c.word}") for per in words.values() for w in per.values()]
    edited = {t.lower() for c in concepts for t in c.texts()}
    return [t for t in dict.fromkeys(texts) if t.lower() not in edited]


def build_problem(
    loaded,
    concepts: Sequence[Concept],
    attributes: Mapping[str, Sequence[str]],
    words: Mapping[str, Mapping[str, str]] | None = None,
    preserve_words: Sequence[str] | None = None,
    preserve: Sequence[str] | None = None,
    lam: float = DEFAULT_LAMBDA,
    preserve_scale: float = DEFAULT_PRESERVE_SCALE,
    projections: Sequence[str] = PROJECTIONS,
    tokens: str = "auto",
) -> EditProblem:
    """Encode every text, align the token rows and factor the solve once (see the module docstring).
    `attributes` is {attribute: [values]} (the detector's classes), `words` {attribute: {value: word}} (default:
    `attribute_word`), `preserve_words` the words `default_preserve` keeps besides the structural texts, and
    `preserve` (overrides both) the full list of preserved texts."""
    from fairdiff.models.attention import cross_attention_layers

    t0 = time.perf_counter()
    if not concepts:
        raise FairdiffError("an edit needs at least one concept")
    if not attributes or any(len(v) < 2 for v in attributes.values()):
        raise FairdiffError("an edit needs at least one attribute with two or more values")
    if not (math.isfinite(lam) and lam > 0):
        raise FairdiffError(f"--lambda must be a finite number > 0, got {lam}")
    if not (math.isfinite(preserve_scale) and preserve_scale >= 0):
        raise FairdiffError(f"the preserve scale must be a finite number >= 0, got {preserve_scale}")
    if tokens not in ("auto", "tail", "all"):
        raise FairdiffError(f"tokens must be auto, tail or all, got {tokens!r}")
    names = [c.name for c in concepts]
    if len(set(names)) != len(names):
        raise FairdiffError(f"concepts must be distinct, got {names}")
    words = {
        a: {v: (words or {}).get(a, {}).get(v) or attribute_word(a, v) for v in vals} for a, vals in attributes.items()
    }
    if preserve is None:
        preserve = default_preserve(concepts, words, preserve_words)
    preserve = list(dict.fromkeys(preserve))
    with_prefix = tokens == "all" or (tokens == "auto" and loaded.kind == "tiny")

    cells = [(a, v) for a, vals in attributes.items() for v in vals]
    texts: list[str] = []
    plan = []  # (concept, text index, [attribute text indices])
    for c in concepts:
        for template in dict.fromkeys(c.templates):
            idx = len(texts)
            texts.append(fill(template, c.word))
            attr_idx = []
            for a, v in cells:
                attr_idx.append(len(texts))
                texts.append(fill(template, f"{words[a][v]} {c.word}"))
            plan.append((c, idx, attr_idx, template))
    preserve_at = len(texts)
    texts += preserve
    embeds, ids, length = encode_texts(loaded, texts)

    rows_list, blocks, used = [], [], {c.name: [] for c in concepts}
    n = 0
    tokenizer = loaded.pipeline.tokenizer
    after_of = {t: len(tokenizer(t.split("{}", 1)[1])["input_ids"]) - 1 for t in {p[3] for p in plan}}
    for c, idx, attr_idx, template in plan:
        aligned = aligned_rows(ids[idx], [ids[i] for i in attr_idx], length, with_prefix, after_of[template])
        if aligned is None:
            logger.warning(
                "edit: %r is longer than the text encoder's window or has no tokens of its own; skipped", texts[idx]
            )
            continue
        rows, attr_rows = aligned
        rows_list.append(embeds[idx, rows])
        attr = {cell: embeds[i, r] for cell, i, r in zip(cells, attr_idx, attr_rows, strict=True)}
        blocks.append(_Block(c.name, texts[idx], slice(n, n + len(rows)), attr))
        used[c.name].append(texts[idx])
        n += len(rows)
    missing = [name for name, t in used.items() if not t]
    if missing:
        raise FairdiffError(f"edit: no text of concept {missing[0]!r} fits the text encoder's window")
    C = torch.cat(rows_list)
    Cp = embeds[preserve_at:].reshape(-1, embeds.shape[-1]) if preserve else embeds[:0, 0]

    layers = cross_attention_layers(loaded.pipeline.unet)
    if not layers:
        raise FairdiffError(f"model {loaded.name!r}: its UNet has no cross-attention layers to edit")
    keys = [f"{layer.name}.{p}" for layer in layers for p in projections]
    weights = {}
    for layer in layers:
        for p in projections:
            W = _weight(layer.module, p).detach().to("cpu", torch.float64)
            if W.shape[1] != C.shape[1]:
                raise FairdiffError(
                    f"{layer.name}.{p}: takes {W.shape[1]}-d inputs, the text embeddings are {C.shape[1]}-d"
                )
            weights[f"{layer.name}.{p}"] = W
    A = _gram(C, Cp, lam, preserve_scale, C.shape[1])
    M = torch.linalg.solve(A, C.T).T
    # ||W C_t||_F / ||W C_t,a||_F for every block t and cell a: two matmuls per key, norms summed per segment
    attr_all = torch.cat([r for b in blocks for r in b.attr.values()])
    attr_seg = torch.cat([torch.full((len(r),), i) for i, r in enumerate(r for b in blocks for r in b.attr.values())])
    c_seg = torch.cat([torch.full((b.rows.stop - b.rows.start,), i) for i, b in enumerate(blocks)])
    ratios = {}
    for key, W in weights.items():
        c_norm = torch.zeros(len(blocks), dtype=torch.float64).index_add_(0, c_seg, (C @ W.T).pow(2).sum(1)).sqrt()
        a_sq = (attr_all @ W.T).pow(2).sum(1)
        a_norm = torch.zeros(int(attr_seg[-1]) + 1, dtype=torch.float64).index_add_(0, attr_seg, a_sq).sqrt()
        ratio = (c_norm.repeat_interleave(len(cells)) / a_norm.clamp_min(1e-12)).tolist()
        ratios[key] = [
            dict(zip(b.attr, ratio[i * len(cells) : (i + 1) * len(cells)], strict=True)) for i, b in enumerate(blocks)
        ]
    return EditProblem(
        keys=keys,
        weights=weights,
        blocks=blocks,
        C=C,
        Cp=Cp,
        M=M,
        ratios=ratios,
        lam=lam,
        preserve_scale=preserve_scale,
        preserve_texts=preserve,
        texts=used,
        solve_seconds=time.perf_counter() - t0,
    )


# -- re-estimation -----------------------------------------------------------------------------------------

Alpha = dict[str, dict[str, dict[str, float]]]
Shares = dict[str, dict[str, dict[str, float]]]


@dataclass(frozen=True)
class DrawOptions:
    """How the re-estimation draws: `images` per concept (image i: seed `seed + i` and the concept's measure
    prompt i mod their number, the same in every round), and the sampling request's fields."""

    images: int = 16
    seed: int = 0
    steps: int = 25
    guidance: float | None = None
    batch_size: int = 32
    autocast: str = "auto"
    height: int | None = None
    width: int | None = None


def measure_shares(
    loaded,
    deltas: Mapping[str, torch.Tensor],
    detector,
    concepts: Sequence[Concept],
    attributes: Mapping[str, Sequence[str]],
    opts: DrawOptions = DrawOptions(),
    on_images: Callable[[int], None] | None = None,
) -> Shares:
    """Argmax shares {concept: {attribute: {value: share}}} of `opts.images` images per concept drawn with the
    edit `deltas` installed; the UNet is restored after every batch."""
    from fairdiff.models.attention import edit_attention
    from fairdiff.models.sampling import ImageOptions, SamplingRequest, draw

    jobs = []
    for c in concepts:
        prompts = c.measure_prompts()
        jobs += [
            (c.name, ImageOptions(prompts[i % len(prompts)], "", opts.seed + i, opts.guidance))
            for i in range(opts.images)
        ]
    counts = {c.name: {a: dict.fromkeys(vals, 0) for a, vals in attributes.items()} for c in concepts}
    for start in range(0, len(jobs), opts.batch_size):
        batch = jobs[start : start + opts.batch_size]
        request = SamplingRequest(
            [o for _, o in batch], steps=opts.steps, height=opts.height, width=opts.width, autocast=opts.autocast
        )
        with edit_attention(loaded.pipeline.unet, deltas=dict(deltas)):
            pixels = draw(loaded, request)
        probs = detector(pixels)
        for a in attributes:
            classes = detector.classes[a]
            for (name, _), k in zip(batch, probs[a].argmax(1), strict=True):
                if classes[int(k)] in counts[name][a]:
                    counts[name][a][classes[int(k)]] += 1
        if on_images:
            on_images(len(batch))
    return {
        name: {a: {v: n / max(1, sum(per.values())) for v, n in per.items()} for a, per in by.items()}
        for name, by in counts.items()
    }


def max_gap(shares: Mapping[str, Mapping[str, float]], mix: Mapping[str, Mapping[str, float]]) -> float:
    """The largest |measured - wanted| share over a concept's attributes and values."""
    return max(abs(shares[a][v] - p) for a, probs in mix.items() for v, p in probs.items())


@dataclass
class EditFit:
    """The result of `fit_edit`: the final α and edit, and one history entry per measured round."""

    alpha: Alpha
    deltas: dict[str, torch.Tensor]
    history: list[dict[str, Any]]

    @property
    def before(self) -> Shares:
        return self.history[0]["shares"]

    @property
    def after(self) -> Shares:
        return self.history[-1]["shares"]


def fit_edit(
    problem: EditProblem,
    loaded,
    detector,
    concepts: Sequence[Concept],
    mix: Mapping[str, Mapping[str, float]],
    opts: DrawOptions = DrawOptions(),
    iterations: int = 3,
    step: float = DEFAULT_STEP,
    tolerance: float = DEFAULT_TOLERANCE,
    alpha: Alpha | None = None,
    on_round: Callable[[int, dict[str, Any]], None] | None = None,
    on_images: Callable[[int], None] | None = None,
) -> EditFit:
    """UCE's debiasing loop: measure (round 0: the model with the starting α, 0 by default), then `iterations`
    times move each α by `step` x (wanted - measured share) and measure again; concepts within `tolerance` of
    the mix keep their α (and their last measurement, as in UCE) until the final round, which measures all.
    `iterations` 0 measures once and keeps `alpha`. `on_round(round, entry)` after each measurement."""
    attributes = {a: list(p) for a, p in mix.items()}
    alpha = {
        c.name: {
            a: {v: float((alpha or {}).get(c.name, {}).get(a, {}).get(v, 0.0)) for v in vals}
            for a, vals in attributes.items()
        }
        for c in concepts
    }
    history: list[dict[str, Any]] = []
    shares: Shares = {}
    for r in range(iterations + 1):
        t0 = time.perf_counter()
        deltas = problem.deltas(alpha)
        final = r == iterations
        todo = [c for c in concepts if final or c.name not in shares or max_gap(shares[c.name], mix) >= tolerance]
        if todo:
            measured = measure_shares(loaded, deltas, detector, todo, attributes, opts, on_images)
            shares = {**shares, **measured}
        entry = {
            "round": r,
            "alpha": _copy(alpha),
            "shares": _copy({c.name: shares[c.name] for c in concepts}),
            "measured": [c.name for c in todo],
            "max_gap": {c.name: round(max_gap(shares[c.name], mix), 6) for c in concepts},
        }
        history.append(entry)
        if on_round:
            on_round(r, {**entry, "seconds": time.perf_counter() - t0})
        if final:
            return EditFit(alpha=alpha, deltas=deltas, history=history)
        if all(max_gap(shares[c.name], mix) < tolerance for c in concepts):
            break  # every concept at its mix: the edit is done (UCE stops here too)
        for c in concepts:
            if max_gap(shares[c.name], mix) >= tolerance:
                for a, probs in mix.items():
                    for v, p in probs.items():
                        alpha[c.name][a][v] += step * (p - shares[c.name][a][v])
    return EditFit(alpha=alpha, deltas=problem.deltas(alpha), history=history)


def _copy(nested):
    return {
        k: _copy(v) if isinstance(v, dict) else (round(v, 6) if isinstance(v, float) else v) for k, v in nested.items()
    }


# -- as a LoRA ---------------------------------------------------------------------------------------------


def edit_as_lora(deltas: Mapping[str, torch.Tensor], rank: int):
    """The edit as a LoRA by truncated SVD of each ΔW (B = U_r S_r^½, A = S_r^½ V_rᵀ, scale 1) ->
    (LoRAAdapter on the `unet` component, {key: ||ΔW - BA||_F / ||ΔW||_F}, overall relative error over all keys)."""
    from fairdiff.adapters.formats import LoRAAdapter, LoRALayer

    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise FairdiffError(f"--as-lora must be a rank >= 1, got {rank!r}")
    layers, errors = {}, {}
    err_sq = total_sq = 0.0
    for key in sorted(deltas):
        D = deltas[key].double()
        U, S, Vh = torch.linalg.svd(D, full_matrices=False)
        r = min(rank, S.numel())
        root = S[:r].sqrt()
        B, A = U[:, :r] * root, root[:, None] * Vh[:r]
        B32, A32 = B.to(torch.float32).contiguous(), A.to(torch.float32).contiguous()
        rest = torch.linalg.norm(D - B32.double() @ A32.double()).item()
        norm = torch.linalg.norm(D).item()
        errors[key] = rest / norm if norm > 0 else 0.0
        err_sq, total_sq = err_sq + rest**2, total_sq + norm**2
        layers[key] = LoRALayer(A=A32, B=B32, alpha=float(r), scale=1.0, key=key)
    overall = math.sqrt(err_sq / total_sq) if total_sq > 0 else 0.0
    return LoRAAdapter({"unet": layers}, format="peft", source="edit"), errors, overall


# -- the edit file -----------------------------------------------------------------------------------------


def edit_file(
    problem: EditProblem,
    fit: EditFit,
    loaded,
    concepts: Sequence[Concept],
    mix: Mapping[str, Mapping[str, float]],
    settings: Mapping[str, Any],
):
    """The `EditFile` of a fitted edit: its deltas and the record of how it was made (concepts and their texts,
    attributes, mix, λ, the preserved texts, α per concept, the re-estimation history, `settings` such as the
    draw options and the detector, and the base model's weight hashes). Timings stay out, so the same edit gives
    the same bytes."""
    from fairdiff import __version__
    from fairdiff.mitigate.edit_file import EditFile

    meta = {
        "method": "uce",
        "source": "Gandikota et al., Unified Concept Editing in Diffusion Models, WACV 2024",
        "fairdiff": __version__,
        "concepts": [
            {"name": c.name, "word": c.word, "texts": problem.texts[c.name], "measure": c.measure_prompts()}
            for c in concepts
        ],
        "attributes": {a: list(p) for a, p in mix.items()},
        "mix": {a: dict(p) for a, p in mix.items()},
        "lambda": problem.lam,
        "preserve_scale": problem.preserve_scale,
        "preserve": list(problem.preserve_texts),
        "projections": sorted({k.rsplit(".", 1)[1] for k in problem.keys}),
        "rows": {"edited": int(problem.C.shape[0]), "preserved": int(problem.Cp.shape[0])},
        "alpha": _copy(fit.alpha),
        "history": fit.history,
        "settings": dict(settings),
        "base_model": {
            "name": loaded.name,
            "kind": loaded.kind,
            "source": loaded.source,
            "weight_hashes": loaded.weight_hashes(),
        },
    }
    return EditFile(deltas=dict(fit.deltas), meta=meta)
