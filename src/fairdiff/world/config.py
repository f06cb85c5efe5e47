"""World configs: P(attributes | occupation, context), caption templates and injected skews, from YAML.

`load_world_config` validates everything up front and raises one `FairdiffError` that names the file, the
key path and the bad value, e.g. ``world.yaml: occupations.doctor.gender: probabilities sum to 0.9, expected 1``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fairdiff.errors import FairdiffError
from fairdiff.world.schema import ATTRIBUTES, DEMOGRAPHIC_ATTRIBUTES, OCCUPATIONS

DEFAULT_WORLD = Path(__file__).with_name("default_world.yaml")
_NAMEABLE = ("gender", "skin", "age", "attire")


@dataclass(frozen=True)
class OccupationSpec:
    """P(gender), P(skin), P(age) for one occupation, as {value: probability} in schema order."""

    name: str
    probs: dict[str, dict[str, float]]
    paraphrases: tuple[str, ...] = ()
    finding: str = ""


@dataclass(frozen=True)
class ContextSpec:
    name: str
    weight: float
    templates: tuple[str, ...]
    occupation_in_caption: float
    revealing: float  # P(revealing) where no skew matches


@dataclass(frozen=True)
class AttireSkew:
    name: str
    context: str
    when: dict[str, str]
    revealing: float
    finding: str = ""

    def matches(self, context: str, attrs: dict[str, str]) -> bool:
        return context == self.context and all(attrs[k] == v for k, v in self.when.items())


@dataclass(frozen=True)
class WorldConfig:
    occupations: dict[str, OccupationSpec]
    contexts: dict[str, ContextSpec]
    skews: tuple[AttireSkew, ...]
    name_probability: dict[str, float]
    source: str = "<default>"
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def p_revealing(self, context: str, attrs: dict[str, str]) -> float:
        """P(attire = revealing | context, gender, skin, ...): the first matching skew, else the context's rate."""
        for skew in self.skews:
            if skew.matches(context, attrs):
                return skew.revealing
        return self.contexts[context].revealing

    def expected_shares(self, occupation: str, context: str = "photo") -> dict[str, dict[str, float]]:
        """Ground-truth attribute shares behind a neutral caption for `occupation` in `context`."""
        spec = self.occupations[occupation]
        shares = {a: dict(spec.probs[a]) for a in DEMOGRAPHIC_ATTRIBUTES}
        p_rev = 0.0
        for g, pg in spec.probs["gender"].items():
            for s, ps in spec.probs["skin"].items():
                p_rev += pg * ps * self.p_revealing(context, {"gender": g, "skin": s, "occupation": occupation})
        shares["attire"] = {"covered": 1.0 - p_rev, "revealing": p_rev}
        return shares


