"""A library of single-concept steering adapters: one LoRA per concept word x attribute value, from the UCE edit.

Each adapter steers one concept word (an occupation or its paraphrase, e.g. "nurse", "caregiver") toward one
attribute value ("a photo of the face of a nurse" drawn as a man). It is the closed-form edit of
`fairdiff.mitigate.edit` for that one concept with one α, exported as a LoRA by truncated SVD and written in PEFT
format:

    v* = W c + α ||W c|| W c_a / ||W c_a||                 (c: the concept's token rows, c_a: "man nurse"'s)
    ΔW = (V* - C Wᵀ)ᵀ C (λ I + C ᵀC + s Cpᵀ Cp)⁻¹           (every cross-attention to_k / to_v)
    ΔW ≈ B A,  B = U_r S_r^½,  A = S_r^½ V_rᵀ               (`edit_as_lora`, rank r, scale 1)

with the edit's defaults (UCE's five templates, λ 0.5, preserved texts: the empty prompt, the attribute and
neutral words, the explicit attribute + concept texts) and one strength α for every adapter (`strength`).

Concepts: `occupations` of the world (default the eight without scientist and cashier, which stay out of every
stack so that drift is measured on concepts no adapter targets) and each one's paraphrases from the world config;
values: every value of gender (2), skin (4) and age (2). Eight occupations x 2 words x 8 values = 128 adapters.

Stack order (`stack_order`): in rounds, so that a small stack never holds two adapters that pull one concept
word's attribute different ways. Round 0 takes, for every (word, attribute), its value least likely in the world
config (the "fix for the bias found": nurse -> man, doctor -> woman); round r the (r+1)-th least likely; rounds
are shuffled with the seed. With the default library the first 48 adapters have no such conflict; from 49 on, a
word's second gender / skin / age value joins, and at 128 every value of every (word, attribute) is in.

The library is cached under its fingerprint (the config, the base model's weight hashes, `LIBRARY_VERSION`):
`root/<fingerprint>/manifest.json` records every adapter (id, concept, occupation, attribute, value, target
prompts, the SVD error, the sha256 of each file) and `adapters/<id>/` holds its PEFT directory. Loading checks
every file against its recorded sha256, so a changed or broken file is one `FairdiffError` naming it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from fairdiff.errors import FairdiffError

logger = logging.getLogger(__name__)

LIBRARY_VERSION = "1"
#: Occupations a stack may target; scientist and cashier (and their paraphrases) stay out for the drift measure.
LIBRARY_OCCUPATIONS = ("doctor", "nurse", "ceo", "engineer", "teacher", "housekeeper", "firefighter", "pilot")
#: Attributes the adapters steer (attire is named after the subject in the world's captions, "in revealing
#: clothes", which UCE's attribute-before-concept texts cannot align with, so it is not steered).
STEER_ATTRIBUTES = ("gender", "skin", "age")
TARGET_TEMPLATE = "a photo of the face of a {}"  # the audits' prompt; the one drawn to measure an adapter


@dataclass(frozen=True)
class LibraryConfig:
    """What a library is built from. `strength` α 2: in the reduced stack run of bench/results/study_stack.md, α 4
    made single adapters steer but broke the images (a lone adapter's k = 1 cell: validity 0.22 against the base's
    0.93, FD 364 against 52), α 2 kept most of the steering with validity 0.78 and FD 80 (docs/study-stack.md).
    `rank` 8: the exported LoRAs' relative SVD error is 0.14-0.22 (recorded per adapter in the manifest)."""

    occupations: tuple[str, ...] = LIBRARY_OCCUPATIONS
    paraphrases: bool = True
    strength: float = 2.0
    rank: int = 8
    lam: float = 0.5
    preserve_scale: float = 1.0
    tokens: str = "auto"  # build_problem's token rows: "auto" (MiniLM: prefix + tail) or "tail"
    seed: int = 0


@dataclass(frozen=True)
class AdapterSpec:
    """One steering adapter of the library: concept word -> attribute value."""

    id: str
    concept: str  # the word prompts say ("nurse", "caregiver", "CEO")
    occupation: str  # the world occupation it is or paraphrases
    attribute: str
    value: str
    prior: float  # P(value | occupation) in the world config: how far the base is from the wanted value
    target_prompts: tuple[str, ...]


