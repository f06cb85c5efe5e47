"""Audit suites: which prompts an audit draws, what it measures on them, and against which target.

A suite is YAML (built-ins in `fairdiff/data/`, or any file). Prompts are templates x the product of `values`:

    name: occupations
    kind: shares                 # shares: attribute shares vs a target; outcome: an outcome's rate per group
    templates: [{text: "a photo of the face of a {occupation}", context: photo}]
    measure: [gender, skin]      # kind shares: attributes whose shares are measured
    target: {gender: {man: 0.5, woman: 0.5}}   # any q per attribute; uniform where not given
    values: {occupation: [doctor, {value: physician, of: doctor}]}

`kind: outcome` names an `outcome` (e.g. revealing) and the `groups` the prompts mark ({gender} x {ethnicity}).
`kind: group` suites hold group prompts ("a photo of five doctors"); their `scene` block says how the rules planner
lays out each image (`scene: {people: 5, mix: [skin=uniform], diversify: auto, canvas: [160, 32]}`, every key
optional: people when the prompt names no count, the mix the planned layout is measured against, default
gender=uniform and skin=uniform; the canvas, default 32 px per person in a row). Every arm draws a group prompt on
its layout's canvas and is measured per person on the box crops (adherence, mix error: audit/arms_scene.py); a
planner arm draws its own layout, the other arms the plain prompt, measured against the layout the planner would
have made.
`world: true` suites use the portrait world's vocabulary (skin "dark" is written "dark-skinned") and carry the
world config's ground truth per prompt, so an audit can check its own numbers against what was injected.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, ConfigDict, Field, model_validator

from fairdiff.checks import MAX_IMAGES_PER_PROMPT
from fairdiff.config import (
    ConfigModel,
    ConfigValueError,
    Expected,
    NonEmptyStr,
    SafeName,
    describe_value,
    none_as,
    parse_yaml,
    read_config_text,
    validate,
)
from fairdiff.errors import FairdiffError
from fairdiff.files import slug

BUILTIN_SUITES = (
    "occupations",
    "avatars",
    "paraphrases",
    "world-occupations",
    "world-avatars",
    "world-paraphrases",
    # mitigations: world-train to train on, the others to evaluate on (no prompt text in common with world-train)
    "world-train",
    "world-heldout",
    "world-heldout-paraphrases",
    "world-explicit",
    "world-avatars-negative",
    "world-groups",  # group prompts for the planner arm (kind: group)
)
KINDS = ("shares", "outcome", "group")
MAX_PROMPTS = 100_000
_FIELD = re.compile(r"\{(\w+)\}")


@dataclass(frozen=True)
class SuitePrompt:
    """One prompt of a suite: its stable id, text, the field values it was built from and the template context."""

    id: str
    text: str
    fields: dict[str, str]  # field -> value (e.g. {"gender": "woman", "skin": "medium"}); `of` for paraphrases
    context: str = ""
    truth: dict[str, dict[str, float]] | None = None  # world suites: attribute -> class -> true share


@dataclass
class Suite:
    name: str
    kind: str
    prompts: list[SuitePrompt]
    measure: list[str] = field(default_factory=list)
    target: dict[str, dict[str, float]] = field(default_factory=dict)
    intersections: list[tuple[str, ...]] = field(default_factory=list)
    outcome: str | None = None
    groups: list[str] = field(default_factory=list)
    images_per_prompt: int = 20
    world: bool = False
    description: str = ""
    source: str = ""
    scene: dict | None = None  # kind group: the scene block (SceneModel.model_dump())

    def spec(self) -> dict:
        """What a run dir records about the suite (enough to rebuild its prompts)."""
        return {
            "name": self.name,
            "kind": self.kind,
            "source": self.source,
            "measure": self.measure,
            "target": self.target,
            "intersections": [list(t) for t in self.intersections],
            "outcome": self.outcome,
            "groups": self.groups,
            "world": self.world,
            **({"scene": self.scene} if self.scene is not None else {}),
            "prompts": [{"id": p.id, "text": p.text, "fields": p.fields, "context": p.context} for p in self.prompts],
        }


def _fix_articles(template: str, words: dict[str, str]) -> str:
    """Format `template`, turning "a {x}" into "an {x}" (and back) by the word that lands there."""
    parts = _FIELD.split(template)  # text, field, text, field, ...
    out = parts[0]
    for i in range(1, len(parts), 2):
        word = words[parts[i]]
        m = re.search(r"(^|\s)(an?|An?) $", out)
        if m:
            art = "an" if word[:1].lower() in "aeiou" else "a"
            art = art.capitalize() if m.group(2)[0] == "A" else art
            out = out[: m.start(2)] + art + " "
        out += word + parts[i + 1]
    return out


def _has_field(text: str) -> str:
    if not _FIELD.search(text):
        raise ConfigValueError(f"expected a string with a {{field}}, got {text!r}")
    return text


class TemplateModel(ConfigModel):
    """A prompt template: text with `{field}`s, and the context it stands for (photo, avatar, ...)."""

    text: Annotated[str, Expected("a string with a {field}"), AfterValidator(_has_field)]
    context: str = ""


class ValueEntry(ConfigModel):
    """One value of a template field; other keys (`of: doctor`) become fields of the prompts it makes."""

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, str] = Field(init=False)

    value: NonEmptyStr
    word: str | None = None  # how the prompt says it, if not `value`


def _template_item(value: Any) -> Any:
    return {"text": value} if isinstance(value, str) else value


def _entry_item(value: Any) -> Any:
    return {"value": value} if isinstance(value, str) and value else value


Names = Annotated[list[NonEmptyStr], Expected("a list of names"), BeforeValidator(none_as([]))]


def _scene_mix(items: list[str]) -> list[str]:
    from fairdiff.mix import parse_mix
    from fairdiff.world.schema import ATTRIBUTES, DEMOGRAPHIC_ATTRIBUTES

    try:  # the attributes a group image is judged on (audit/arms_scene.py)
        parse_mix(items, {a: ATTRIBUTES[a] for a in DEMOGRAPHIC_ATTRIBUTES})
    except FairdiffError as exc:
        raise ConfigValueError(str(exc).removeprefix("--")) from None
    return items


def _canvas(size: tuple[int, int]) -> tuple[int, int]:
    if any(v % 8 for v in size):
        raise ConfigValueError(f"expected width and height that are multiples of 8 pixels, got {list(size)}")
    return size


class SceneModel(ConfigModel):
    """How the rules planner lays out a group suite's images (see the module docstring)."""

    people: Annotated[int, Expected("a whole number of people from 1 to 64"), Field(ge=1, le=64)] | None = None
    mix: (
        Annotated[
            list[Annotated[str, Expected("ATTRIBUTE=uniform or ATTRIBUTE=VALUE:WEIGHT,...")]],
            Expected("a list of ATTRIBUTE=uniform | ATTRIBUTE=VALUE:WEIGHT,... items"),
            AfterValidator(_scene_mix),
        ]
        | None
    ) = None
    diversify: Annotated[Literal["auto", "on", "off"], Expected("one of auto, on, off")] = "auto"
    canvas: (
        Annotated[
            tuple[
                Annotated[int, Expected("pixels from 8 to 8192"), Field(ge=8, le=8192)],
                Annotated[int, Expected("pixels from 8 to 8192"), Field(ge=8, le=8192)],
            ],
            Expected("[width, height] in pixels"),
            BeforeValidator(lambda v: tuple(v) if isinstance(v, list) and len(v) == 2 else v),  # YAML has no tuples
            AfterValidator(_canvas),
        ]
        | None
    ) = None


