"""Read an audit run dir back: per-image rows as a DataFrame, metrics per suite and arm, exports.

Labels are the detector's argmax per attribute (the metrics count images assigned to each class); each row
keeps the full probabilities too. Group-scene images (audit/arms_scene.py) add `adherence`, `people_judged`,
`people_as_planned`, `mix_error`, `mix_error_<attribute>`, `planned_by` and `scene_people` (JSON: per person the
box, planned and detected attributes). Metrics are recomputed from the stored probabilities on every read, so a
report of a resumed or merged run always matches its store.
"""

from __future__ import annotations

import itertools
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fairdiff.audit.runner import CONFIG_NAME
from fairdiff.audit.store import SCHEMA_VERSION, read_rows
from fairdiff.errors import FairdiffError
from fairdiff.metrics.quality import valid_images

logger = logging.getLogger(__name__)


class _Record(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class _Arm(_Record):
    name: str
    kind: str


class _Accuracy(_Record):
    accuracy: float | None = None
    n: int | None = None
    on: str = "labelled images"


class _Detector(_Record):
    name: str = "detector"
    classes: dict[str, list[str]]
    outcomes: dict[str, str] | None = None
    accuracy: dict[str, _Accuracy] | None = None


class _Prompt(_Record):
    id: str
    text: str = ""
    fields: dict[str, str | int | float | bool | None] = Field(default_factory=dict)


class _Suite(_Record):
    name: str
    kind: str
    prompts: list[_Prompt]
    measure: list[str]
    target: dict[str, dict[str, float]] = Field(default_factory=dict)
    intersections: list[list[str]] = Field(default_factory=list)
    outcome: str | None
    groups: list[str]
    world: bool = False


class RunRecord(_Record):
    """The parts of audit.json that readers (results, summary, report) use, with their types; checked on read so
    a damaged or hand-edited record is one error naming the key, not a traceback deep in a report."""

    store_schema: int
    arms: list[_Arm]
    detector: _Detector
    suites: list[_Suite]
    truth: dict[str, dict[str, dict[str, dict[str, float]]]] = Field(default_factory=dict)
    model: dict[str, str | int | float | bool | None] = Field(default_factory=dict)
    config: dict = Field(default_factory=dict)


def check_record(record, config: Path) -> None:
    """Raise a FairdiffError naming the first key of `record` (audit.json) that is missing or of the wrong type."""
    if not isinstance(record, dict):
        raise FairdiffError(f"{config}: expected a JSON object, got {type(record).__name__}")
    if record.get("store_schema") != SCHEMA_VERSION:
        versions = record.get("versions")
        version = versions.get("fairdiff", "?") if isinstance(versions, dict) else "?"
        raise FairdiffError(
            f"{config.parent} was written by fairdiff {version} (store schema {record.get('store_schema')!r}); "
            f"this fairdiff reads schema {SCHEMA_VERSION}"
        )
    try:
        parsed = RunRecord.model_validate(record)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(map(str, err["loc"])) or "(top)"
        raise FairdiffError(f"{config}: {where}: {err['msg'].lower()}, got {err.get('input')!r:.60}") from None
    d = parsed.detector
    for attribute, classes in d.classes.items():
        if not classes or len(set(classes)) != len(classes):
            raise FairdiffError(f"{config}: detector.classes.{attribute}: expected distinct class names, got {classes}")
    for name, rule in (d.outcomes or {}).items():
        attribute, sep, cls = rule.partition("=")
        if not sep or "=" in cls or not attribute:
            raise FairdiffError(f"{config}: detector.outcomes.{name}: expected ATTRIBUTE=CLASS, got {rule!r}")
    for suite, prompts in parsed.truth.items():
        for prompt, attributes in prompts.items():
            for attribute, shares in attributes.items():
                parts = attribute.split("×")
                if not all(p in d.classes for p in parts):
                    raise FairdiffError(f"{config}: truth.{suite}.{prompt}: {attribute!r} is not a detector attribute")
                expected = {"×".join(c) for c in itertools.product(*(d.classes[p] for p in parts))}
                if set(shares) != expected:
                    raise FairdiffError(
                        f"{config}: truth.{suite}.{prompt}.{attribute}: expected shares of {sorted(expected)}, "
                        f"got {sorted(shares)}"
                    )
    for suite in parsed.suites:
        if suite.kind == "outcome" and (suite.outcome is None or not suite.groups):
            raise FairdiffError(f"{config}: suites: outcome suite {suite.name!r} names no outcome or no groups")
        rules = d.outcomes or {"revealing": "attire=revealing"}
        if suite.kind == "outcome" and suite.outcome not in rules:
            raise FairdiffError(f"{config}: suite {suite.name!r}: outcome {suite.outcome!r} has no detector rule")
        truth = parsed.truth.get(suite.name)
        if not truth:  # a suite without ground truth (not a world suite) records {}
            continue
        needed = [rules[suite.outcome].partition("=")[0]] if suite.kind == "outcome" else []
        for prompt in suite.prompts:
            if prompt.id not in truth or any(a not in truth[prompt.id] for a in needed):
                raise FairdiffError(f"{config}: truth.{suite.name}.{prompt.id}: missing (or without {needed})")
    kinds = {s.kind for s in parsed.suites} - {"shares", "outcome", "group"}
    if kinds:
        raise FairdiffError(f"{config}: suites: unknown kind(s) {sorted(kinds)}; expected shares, outcome or group")


@dataclass
class RunResults:
    run_dir: Path
    record: dict  # audit.json
    rows: pd.DataFrame  # one row per image
    suites: dict[str, dict] = field(default_factory=dict)  # suite name -> its spec in the record

    @property
    def arms(self) -> list[str]:
        return [a["name"] for a in self.record["arms"]]

    @property
    def classes(self) -> dict[str, list[str]]:
        return self.record["detector"]["classes"]


def load_run(run_dir: str | Path) -> RunResults:
    """Rows and record of an audit run dir (all rank shards unioned)."""
    run_dir = Path(run_dir)
    config = run_dir / CONFIG_NAME
    if not config.is_file():
        raise FairdiffError(f"{run_dir}: not an audit run dir (no {CONFIG_NAME})")
    try:
        record = json.loads(config.read_bytes())
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise FairdiffError(f"{config}: unreadable ({exc})") from None
    check_record(record, config)
    suites = {s["name"]: s for s in record["suites"]}
    stored = read_rows(run_dir)
    prompts = {(s, p["id"]) for s, spec in suites.items() for p in spec["prompts"]}
    arms = {a["name"] for a in record["arms"]}
    for r in stored:
        if (r.suite, r.prompt_id) not in prompts or r.arm not in arms:
            raise FairdiffError(
                f"{run_dir}: stored image {r.job_key!r} is of a suite, prompt or arm "
                f"({r.suite}, {r.prompt_id}, {r.arm}) that {CONFIG_NAME} does not list"
            )
    rows = rows_frame(stored, record, suites)
    return RunResults(run_dir, record, rows, suites)


SCENE_COLUMNS = ("planned_by", "adherence", "people_judged", "people_as_planned", "mix_error")


def scene_columns(job_key: str, scene: dict) -> dict:
    """The row columns of one stored scene record (see the module docstring); a damaged record is one error."""
    try:
        out = {c: scene[c] for c in SCENE_COLUMNS}
        out |= {f"mix_error_{a}": float(v) for a, v in scene["mix_error_by_attribute"].items()}
        people = [{k: p[k] for k in ("id", "box", "planned", "detected", "as_planned")} for p in scene["people"]]
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise FairdiffError(f"run dir: job {job_key!r}: damaged scene record ({type(exc).__name__}: {exc})") from None
    for c in ("adherence", "mix_error"):
        if out[c] is not None and not isinstance(out[c], int | float):
            raise FairdiffError(f"run dir: job {job_key!r}: scene record {c} is {out[c]!r}, not a number")
    out["adherence"] = np.nan if out["adherence"] is None else float(out["adherence"])
    out["mix_error"] = np.nan if out["mix_error"] is None else float(out["mix_error"])
    out["scene_people"] = json.dumps(people, separators=(",", ":"))
    return out


def rows_frame(rows, record: dict, suites: dict[str, dict]) -> pd.DataFrame:
    """One row per image: ids, prompt fields, label + confidence per attribute, outcomes, probabilities."""
    classes = record["detector"]["classes"]
    outcomes = record["detector"].get("outcomes", {"revealing": "attire=revealing"})
    fields = {(s, p["id"]): p["fields"] for s, spec in suites.items() for p in spec["prompts"]}
    out = []
    for r in rows:
        d = {
            "suite": r.suite,
            "arm": r.arm,
            "prompt": r.prompt_id,
            "text": r.prompt,
            "negative": r.negative,
            "seed": r.seed,
            "image": r.image,
            "sha256": r.sha256,
        }
        for k, v in fields.get((r.suite, r.prompt_id), {}).items():
            d[f"field_{k}"] = v
        for attr, probs in r.probs.items():
            if len(classes.get(attr, ())) != len(probs):
                raise FairdiffError(
                    f"run dir: job {r.job_key!r}: {len(probs)} probabilities for {attr!r}, the detector's classes "
                    f"are {classes.get(attr)}"
                )
            p = np.asarray(probs)
            d[attr] = classes[attr][int(p.argmax())]
            d[f"conf_{attr}"] = float(p.max())
            for cls, x in zip(classes[attr], probs, strict=True):
                d[f"prob_{attr}_{cls}"] = x
        d["valid"] = bool(valid_images({a: np.asarray(p)[None] for a, p in r.probs.items()})[0])
        for name, rule in outcomes.items():
            attr, cls = rule.split("=")
            if attr in d:
                d[name] = d[attr] == cls
        if r.scene is not None:
            d.update(scene_columns(r.job_key, r.scene))
        out.append(d)
    return pd.DataFrame(out)