@dataclass
class SteeringAdapter:
    """An adapter of a built library: its spec, its PEFT directory and what the export recorded."""

    spec: AdapterSpec
    path: Path
    svd_error: float
    sha256: dict[str, str] = field(default_factory=dict)

    def load(self):
        """The LoRA (`LoRAAdapter`), read with the adapters reader, after checking the files are the ones built."""
        from fairdiff.adapters.loading import load_adapter
        from fairdiff.files import file_sha256

        for rel, digest in self.sha256.items():
            file = self.path / rel
            if not file.is_file():
                raise FairdiffError(f"library adapter {self.path}: {rel} is missing; delete the library to rebuild it")
            if file_sha256(file) != digest:
                raise FairdiffError(
                    f"library adapter {self.path}: {rel} changed after the library was built (sha256 "
                    f"{file_sha256(file)[:12]}..., built {digest[:12]}...); delete the library to rebuild it"
                )
        return load_adapter(self.path)


@dataclass
class Library:
    """A built library: `adapters` in stack order, `root` its directory, `fingerprint` its cache key."""

    adapters: list[SteeringAdapter]
    root: Path
    fingerprint: str
    config: LibraryConfig

    def __len__(self) -> int:
        return len(self.adapters)

    def specs(self) -> list[AdapterSpec]:
        return [a.spec for a in self.adapters]


def _check_config(cfg: LibraryConfig) -> None:
    from fairdiff.world.schema import OCCUPATIONS

    unknown = [o for o in cfg.occupations if o not in OCCUPATIONS]
    if unknown or not cfg.occupations:
        raise FairdiffError(f"library occupations must be world occupations {list(OCCUPATIONS)}, got {unknown or []}")
    if len(set(cfg.occupations)) != len(cfg.occupations):
        raise FairdiffError(f"library occupations must be distinct, got {list(cfg.occupations)}")
    if not np.isfinite(cfg.strength) or cfg.strength <= 0:
        raise FairdiffError(f"library strength must be a finite number > 0, got {cfg.strength}")
    if cfg.tokens not in ("auto", "tail", "all"):
        raise FairdiffError(f"library tokens must be auto, tail or all, got {cfg.tokens!r}")
    if isinstance(cfg.rank, bool) or not isinstance(cfg.rank, int) or cfg.rank < 1:
        raise FairdiffError(f"library rank must be a whole number >= 1, got {cfg.rank!r}")


def library_specs(cfg: LibraryConfig, world=None) -> list[AdapterSpec]:
    """Every adapter of the library in stack order (see the module docstring); no model needed."""
    from fairdiff.mitigate.edit import concept_word, fill
    from fairdiff.world.config import load_world_config
    from fairdiff.world.schema import ATTRIBUTES

    _check_config(cfg)
    world = world or load_world_config()
    words: list[tuple[str, str]] = []  # (word, occupation)
    for occ in cfg.occupations:
        words.append((concept_word(occ), occ))
        if cfg.paraphrases:
            words += [(p, occ) for p in world.occupations[occ].paraphrases]
    seen = {}
    for word, occ in words:
        if word.lower() in seen:
            raise FairdiffError(f"library: concept word {word!r} comes from both {seen[word.lower()]} and {occ}")
        seen[word.lower()] = occ
    rng = np.random.default_rng([cfg.seed, 0x57AC])
    rounds: dict[int, list[AdapterSpec]] = {}
    for word, occ in words:
        for attribute in STEER_ATTRIBUTES:
            probs = world.occupations[occ].probs[attribute]
            tie = rng.random(len(ATTRIBUTES[attribute]))  # breaks equal priors, seeded
            values = sorted(ATTRIBUTES[attribute], key=lambda v: (probs[v], tie[ATTRIBUTES[attribute].index(v)]))
            for r, value in enumerate(values):
                spec = AdapterSpec(
                    id=f"{word.lower()}-{attribute}-{value}",
                    concept=word,
                    occupation=occ,
                    attribute=attribute,
                    value=value,
                    prior=float(probs[value]),
                    target_prompts=(fill(TARGET_TEMPLATE, word),),
                )
                rounds.setdefault(r, []).append(spec)
    order: list[AdapterSpec] = []
    for r in sorted(rounds):
        part = rounds[r]
        order += [part[i] for i in rng.permutation(len(part))]
    return order


