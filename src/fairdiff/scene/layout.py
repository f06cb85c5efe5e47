"""Group-scene layouts: the file a planner writes and the regional sampler draws.

A layout is one image: a canvas (pixels), a base prompt and negative for the whole scene, and people, each with
an id, a box (normalized x0, y0, x1, y1 in [0, 1], x0 < x1, y0 < y1), the attributes the planner chose (values
from the detector's classes, e.g. {"gender": "woman", "skin": "dark"}), a prompt and negative for the box, and a
priority (higher wins where boxes overlap). `planner` records who planned it (rules, an LLM, or by hand), with
the seed, the wanted mix and why an LLM planner fell back to the rules.

Layout files are JSON (`.yaml` / `.yml` files are read as YAML). The models are `fairdiff.config.ConfigModel`s
(unknown keys refused, strict types, no NaN); `layout_schema()` is the published JSON Schema
(docs/layout.schema.json, `fairdiff scene schema`). A bad file gets one `FairdiffError` line naming the file,
the person and the field: ``layout l.json: people[2] (id "p3").box: expected x0 < x1, got [0.6, 0.1, 0.2, 0.9]``.

`from_lmd` converts LMD-style layouts (pixel x, y, w, h boxes, as LLM-grounded Diffusion's prompt asks an LLM
for) into a `Layout`.
"""

from __future__ import annotations

import ast
import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field, ValidationError, model_validator

from fairdiff.config import (
    ConfigModel,
    ConfigValueError,
    Expected,
    NonEmptyStr,
    decode_config_bytes,
    describe_error,
    describe_value,
    one_line,
    parse_yaml,
    read_config_text,
)
from fairdiff.errors import FairdiffError
from fairdiff.files import write_atomic

SCHEMA_ID = "https://fairdiff.invalid/layout.schema.json"  # a name, not a URL anything fetches
MAX_PEOPLE = 64  # people in one layout (a regional sampler pays per box; an LLM reply may try thousands)
MAX_TEXT = 1000  # characters of one prompt or negative (CLIP reads 77 tokens; the rest is dropped anyway)
MAX_CANVAS = 8192  # pixels per side
MAX_ATTRIBUTES = 16


def _box_list(value: Any) -> Any:
    """JSON has no tuples: a list of four becomes the box tuple (other lengths are named here)."""
    if isinstance(value, list | tuple):
        if len(value) != 4:
            raise ConfigValueError(f"expected 4 numbers [x0, y0, x1, y1], got {len(value)}")
        return tuple(value)
    return value