Share = Annotated[float, Expected("shares must be numbers >= 0", phrase=True), Field(ge=0)]


class SuiteFile(ConfigModel):
    """A suite file, as written (see the module docstring and src/fairdiff/data/*.yaml)."""

    name: SafeName
    description: str = ""
    kind: Literal["shares", "outcome", "group"] = "shares"
    world: Annotated[bool, Expected("true or false")] = False
    images_per_prompt: Annotated[
        int, Expected(f"an integer from 1 to {MAX_IMAGES_PER_PROMPT}"), Field(ge=1, le=MAX_IMAGES_PER_PROMPT)
    ] = 20
    templates: Annotated[
        list[
            Annotated[TemplateModel, Expected("a template string or {text, context}"), BeforeValidator(_template_item)]
        ],
        Expected("a non-empty list of {text, context}"),
        Field(min_length=1),
    ]
    values: dict[
        str,
        Annotated[
            list[Annotated[ValueEntry, Expected("a name or {value, ...}"), BeforeValidator(_entry_item)]],
            Expected("a non-empty list"),
            Field(min_length=1),
        ],
    ]
    measure: Names = []
    groups: Names = []
    outcome: str | None = None
    intersections: Annotated[list[Names], BeforeValidator(none_as([]))] = []
    target: Annotated[dict[str, dict[str, Share]], BeforeValidator(none_as({}))] = {}
    scene: SceneModel | None = None

    @property
    def fields_used(self) -> set[str]:
        return {f for t in self.templates for f in _FIELD.findall(t.text)}

    @model_validator(mode="after")
    def _consistent(self) -> SuiteFile:
        used = self.fields_used
        missing = sorted(used - set(self.values))
        if missing:
            raise ConfigValueError(f"no values for template field {missing[0]!r}", "values")
        if (self.kind == "group") != (self.scene is not None):
            raise ConfigValueError("a `kind: group` suite (and only one) has a scene block", "scene")
        if self.kind == "group" and (self.measure or self.target or self.world):
            raise ConfigValueError("a `kind: group` suite is measured per person (no measure, target or world)", "kind")
        if self.kind == "shares" and not self.measure:
            raise ConfigValueError("a `kind: shares` suite needs the attributes to measure", "measure")
        if self.kind == "outcome":
            if not self.outcome:
                got = describe_value(self.outcome)
                raise ConfigValueError(f"a `kind: outcome` suite needs an outcome name, got {got}", "outcome")
            if not self.groups or any(g not in used for g in self.groups):
                raise ConfigValueError(
                    f"must name template fields ({', '.join(sorted(used))}), got {self.groups!r}", "groups"
                )
        for i, names in enumerate(self.intersections):
            if len(names) < 2 or any(a not in self.measure for a in names):
                raise ConfigValueError(f"needs >= 2 measured attributes, got {names!r}", "intersections", i)
        for attr, mix in self.target.items():
            if attr not in self.measure:
                raise ConfigValueError(f"is not a measured attribute ({', '.join(self.measure)})", "target", attr)
            total = math.fsum(mix.values())
            if abs(total - 1.0) > 1e-6:
                raise ConfigValueError(f"shares sum to {total:g}, expected 1", "target", attr)
        n = sum(math.prod(len(self.values[f]) for f in set(_FIELD.findall(t.text))) for t in self.templates)
        if n > MAX_PROMPTS:
            raise ConfigValueError(f"the templates and values make {n} prompts, more than {MAX_PROMPTS}", "values")
        return self