class _Checker:
    """Collects the key path while walking the YAML so every error names where it is."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, path: str, message: str) -> FairdiffError:
        return FairdiffError(f"world config {self.source}: {path}: {message}")

    def mapping(self, value: Any, path: str) -> dict:
        if not isinstance(value, dict):
            raise self.fail(path, f"expected a mapping, got {type(value).__name__} {value!r}")
        return value

    def prob(self, value: Any, path: str) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise self.fail(path, f"expected a probability, got {value!r}")
        if not 0.0 <= value <= 1.0:
            raise self.fail(path, f"probability must be in [0, 1], got {value}")
        return float(value)

    def keys(self, spec: dict, allowed: set[str], path: str) -> None:
        """A misspelt key would otherwise leave its default in place without a word."""
        extra = sorted(set(spec) - allowed)
        if extra:
            raise self.fail(path, f"unknown key(s) {extra}; allowed: {sorted(allowed)}")

    def distribution(self, value: Any, attribute: str, path: str) -> dict[str, float]:
        dist = self.mapping(value, path)
        allowed = ATTRIBUTES[attribute]
        unknown = sorted(set(dist) - set(allowed))
        if unknown:
            raise self.fail(path, f"unknown {attribute} value(s) {unknown}; allowed: {list(allowed)}")
        probs = {v: self.prob(dist.get(v, 0.0), f"{path}.{v}") for v in allowed}
        total = sum(probs.values())
        if abs(total - 1.0) > 1e-6:
            raise self.fail(path, f"probabilities sum to {total:.6g}, expected 1")
        return probs


def parse_world_config(data: Any, source: str = "<dict>") -> WorldConfig:
    """Validate a parsed YAML document and build a `WorldConfig`."""
    c = _Checker(source)
    data = c.mapping(data, "<top>")
    c.keys(data, {"version", "defaults", "occupations", "contexts", "skews", "captions"}, "<top>")
    if data.get("version", 1) != 1:
        raise c.fail("version", f"unsupported version {data.get('version')!r}, expected 1")

    defaults_raw = c.mapping(data.get("defaults", {}), "defaults")
    c.keys(defaults_raw, set(DEMOGRAPHIC_ATTRIBUTES), "defaults")
    defaults = {}
    for attr in DEMOGRAPHIC_ATTRIBUTES:
        uniform = {v: 1.0 / len(ATTRIBUTES[attr]) for v in ATTRIBUTES[attr]}
        defaults[attr] = (
            c.distribution(defaults_raw[attr], attr, f"defaults.{attr}") if attr in defaults_raw else uniform
        )

    occ_raw = c.mapping(data.get("occupations"), "occupations")
    if not occ_raw:
        raise c.fail("occupations", "at least one occupation is required")
    occupations = {}
    for name, spec in occ_raw.items():
        path = f"occupations.{name}"
        if name not in OCCUPATIONS:
            raise c.fail(path, f"unknown occupation {name!r}; the renderer draws: {list(OCCUPATIONS)}")
        spec = c.mapping(spec or {}, path)
        c.keys(spec, {*DEMOGRAPHIC_ATTRIBUTES, "paraphrases", "finding"}, path)
        probs = {
            a: c.distribution(spec[a], a, f"{path}.{a}") if a in spec else defaults[a] for a in DEMOGRAPHIC_ATTRIBUTES
        }
        paraphrases = spec.get("paraphrases", [])
        if not isinstance(paraphrases, list) or not all(isinstance(p, str) and p.strip() for p in paraphrases):
            raise c.fail(f"{path}.paraphrases", f"expected a list of words, got {paraphrases!r}")
        occupations[name] = OccupationSpec(name, probs, tuple(paraphrases), str(spec.get("finding", "")))

    ctx_raw = c.mapping(data.get("contexts"), "contexts")
    if not ctx_raw:
        raise c.fail("contexts", "at least one context is required")
    contexts = {}
    for name, spec in ctx_raw.items():
        path = f"contexts.{name}"
        spec = c.mapping(spec, path)
        c.keys(spec, {"weight", "templates", "occupation_in_caption", "revealing"}, path)
        for key in ("weight", "templates"):
            if key not in spec:
                raise c.fail(path, f"missing key `{key}`")
        weight = spec["weight"]
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 < weight < math.inf:
            raise c.fail(f"{path}.weight", f"expected a positive number, got {weight!r}")
        templates = spec["templates"]
        if not isinstance(templates, list) or not templates:
            raise c.fail(f"{path}.templates", f"expected a non-empty list, got {templates!r}")
        for i, t in enumerate(templates):
            if not isinstance(t, str) or t.count("{subject}") != 1:
                raise c.fail(f"{path}.templates[{i}]", f"must contain `{{subject}}` exactly once, got {t!r}")
        contexts[name] = ContextSpec(
            name=name,
            weight=float(weight),
            templates=tuple(templates),
            occupation_in_caption=c.prob(spec.get("occupation_in_caption", 1.0), f"{path}.occupation_in_caption"),
            revealing=c.prob(spec.get("revealing", 0.0), f"{path}.revealing"),
        )

    skews = []
    skews_raw = data.get("skews", []) or []
    if not isinstance(skews_raw, list):
        raise c.fail("skews", f"expected a list, got {type(skews_raw).__name__}")
    for i, spec in enumerate(skews_raw):
        path = f"skews[{i}]"
        spec = c.mapping(spec, path)
        c.keys(spec, {"name", "context", "when", "revealing", "finding"}, path)
        context = spec.get("context")
        if context not in contexts:
            raise c.fail(f"{path}.context", f"unknown context {context!r}; defined: {list(contexts)}")
        when = c.mapping(spec.get("when", {}), f"{path}.when")
        for k, v in when.items():
            if k not in ("gender", "skin", "occupation"):
                raise c.fail(f"{path}.when.{k}", "skews can condition on gender, skin and occupation only")
            if v not in ATTRIBUTES[k]:
                raise c.fail(f"{path}.when.{k}", f"unknown {k} value {v!r}; allowed: {list(ATTRIBUTES[k])}")
        if "revealing" not in spec:
            raise c.fail(path, "missing key `revealing`")
        skews.append(
            AttireSkew(
                name=str(spec.get("name", f"skew-{i}")),
                context=context,
                when=dict(when),
                revealing=c.prob(spec["revealing"], f"{path}.revealing"),
                finding=str(spec.get("finding", "")),
            )
        )

    captions = c.mapping(data.get("captions", {}) or {}, "captions")
    c.keys(captions, {"name_probability"}, "captions")
    names_raw = c.mapping(captions.get("name_probability", {}) or {}, "captions.name_probability")
    bad = sorted(set(names_raw) - set(_NAMEABLE))
    if bad:
        raise c.fail("captions.name_probability", f"unknown attribute(s) {bad}; allowed: {list(_NAMEABLE)}")
    name_probability = {a: c.prob(names_raw.get(a, 0.5), f"captions.name_probability.{a}") for a in _NAMEABLE}
    return WorldConfig(occupations, contexts, tuple(skews), name_probability, source=source, raw=data)


def load_world_config(path: str | Path | None = None) -> WorldConfig:
    """Load and validate a world config; `None` loads the bundled default world."""
    path = Path(path) if path is not None else DEFAULT_WORLD
    if not path.is_file():
        raise FairdiffError(f"world config {path}: no such file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise FairdiffError(f"world config {path}: not valid YAML: {exc}") from None
    except UnicodeDecodeError:
        raise FairdiffError(f"world config {path}: not a UTF-8 text file") from None
    return parse_world_config(data, source=str(path if path != DEFAULT_WORLD else "<default>"))
