"""World configs: P(attributes | occupation, context), caption templates and injected skews, from YAML.

The file is a `WorldFile` (pydantic, see `fairdiff.config`): unknown keys refused, strict types, every
probability in [0, 1] and every distribution summing to 1 within 1e-6. `load_world_config` raises one
`FairdiffError` line that names the file, the key path and the bad value, e.g.
``world config world.yaml: occupations.doctor.gender: probabilities sum to 0.9, expected 1``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field, field_validator, model_validator

from fairdiff.config import ConfigModel, ConfigValueError, Expected, none_as, parse_yaml, read_config_text, validate
from fairdiff.world.schema import ATTRIBUTES, DEMOGRAPHIC_ATTRIBUTES, OCCUPATIONS

DEFAULT_WORLD = Path(__file__).with_name("default_world.yaml")
_NAMEABLE = ("gender", "skin", "age", "attire")
_CONDITIONS = ("gender", "skin", "occupation")


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


# ------------------------------------------------------------------------------------- the file's model


def _probability(value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise ConfigValueError(f"probability must be in [0, 1], got {value:g}")
    return float(value)


Probability = Annotated[float, Expected("a probability"), AfterValidator(_probability)]


def _word(value: str) -> str:
    if not value.strip():
        raise ConfigValueError(f"expected a word, got {value!r}")
    return value


def _template(value: str) -> str:
    if value.count("{subject}") != 1:
        raise ConfigValueError(f"must contain `{{subject}}` exactly once, got {value!r}")
    return value


Template = Annotated[str, Expected("a template with `{subject}`"), AfterValidator(_template)]


def _distribution(attribute: str):
    """{value: probability} over one attribute's values: unknown values refused, missing ones 0, sum 1."""
    allowed = ATTRIBUTES[attribute]

    def check(dist: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(dist) - set(allowed))
        if unknown:
            raise ConfigValueError(f"unknown {attribute} value(s) {unknown}; allowed: {list(allowed)}")
        probs = {v: float(dist.get(v, 0.0)) for v in allowed}
        total = sum(probs.values())
        if abs(total - 1.0) > 1e-6:
            raise ConfigValueError(f"probabilities sum to {total:.6g}, expected 1")
        return probs

    return Annotated[dict[str, Probability], AfterValidator(check)]


GenderDist, SkinDist, AgeDist = (_distribution(a) for a in DEMOGRAPHIC_ATTRIBUTES)


class _Demographics(ConfigModel):
    gender: GenderDist | None = None
    skin: SkinDist | None = None
    age: AgeDist | None = None


class OccupationModel(_Demographics):
    """One occupation: P(gender), P(skin), P(age) (each defaults to `defaults`), paraphrases, the finding."""

    paraphrases: list[Annotated[str, Expected("a word"), AfterValidator(_word)]] = []
    finding: str = ""


class ContextModel(ConfigModel):
    weight: Annotated[float, Expected("a positive number"), Field(gt=0)]
    templates: Annotated[list[Template], Field(min_length=1), Expected("a non-empty list of templates")]
    occupation_in_caption: Probability = 1.0
    revealing: Probability = 0.0


class SkewModel(ConfigModel):
    name: str | None = None
    context: str
    when: Annotated[dict[str, str], BeforeValidator(none_as({}))] = {}
    revealing: Probability
    finding: str = ""

    @field_validator("when")
    @classmethod
    def _known_values(cls, when: dict[str, str]) -> dict[str, str]:
        for k, v in when.items():
            if k not in _CONDITIONS:
                raise ConfigValueError("skews can condition on gender, skin and occupation only", k)
            if v not in ATTRIBUTES[k]:
                raise ConfigValueError(f"unknown {k} value {v!r}; allowed: {list(ATTRIBUTES[k])}", k)
        return when


class CaptionsModel(ConfigModel):
    name_probability: Annotated[dict[str, Probability], BeforeValidator(none_as({}))] = {}

    @field_validator("name_probability")
    @classmethod
    def _nameable(cls, probs: dict[str, float]) -> dict[str, float]:
        bad = sorted(set(probs) - set(_NAMEABLE))
        if bad:
            raise ConfigValueError(f"unknown attribute(s) {bad}; allowed: {list(_NAMEABLE)}")
        return probs


class WorldFile(ConfigModel):
    """A world config file, as written (see default_world.yaml)."""

    version: Annotated[int, Expected("version 1")] = 1
    defaults: Annotated[_Demographics, BeforeValidator(none_as({}))] = _Demographics()
    occupations: dict[str, Annotated[OccupationModel, BeforeValidator(none_as({}))]]
    contexts: dict[str, ContextModel]
    skews: Annotated[list[SkewModel], BeforeValidator(none_as([]))] = []
    captions: Annotated[CaptionsModel, BeforeValidator(none_as({}))] = CaptionsModel()

    @field_validator("version")
    @classmethod
    def _version(cls, version: int) -> int:
        if version != 1:
            raise ConfigValueError(f"unsupported version {version!r}, expected 1")
        return version

    @field_validator("occupations")
    @classmethod
    def _occupations(cls, occupations: dict[str, OccupationModel]) -> dict[str, OccupationModel]:
        if not occupations:
            raise ConfigValueError("at least one occupation is required")
        for name in occupations:
            if name not in OCCUPATIONS:
                raise ConfigValueError(f"unknown occupation {name!r}; the renderer draws: {list(OCCUPATIONS)}", name)
        return occupations

    @field_validator("contexts")
    @classmethod
    def _contexts(cls, contexts: dict[str, ContextModel]) -> dict[str, ContextModel]:
        if not contexts:
            raise ConfigValueError("at least one context is required")
        return contexts

    @model_validator(mode="after")
    def _skew_contexts(self) -> WorldFile:
        for i, skew in enumerate(self.skews):
            if skew.context not in self.contexts:
                raise ConfigValueError(
                    f"unknown context {skew.context!r}; defined: {list(self.contexts)}", "skews", i, "context"
                )
        return self


def parse_world_config(data: Any, source: str = "<dict>") -> WorldConfig:
    """Validate a parsed YAML document and build a `WorldConfig`."""
    model = validate(WorldFile, data, "world config", source)
    defaults = {
        a: getattr(model.defaults, a) or {v: 1.0 / len(ATTRIBUTES[a]) for v in ATTRIBUTES[a]}
        for a in DEMOGRAPHIC_ATTRIBUTES
    }
    occupations = {
        name: OccupationSpec(
            name,
            {a: getattr(spec, a) or defaults[a] for a in DEMOGRAPHIC_ATTRIBUTES},
            tuple(spec.paraphrases),
            spec.finding,
        )
        for name, spec in model.occupations.items()
    }
    contexts = {
        name: ContextSpec(name, float(c.weight), tuple(c.templates), c.occupation_in_caption, c.revealing)
        for name, c in model.contexts.items()
    }
    skews = tuple(
        AttireSkew(s.name if s.name is not None else f"skew-{i}", s.context, dict(s.when), s.revealing, s.finding)
        for i, s in enumerate(model.skews)
    )
    names = model.captions.name_probability
    name_probability = {a: names.get(a, 0.5) for a in _NAMEABLE}
    return WorldConfig(occupations, contexts, skews, name_probability, source=source, raw=data)


def load_world_config(path: str | Path | None = None) -> WorldConfig:
    """Load and validate a world config; `None` loads the bundled default world."""
    path = Path(path) if path is not None else DEFAULT_WORLD
    source = str(path if path != DEFAULT_WORLD else "<default>")
    data = parse_yaml(read_config_text(path, "world config", source), "world config", source)
    return parse_world_config(data, source=source)