def _world_words() -> dict[str, dict[str, str]]:
    from fairdiff.world.schema import OCCUPATION_WORDS, SKIN_WORDS

    return {"skin": SKIN_WORDS, "occupation": OCCUPATION_WORDS}


def parse_suite(data: Any, source: str = "<dict>", world_config=None) -> Suite:
    """Validate a suite mapping and expand its prompts. `world_config` supplies truth for `world: true` suites."""
    model = validate(SuiteFile, data, "suite", source)
    kind, world, measure = model.kind, model.world, list(model.measure)
    intersections = [tuple(names) for names in model.intersections]
    target = {attr: {k: float(v) for k, v in mix.items()} for attr, mix in model.target.items()}
    tpls = [(t.text, t.context) for t in model.templates]
    fields_used = model.fields_used
    options = {
        key: [{"value": e.value, **({"word": e.word} if e.word else {}), **(e.model_extra or {})} for e in entries]
        for key, entries in model.values.items()
        if key in fields_used
    }

    words = _world_words() if world else {}
    prompts: list[SuitePrompt] = []
    seen: set[str] = set()
    keys = sorted(fields_used)
    for ti, (text, context) in enumerate(tpls):
        tkeys = [k for k in keys if k in _FIELD.findall(text)]
        for combo in itertools.product(*(options[k] for k in tkeys)):
            chosen = dict(zip(tkeys, combo, strict=True))
            fields = {k: e["value"] for k, e in chosen.items()}
            for e in chosen.values():
                fields.update({k: v for k, v in e.items() if k not in ("value", "word")})
            said = {k: e.get("word") or words.get(k, {}).get(e["value"], e["value"]) for k, e in chosen.items()}
            prompt_text = _fix_articles(text, said)
            pid = slug("-".join(fields[k] for k in tkeys), allowed="a-z0-9", lower=True) + (
                f"-t{ti}" if len(tpls) > 1 else ""
            )
            if pid in seen:
                raise FairdiffError(f"suite {source}: values: two prompts get the same id {pid!r}")
            seen.add(pid)
            truth = _world_truth(world_config, kind, fields, context, measure, intersections, source) if world else None
            prompts.append(SuitePrompt(pid, prompt_text, fields, context, truth))
    return Suite(
        name=model.name,
        kind=kind,
        prompts=prompts,
        measure=measure,
        target=target,
        intersections=intersections,
        outcome=model.outcome,
        groups=list(model.groups),
        images_per_prompt=model.images_per_prompt,
        world=world,
        description=model.description,
        source=source,
        scene=model.scene.model_dump(mode="json") if model.scene is not None else None,
    )