def _box_order(box: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = box
    if not x0 < x1:
        raise ConfigValueError(f"expected x0 < x1, got {list(box)}")
    if not y0 < y1:
        raise ConfigValueError(f"expected y0 < y1, got {list(box)}")
    return box


Unit = Annotated[float, Field(ge=0.0, le=1.0), Expected("a number in [0, 1]")]
Box = Annotated[
    tuple[Unit, Unit, Unit, Unit],
    BeforeValidator(_box_list),
    AfterValidator(_box_order),
    Expected("a box [x0, y0, x1, y1] of numbers in [0, 1]"),
    Field(description="normalized x0, y0, x1, y1: 0 <= x0 < x1 <= 1, 0 <= y0 < y1 <= 1 (y down)"),
]
Text = Annotated[str, Field(max_length=MAX_TEXT)]
Name = Annotated[NonEmptyStr, Field(max_length=64)]


class Person(ConfigModel):
    """One person of a scene: a box and what to draw in it."""

    id: Name = Field(description="unique within the layout")
    box: Box
    attributes: Annotated[dict[Name, Name], Field(max_length=MAX_ATTRIBUTES)] = Field(
        default_factory=dict, description="attribute -> value among the detector's classes, e.g. skin: dark"
    )
    prompt: Annotated[NonEmptyStr, Field(max_length=MAX_TEXT)] = Field(description="this box's prompt")
    negative: Text = ""
    priority: Annotated[int, Field(ge=-1_000_000, le=1_000_000)] = Field(
        0, description="higher wins where boxes overlap"
    )


class Canvas(ConfigModel):
    """The image size in pixels."""

    width: Annotated[int, Field(ge=1, le=MAX_CANVAS)]
    height: Annotated[int, Field(ge=1, le=MAX_CANVAS)]


class PlannerInfo(ConfigModel):
    """Who planned the layout: `rules`, `llm` (an OpenAI-compatible model) or `manual`."""

    type: Literal["rules", "llm", "manual"]
    seed: Annotated[int, Field(ge=0, le=2**64 - 1)] | None = None
    mix: dict[str, dict[str, float]] | None = Field(None, description="the wanted mix, attribute -> value -> share")
    fallback: Text | None = Field(None, description="why the LLM planner fell back to the rules planner")
    model: Text | None = Field(None, description="the LLM that planned it")
    index: Annotated[int, Field(ge=0)] | None = Field(None, description="this image's index in the planned batch")
    images: Annotated[int, Field(ge=1)] | None = Field(None, description="images in the planned batch")
    note: Text | None = Field(None, description="what the planner left alone and why (stated attributes, contexts)")


class Layout(ConfigModel):
    """One group-scene image: canvas, base prompt, people."""

    version: Literal[1] = 1
    canvas: Canvas
    prompt: Text = Field(description="the base prompt, for the whole canvas")
    negative: Text = ""
    people: Annotated[list[Person], Field(min_length=1, max_length=MAX_PEOPLE)]
    planner: PlannerInfo | None = None

    @model_validator(mode="after")
    def _unique_ids(self) -> Layout:
        seen: dict[str, int] = {}
        for i, person in enumerate(self.people):
            if person.id in seen:
                raise ConfigValueError(f"id {person.id!r} is also people[{seen[person.id]}]'s", "people", i, "id")
            seen[person.id] = i
        return self


# ---------------------------------------------------------------------------------------------------- reading

_PERSON_PATH = re.compile(r"^people\[(\d+)\]")


def _name_person(path: str, data: Any) -> str:
    """`people[2].box` -> `people[2] (id "p3").box` where the data gives that person a string id."""
    match = _PERSON_PATH.match(path)
    if not match or not isinstance(data, dict) or not isinstance(data.get("people"), list):
        return path
    people, index = data["people"], int(match.group(1))
    person = people[index] if index < len(people) else None
    pid = person.get("id") if isinstance(person, dict) else None
    if not isinstance(pid, str) or not pid:
        return path
    shown = pid if len(pid) <= 40 else pid[:37] + "..."
    return f"{match.group(0)} (id {json.dumps(shown)}){path[match.end() :]}"


def validate_layout(data: Any, source: str, kind: str = "layout") -> Layout:
    """`data` (parsed JSON) as a `Layout`; the first problem is one `FairdiffError` line naming the person."""
    try:
        return Layout.model_validate(data)
    except ValidationError as exc:
        path, message = describe_error(Layout, data, exc.errors(include_url=False)[0])
        raise FairdiffError(one_line(f"{kind} {source}: {_name_person(path, data)}: {message}")) from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def parse_layout_json(text: str, source: str, kind: str = "layout") -> Any:
    """JSON text -> data; a syntax error (or NaN / Infinity, which JSON does not have) is one line."""
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise FairdiffError(
            one_line(f"{kind} {source}: not valid JSON: line {exc.lineno}, column {exc.colno}: {exc.msg}")
        ) from None
    except (ValueError, RecursionError) as exc:  # NaN, a huge integer, nesting too deep
        text = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise FairdiffError(one_line(f"{kind} {source}: not valid JSON: {text}")) from None


def load_layout(path: str | Path) -> Layout:
    """Read and validate a layout file (JSON; YAML for .yaml/.yml); bad input is one `FairdiffError` line."""
    path = Path(path)
    text = read_config_text(path, "layout")
    if path.suffix.lower() in (".yaml", ".yml"):
        data = parse_yaml(text, "layout", str(path))
    else:
        data = parse_layout_json(text, str(path))
    return validate_layout(data, str(path))


def layout_from_bytes(raw: bytes, source: str, kind: str = "layout") -> Layout:
    """A layout from JSON bytes (an LLM reply, a test): the same checks and messages as `load_layout`."""
    return validate_layout(parse_layout_json(decode_config_bytes(raw, kind, source), source, kind), source, kind)


def layout_json(layout: Layout) -> str:
    """The layout as JSON text: fields in model order, defaults written out, two-space indent, final newline."""
    return json.dumps(layout.model_dump(mode="json"), indent=2, ensure_ascii=False) + "\n"


def write_layout(path: str | Path, layout: Layout) -> None:
    """Write a layout file atomically."""
    write_atomic(Path(path), layout_json(layout).encode())


def layout_schema() -> dict:
    """The published JSON Schema of layout files (docs/layout.schema.json, `fairdiff scene schema`)."""
    schema = Layout.model_json_schema()
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        **schema,
        "title": "fairdiff group-scene layout",
        "description": (
            "One group-scene image: canvas size in pixels, a base prompt and negative, and people with a "
            "normalized box (x0, y0, x1, y1; 0 <= x0 < x1 <= 1, 0 <= y0 < y1 <= 1), attributes among the "
            "detector's classes, a prompt and negative per box and a priority for overlaps. Ids are unique."
        ),
    }