def fingerprint(payload: dict) -> str:
    """sha256 (first 16 hex digits) of a JSON payload with sorted keys: the cache key of a library or a cell."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def library_fingerprint(cfg: LibraryConfig, weight_hashes: dict[str, str]) -> str:
    return fingerprint({"version": LIBRARY_VERSION, "config": asdict(cfg), "weights": weight_hashes})


def _read_manifest(root: Path, cfg: LibraryConfig) -> list[SteeringAdapter] | None:
    path = root / "manifest.json"
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        adapters = [
            SteeringAdapter(
                spec=AdapterSpec(**{**a["spec"], "target_prompts": tuple(a["spec"]["target_prompts"])}),
                path=root / "adapters" / a["spec"]["id"],
                svd_error=float(a["svd_error"]),
                sha256=dict(a["sha256"]),
            )
            for a in record["adapters"]
        ]
    except (ValueError, KeyError, TypeError) as exc:
        raise FairdiffError(f"library manifest {path}: unreadable ({exc}); delete the library to rebuild it") from None
    if [a.spec for a in adapters] != library_specs(cfg):
        raise FairdiffError(f"library manifest {path}: its adapters differ from the config's; delete it to rebuild")
    return adapters


def build_library(
    loaded,
    cfg: LibraryConfig,
    root: Path,
    on_progress: Callable[[int, int, str], None] | None = None,
) -> Library:
    """The library of `cfg` for `loaded` under `root/<fingerprint>/`: read from there when built before, else built
    (one UCE problem per concept word, one α per adapter, each exported as a rank-`cfg.rank` LoRA) into a folder
    aside and swapped in whole."""
    from fairdiff.adapters.formats import write_peft
    from fairdiff.files import file_sha256, swap_in_dir, write_json_atomic
    from fairdiff.mitigate.edit import Concept, build_problem, edit_as_lora
    from fairdiff.world.schema import ATTRIBUTES

    specs = library_specs(cfg)
    fp = library_fingerprint(cfg, loaded.weight_hashes())
    target = Path(root) / fp
    adapters = _read_manifest(target, cfg)
    if adapters is not None:
        logger.info("library %s: %d adapters reused", target, len(adapters))
        return Library(adapters, target, fp, cfg)
    tmp = target.with_name(f".{fp}.building")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    attributes = {a: list(ATTRIBUTES[a]) for a in STEER_ATTRIBUTES}
    problems: dict[str, object] = {}
    built: list[SteeringAdapter] = []
    try:
        for i, spec in enumerate(specs):
            if spec.concept not in problems:
                problems[spec.concept] = build_problem(
                    loaded,
                    [Concept(spec.concept, spec.concept)],
                    attributes,
                    lam=cfg.lam,
                    preserve_scale=cfg.preserve_scale,
                    tokens=cfg.tokens,
                )
            deltas = problems[spec.concept].deltas({spec.concept: {spec.attribute: {spec.value: cfg.strength}}})
            lora, _, error = edit_as_lora(deltas, cfg.rank)
            lora.source = f"library:{spec.id}"
            out = tmp / "adapters" / spec.id
            write_peft(lora, out, base_model=loaded.name)
            files = sorted(p for p in out.rglob("*") if p.is_file())
            sha = {str(p.relative_to(out)): file_sha256(p) for p in files}
            built.append(SteeringAdapter(spec, target / "adapters" / spec.id, float(error), sha))
            if on_progress:
                on_progress(i + 1, len(specs), f"library {spec.id}")
        manifest = {
            "version": LIBRARY_VERSION,
            "fingerprint": fp,
            "config": asdict(cfg),
            "base_model": {"name": loaded.name, "weight_hashes": loaded.weight_hashes()},
            "edit": {"method": "uce", "templates": "fairdiff.mitigate.edit.DEFAULT_TEMPLATES", "as_lora": cfg.rank},
            "adapters": [{"spec": asdict(a.spec), "svd_error": a.svd_error, "sha256": a.sha256} for a in built],
        }
        write_json_atomic(tmp / "manifest.json", manifest)
        swap_in_dir(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("library %s: %d adapters built", target, len(built))
    return Library(built, target, fp, cfg)


def conflicts(specs: Sequence[AdapterSpec]) -> int:
    """How many adapters of `specs` share their (concept, attribute) with an earlier one (pull it another way)."""
    seen: set[tuple[str, str]] = set()
    n = 0
    for s in specs:
        key = (s.concept.lower(), s.attribute)
        n += key in seen
        seen.add(key)
    return n