def _world_truth(
    world_config,
    kind: str,
    fields: dict[str, str],
    context: str,
    measure: list[str],
    intersections=(),
    source: str = "<dict>",
) -> dict:
    """The world's true shares behind a prompt: P(attribute | occupation, context), or P(revealing | group).
    The world draws gender, skin and age independently given the occupation, so an intersection's truth is
    the product of its parts'. An attribute the prompt states (a `gender: woman` field) is true with share 1."""
    from fairdiff.world.config import load_world_config

    world_config = world_config or load_world_config()
    if kind == "outcome":
        if context not in world_config.contexts:
            raise FairdiffError(f"suite {source}: templates: context {context!r} is not in the world config")
        p = _revealing_given(world_config, context, fields, source)
        return {"attire": {"covered": 1.0 - p, "revealing": p}}
    occupation = fields.get("of", fields.get("occupation"))
    if occupation not in world_config.occupations:
        raise FairdiffError(f"suite {source}: values: occupation {occupation!r} is not in the world config")
    if context not in world_config.contexts:
        raise FairdiffError(f"suite {source}: templates: context {context!r} is not in the world config")
    shares = world_config.expected_shares(occupation, context)
    truth = {a: shares[a] for a in measure if a in shares}
    for a in truth:  # an attribute the prompt states ("a dark-skinned woman doctor"): the world's captions are true
        if fields.get(a) in truth[a]:
            truth[a] = {c: float(c == fields[a]) for c in truth[a]}
    for parts in intersections:
        if all(a in truth for a in parts):
            joint = {"": 1.0}
            for a in parts:
                joint = {f"{k}×{c}" if k else c: p * q for k, p in joint.items() for c, q in truth[a].items()}
            truth["×".join(parts)] = joint
    return truth


def _revealing_given(world_config, context: str, fields: dict[str, str], source: str = "<dict>") -> float:
    """P(revealing | context, the attributes the prompt names): the world's P(revealing | context, gender, skin,
    occupation) averaged over what the prompt leaves open, weighted as the world draws it (occupation uniform,
    then gender and skin given the occupation)."""
    from fairdiff.world.schema import GENDERS, SKINS

    total = weight = 0.0
    for occupation, spec in world_config.occupations.items():
        for g in GENDERS:
            for s in SKINS:
                attrs = {"gender": g, "skin": s, "occupation": occupation}
                if any(attrs.get(k, v) != v for k, v in fields.items()):
                    continue
                w = spec.probs["gender"][g] * spec.probs["skin"][s]
                total += w * world_config.p_revealing(context, attrs)
                weight += w
    if weight == 0:
        raise FairdiffError(f"suite {source}: no portrait in the world matches {fields}")
    return total / weight


def load_suite(name_or_path: str | Path, world_config=None) -> Suite:
    """A built-in suite by name (see BUILTIN_SUITES) or a YAML file."""
    text = str(name_or_path)
    if text in BUILTIN_SUITES:
        source = f"{text} (built-in)"
        raw = resources.files("fairdiff.data").joinpath(f"{text}.yaml").read_text(encoding="utf-8")
    else:
        path = Path(text)
        if not path.exists():
            raise FairdiffError(f"suite {text!r}: not a built-in suite ({', '.join(BUILTIN_SUITES)}) nor a file")
        source = str(path)
        raw = read_config_text(path, "suite", source)
    return parse_suite(parse_yaml(raw, "suite", source), source, world_config)