def schema_json() -> str:
    """`layout_schema()` as the text docs/layout.schema.json holds."""
    return json.dumps(layout_schema(), indent=2, ensure_ascii=False) + "\n"


def check_attributes(layout: Layout, classes: Mapping[str, Sequence[str]], source: str = "layout") -> Layout:
    """Every person's attributes are known attributes with values among `classes` (a detector's or the world's);
    otherwise one line naming the person and the key."""
    for i, person in enumerate(layout.people):
        for key, value in person.attributes.items():
            where = f"{source}: people[{i}] (id {json.dumps(person.id)}).attributes.{key}"
            if key not in classes:
                raise FairdiffError(
                    one_line(f"{where}: unknown attribute {key!r}; the detector knows: {', '.join(classes)}")
                )
            if value not in classes[key]:
                raise FairdiffError(
                    one_line(f"{where}: unknown value {value!r}; choose one of: {', '.join(classes[key])}")
                )
    return layout


# ------------------------------------------------------------------------------------------------ converters

_LMD_LINE = re.compile(r"^\s*(objects|background prompt|negative prompt)\s*:\s*(.*)$", re.IGNORECASE)


def parse_lmd(text: str) -> tuple[list[tuple[str, list[float]]], str, str]:
    """LMD's reply format -> (objects, background prompt, negative prompt):
    ``Objects: [('a woman', [10, 20, 100, 200]), ...]`` / ``Background prompt: ...`` / ``Negative prompt: ...``."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        match = _LMD_LINE.match(line)
        if match:
            found[match.group(1).lower()] = match.group(2).strip()
    if "objects" not in found:
        raise FairdiffError("LMD layout: no 'Objects: [...]' line")
    try:
        objects = ast.literal_eval(found["objects"])
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        shown = found["objects"][:60]
        raise FairdiffError(f"LMD layout: Objects is not a list of (name, [x, y, w, h]): {shown!r}") from None
    return objects, found.get("background prompt", ""), found.get("negative prompt", "")


def from_lmd(
    objects: Sequence[tuple[str, Sequence[float]]] | str,
    width: int = 512,
    height: int = 512,
    *,
    prompt: str | None = None,
    negative: str | None = None,
    attributes: Sequence[Mapping[str, str]] | None = None,
    planner: PlannerInfo | None = None,
) -> Layout:
    """A layout from LMD-style boxes: `[("a woman", [x, y, w, h]), ...]` in pixels of a `width` x `height`
    canvas (LMD plans on 512 x 512), or LMD's reply text (its Background / Negative prompt lines give the base
    prompt and negative unless `prompt` / `negative` are given). People get ids p1, p2, ... in order; boxes
    that leave the canvas or are empty are refused by index."""
    background, lmd_negative = "", ""
    if isinstance(objects, str):
        objects, background, lmd_negative = parse_lmd(objects)
    if not isinstance(objects, list | tuple) or not objects:
        raise FairdiffError("LMD layout: expected a non-empty list of (name, [x, y, w, h])")
    if attributes is not None and len(attributes) != len(objects):
        raise FairdiffError(f"LMD layout: {len(attributes)} attribute sets for {len(objects)} objects")
    people = []
    for i, item in enumerate(objects):
        if not (isinstance(item, list | tuple) and len(item) == 2 and isinstance(item[0], str)):
            raise FairdiffError(f"LMD layout: object {i}: expected (name, [x, y, w, h]), got {describe_value(item)}")
        name, xywh = item
        ok = isinstance(xywh, list | tuple) and len(xywh) == 4
        ok = ok and all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in xywh)
        if not ok:
            raise FairdiffError(f"LMD layout: object {i} ({name!r}): expected [x, y, w, h] numbers, got {xywh!r}")
        x, y, w, h = (float(v) for v in xywh)
        if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > width + 1e-6 or y + h > height + 1e-6:
            raise FairdiffError(
                f"LMD layout: object {i} ({name!r}): box {list(xywh)} is empty or leaves the {width}x{height} canvas"
            )
        box = [x / width, y / height, min(1.0, (x + w) / width), min(1.0, (y + h) / height)]
        person = {"id": f"p{i + 1}", "box": box, "prompt": name}
        if attributes is not None:
            person["attributes"] = dict(attributes[i])
        people.append(person)
    data = {
        "canvas": {"width": width, "height": height},
        "prompt": background if prompt is None else prompt,
        "negative": lmd_negative if negative is None else negative,
        "people": people,
        "planner": (planner or PlannerInfo(type="manual")).model_dump(),
    }
    return validate_layout(data, "from LMD boxes", kind="layout")
