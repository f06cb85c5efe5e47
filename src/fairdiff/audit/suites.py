"""Audit suites: which prompts an audit draws, what it measures on them, and against which target.

A suite is YAML (built-ins in `fairdiff/data/`, or any file). Prompts are templates x the product of `values`:

    name: occupations
    kind: shares                 # shares: attribute shares vs a target; outcome: an outcome's rate per group
    templates: [{text: "a photo of the face of a {occupation}", context: photo}]
    measure: [gender, skin]      # kind shares: attributes whose shares are measured
    target: {gender: {man: 0.5, woman: 0.5}}   # any q per attribute; uniform where not given
    values: {occupation: [doctor, {value: physician, of: doctor}]}

`kind: outcome` names an `outcome` (e.g. revealing) and the `groups` the prompts mark ({gender} x {ethnicity}).
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
from typing import Any

import yaml

from fairdiff.audit.arms import SAFE_NAME
from fairdiff.errors import FairdiffError
from fairdiff.files import slug

BUILTIN_SUITES = ("occupations", "avatars", "paraphrases", "world-occupations", "world-avatars", "world-paraphrases")
KINDS = ("shares", "outcome")
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


class _Checker:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, path: str, message: str) -> FairdiffError:
        return FairdiffError(f"suite {self.source}: {path}: {message}")

    def mapping(self, value: Any, path: str) -> dict:
        if not isinstance(value, dict):
            raise self.fail(path, f"expected a mapping, got {type(value).__name__} {value!r}")
        return value

    def strings(self, value: Any, path: str) -> list[str]:
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise self.fail(path, f"expected a list of names, got {value!r}")
        return list(value)


def _world_words() -> dict[str, dict[str, str]]:
    from fairdiff.world.schema import OCCUPATION_WORDS, SKIN_WORDS

    return {"skin": SKIN_WORDS, "occupation": OCCUPATION_WORDS}


def parse_suite(data: Any, source: str = "<dict>", world_config=None) -> Suite:
    """Validate a suite mapping and expand its prompts. `world_config` supplies truth for `world: true` suites."""
    c = _Checker(source)
    data = c.mapping(data, "<top>")
    known = {
        "name",
        "description",
        "kind",
        "templates",
        "measure",
        "target",
        "intersections",
        "outcome",
        "groups",
        "images_per_prompt",
        "values",
        "world",
    }
    unknown = sorted(set(data) - known)
    if unknown:
        raise c.fail(unknown[0], f"unknown key (allowed: {', '.join(sorted(known))})")
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise c.fail("name", f"expected a non-empty string, got {name!r}")
    if not SAFE_NAME.match(name):
        raise c.fail("name", f"names folders of the run dir: letters, digits and _ . + - only, got {name!r}")
    kind = data.get("kind", "shares")
    if kind not in KINDS:
        raise c.fail("kind", f"must be one of {', '.join(KINDS)}, got {kind!r}")
    world = data.get("world", False)
    if not isinstance(world, bool):
        raise c.fail("world", f"must be true or false, got {world!r}")
    n = data.get("images_per_prompt", 20)
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise c.fail("images_per_prompt", f"must be an integer >= 1, got {n!r}")

    templates = data.get("templates")
    if not isinstance(templates, list) or not templates:
        raise c.fail("templates", "expected a non-empty list of {text, context}")
    tpls: list[tuple[str, str]] = []
    for i, t in enumerate(templates):
        t = {"text": t} if isinstance(t, str) else c.mapping(t, f"templates[{i}]")
        text = t.get("text")
        if not isinstance(text, str) or not _FIELD.search(text):
            raise c.fail(f"templates[{i}].text", f"expected a string with a {{field}}, got {text!r}")
        tpls.append((text, str(t.get("context", ""))))

    values = c.mapping(data.get("values"), "values")
    fields_used = {f for text, _ in tpls for f in _FIELD.findall(text)}
    missing = sorted(fields_used - set(values))
    if missing:
        raise c.fail("values", f"no values for template field {missing[0]!r}")
    options: dict[str, list[dict[str, str]]] = {}
    for key in sorted(fields_used):
        raw = values[key]
        if not isinstance(raw, list) or not raw:
            raise c.fail(f"values.{key}", f"expected a non-empty list, got {raw!r}")
        entries = []
        for j, v in enumerate(raw):
            if isinstance(v, str) and v:
                entries.append({"value": v})
            elif isinstance(v, dict) and isinstance(v.get("value"), str) and v["value"]:
                entries.append({k: str(x) for k, x in v.items()})
            else:
                raise c.fail(f"values.{key}[{j}]", f"expected a name or {{value, ...}}, got {v!r}")
        options[key] = entries

    measure = c.strings(data.get("measure", []), "measure")
    groups = c.strings(data.get("groups", []), "groups")
    outcome = data.get("outcome")
    if kind == "shares" and not measure:
        raise c.fail("measure", "a `kind: shares` suite needs the attributes to measure")
    if kind == "outcome":
        if not isinstance(outcome, str) or not outcome:
            raise c.fail("outcome", f"a `kind: outcome` suite needs an outcome name, got {outcome!r}")
        if not groups or any(g not in fields_used for g in groups):
            raise c.fail("groups", f"must name template fields ({', '.join(sorted(fields_used))}), got {groups!r}")
    intersections = []
    for i, t in enumerate(data.get("intersections", []) or []):
        names = c.strings(t, f"intersections[{i}]")
        if len(names) < 2 or any(a not in measure for a in names):
            raise c.fail(f"intersections[{i}]", f"needs >= 2 measured attributes, got {names!r}")
        intersections.append(tuple(names))
    target = {}
    for attr, mix in c.mapping(data.get("target", {}) or {}, "target").items():
        mix = c.mapping(mix, f"target.{attr}")
        if attr not in measure:
            raise c.fail(f"target.{attr}", f"is not a measured attribute ({', '.join(measure)})")
        bad = [
            v
            for v in mix.values()
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0
        ]
        if bad:
            raise c.fail(f"target.{attr}", f"shares must be numbers >= 0, got {bad[0]!r}")
        total = sum(mix.values())
        if abs(total - 1.0) > 1e-6:
            raise c.fail(f"target.{attr}", f"shares sum to {total:g}, expected 1")
        target[attr] = {str(k): float(v) for k, v in mix.items()}

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
                raise c.fail("values", f"two prompts get the same id {pid!r}")
            seen.add(pid)
            truth = _world_truth(world_config, kind, fields, context, measure, intersections) if world else None
            prompts.append(SuitePrompt(pid, prompt_text, fields, context, truth))
    return Suite(
        name=name,
        kind=kind,
        prompts=prompts,
        measure=measure,
        target=target,
        intersections=intersections,
        outcome=outcome,
        groups=groups,
        images_per_prompt=n,
        world=world,
        description=str(data.get("description", "")),
        source=source,
    )


def _world_truth(
    world_config, kind: str, fields: dict[str, str], context: str, measure: list[str], intersections=()
) -> dict:
    """The world's true shares behind a prompt: P(attribute | occupation, context), or P(revealing | group).
    The world draws gender, skin and age independently given the occupation, so an intersection's truth is
    the product of its parts'."""
    from fairdiff.world.config import load_world_config

    world_config = world_config or load_world_config()
    if kind == "outcome":
        if context not in world_config.contexts:
            raise FairdiffError(f"world suite: context {context!r} is not in the world config")
        p = _revealing_given(world_config, context, fields)
        return {"attire": {"covered": 1.0 - p, "revealing": p}}
    occupation = fields.get("of", fields.get("occupation"))
    if occupation not in world_config.occupations:
        raise FairdiffError(f"world suite: occupation {occupation!r} is not in the world config")
    if context not in world_config.contexts:
        raise FairdiffError(f"world suite: context {context!r} is not in the world config")
    shares = world_config.expected_shares(occupation, context)
    truth = {a: shares[a] for a in measure if a in shares}
    for parts in intersections:
        if all(a in truth for a in parts):
            joint = {"": 1.0}
            for a in parts:
                joint = {f"{k}×{c}" if k else c: p * q for k, p in joint.items() for c, q in truth[a].items()}
            truth["×".join(parts)] = joint
    return truth


def _revealing_given(world_config, context: str, fields: dict[str, str]) -> float:
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
        raise FairdiffError(f"world suite: no portrait in the world matches {fields}")
    return total / weight


def load_suite(name_or_path: str | Path, world_config=None) -> Suite:
    """A built-in suite by name (see BUILTIN_SUITES) or a YAML file."""
    text = str(name_or_path)
    if text in BUILTIN_SUITES:
        source = f"{text} (built-in)"
        raw = resources.files("fairdiff.data").joinpath(f"{text}.yaml").read_text()
    else:
        path = Path(text)
        if not path.is_file():
            raise FairdiffError(f"suite {text!r}: not a built-in suite ({', '.join(BUILTIN_SUITES)}) nor a file")
        source, raw = str(path), path.read_text()
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise FairdiffError(f"suite {source}: not valid YAML ({exc})") from None
    return parse_suite(data, source, world_config)
