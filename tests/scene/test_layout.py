"""Layout files: the model, one-line errors naming the person and field, the published schema, LMD boxes."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from config_mutations import check_outcome, corrupted, mutated
from fairdiff.cli import app
from fairdiff.errors import FairdiffError
from fairdiff.scene.layout import (
    Layout,
    check_attributes,
    from_lmd,
    layout_json,
    layout_schema,
    load_layout,
    schema_json,
    write_layout,
)
from fairdiff.world.schema import ATTRIBUTES

REPO = Path(__file__).resolve().parents[2]
GOOD = {
    "version": 1,
    "canvas": {"width": 96, "height": 32},
    "prompt": "a team of 3",
    "negative": "blurry",
    "people": [
        {"id": "p1", "box": [0, 0, 0.33, 1], "attributes": {"gender": "woman", "skin": "dark"}, "prompt": "a woman"},
        {"id": "p2", "box": [0.33, 0, 0.66, 1], "prompt": "a man", "priority": 2},
        {"id": "p3", "box": [0.66, 0.1, 1, 0.9], "prompt": "a person", "negative": "hat"},
    ],
    "planner": {"type": "rules", "seed": 3, "mix": {"skin": {"dark": 1.0}}},
}


def _write(tmp_path: Path, data, name: str = "l.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def _broken(**person) -> dict:
    data = json.loads(json.dumps(GOOD))
    data["people"][2].update(person)
    return data


def test_a_good_layout_loads_and_round_trips(tmp_path):
    layout = load_layout(_write(tmp_path, GOOD))
    assert layout.people[0].box == (0.0, 0.0, 0.33, 1.0)
    assert layout.people[1].priority == 2 and layout.people[1].attributes == {}
    assert layout.planner.type == "rules" and layout.planner.fallback is None
    write_layout(tmp_path / "again.json", layout)
    assert load_layout(tmp_path / "again.json") == layout
    assert layout_json(load_layout(tmp_path / "again.json")) == layout_json(layout)


@pytest.mark.parametrize(
    ("person", "expected"),
    [
        ({"box": [0.9, 0.1, 0.2, 0.9]}, 'people[2] (id "p3").box: expected x0 < x1, got [0.9, 0.1, 0.2, 0.9]'),
        ({"box": [0.1, 0.5, 0.2, 0.5]}, 'people[2] (id "p3").box: expected y0 < y1'),
        ({"box": [0.1, 0.1, 1.5, 0.9]}, 'people[2] (id "p3").box[2]: expected a number in [0, 1], got 1.5'),
        ({"box": [-0.1, 0.1, 0.5, 0.9]}, 'people[2] (id "p3").box[0]: expected a number in [0, 1], got -0.1'),
        ({"box": [0.1, 0.1, 0.5]}, 'people[2] (id "p3").box: expected 4 numbers [x0, y0, x1, y1], got 3'),
        ({"box": "0 0 1 1"}, 'people[2] (id "p3").box: expected a box [x0, y0, x1, y1] of numbers in [0, 1]'),
        ({"box": [0, 0, True, 1]}, 'people[2] (id "p3").box[2]: expected a number in [0, 1], got true'),
        ({"id": "p1"}, "people[2] (id \"p1\").id: id 'p1' is also people[0]'s"),
        ({"prompt": ""}, 'people[2] (id "p3").prompt: expected a non-empty string'),
        ({"priority": "high"}, "people[2] (id \"p3\").priority: expected an integer, got 'high'"),
        ({"attributes": {"skin": 3}}, 'people[2] (id "p3").attributes.skin: expected a non-empty string, got 3'),
        ({"colour": "red"}, 'people[2] (id "p3").colour: unknown key (allowed: attributes, box, id'),
    ],
)
def test_a_bad_person_is_one_line_naming_the_person_and_field(tmp_path, person, expected):
    path = _write(tmp_path, _broken(**person))
    with pytest.raises(FairdiffError) as exc:
        load_layout(path)
    message = str(exc.value)
    assert message.startswith(f"layout {path}: {expected}"), message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"version": 1, "canvas": {"width": NaN', "not valid JSON: NaN is not a number JSON allows"),
        ('{"canvas": ', "not valid JSON: line 1, column 12"),
        ("", "not valid JSON: line 1, column 1"),
        ("[]", "<top>: expected a mapping, got an empty list"),
    ],
)
def test_bad_json_is_one_line(tmp_path, text, expected):
    path = _write(tmp_path, text)
    with pytest.raises(FairdiffError, match="^layout .*: " + expected.replace("[", r"\[").replace("(", r"\(")):
        load_layout(path)


def test_top_level_errors_name_the_key(tmp_path):
    for change, expected in [
        ({"version": 2}, "version: must be one of 1, got 2"),
        ({"canvas": {"width": 0, "height": 32}}, "canvas.width: expected a number >= 1, got 0"),
        ({"people": []}, "people: expected at least 1 item(s), got 0"),
        ({"planner": {"type": "magic"}}, "planner.type: must be one of rules, llm, manual, got 'magic'"),
    ]:
        with pytest.raises(FairdiffError) as exc:
            load_layout(_write(tmp_path, {**GOOD, **change}))
        assert str(exc.value).endswith(f"l.json: {expected}"), exc.value
    with pytest.raises(FairdiffError, match="no such file"):
        load_layout(tmp_path / "missing.json")


def test_yaml_layouts_are_read_too(tmp_path):
    import yaml

    path = tmp_path / "l.yaml"
    path.write_text(yaml.safe_dump(GOOD))
    assert load_layout(path) == load_layout(_write(tmp_path, GOOD))


def test_attributes_are_checked_against_the_detector_classes(tmp_path):
    layout = load_layout(_write(tmp_path, GOOD))
    assert check_attributes(layout, ATTRIBUTES) is layout
    bad = load_layout(_write(tmp_path, _broken(attributes={"skin": "purple"})))
    with pytest.raises(FairdiffError, match=r'^l.json: people\[2\] \(id "p3"\).attributes.skin: unknown value'):
        check_attributes(bad, ATTRIBUTES, source="l.json")
    bad = load_layout(_write(tmp_path, _broken(attributes={"hair": "red"})))
    with pytest.raises(FairdiffError, match=r"attributes.hair: unknown attribute 'hair'"):
        check_attributes(bad, ATTRIBUTES, source="l.json")


def test_lmd_pixel_boxes_convert_to_normalized_boxes():
    layout = from_lmd([("a woman", [0, 0, 128, 512]), ("a man", [128, 64, 256, 448])], 512, 512, prompt="a duo")
    assert [p.box for p in layout.people] == [(0.0, 0.0, 0.25, 1.0), (0.25, 0.125, 0.75, 1.0)]
    assert [p.id for p in layout.people] == ["p1", "p2"] and layout.prompt == "a duo"
    assert layout.planner.type == "manual"
    text = (
        "Objects: [('a nurse', [10, 20, 100, 200]), ('a doctor', [200, 20, 100, 200])]\n"
        "Background prompt: a hospital corridor\nNegative prompt: blurry"
    )
    layout = from_lmd(text, 400, 400)
    assert layout.prompt == "a hospital corridor" and layout.negative == "blurry"
    assert layout.people[1].box == (0.5, 0.05, 0.75, 0.55) and layout.people[0].prompt == "a nurse"
    with pytest.raises(FairdiffError, match=r"object 1 \('a man'\): box \[300, 0, 300, 100\] is empty or leaves"):
        from_lmd([("a woman", [0, 0, 10, 10]), ("a man", [300, 0, 300, 100])], 512, 512)
    with pytest.raises(FairdiffError, match="no 'Objects"):
        from_lmd("Background prompt: x", 512, 512)


def test_the_published_schema_is_up_to_date_and_describes_the_model():
    published = (REPO / "docs" / "layout.schema.json").read_text()
    assert published == schema_json(), "docs/layout.schema.json is stale: run `fairdiff scene schema --out ...`"
    schema = layout_schema()
    assert schema["$schema"].endswith("2020-12/schema")
    person = schema["$defs"]["Person"]
    assert set(person["required"]) == {"id", "box", "prompt"}
    assert [item["maximum"] for item in person["properties"]["box"]["prefixItems"]] == [1.0] * 4
    assert person["additionalProperties"] is False


def test_schema_command_prints_and_writes(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["scene", "schema"])
    assert result.exit_code == 0 and json.loads(result.stdout) == layout_schema()
    result = runner.invoke(app, ["scene", "schema", "--out", str(tmp_path / "s.json")])
    assert result.exit_code == 0 and (tmp_path / "s.json").read_text() == schema_json()


# ---- property tests: mutated or corrupted layout files load or fail with one line naming the file -----------

RAW = json.dumps(GOOD, indent=2).encode()
_json_numbers = st.sampled_from([math.nan, math.inf, -math.inf, 1e308, -1.0, 2.0, 0.5, 10**30])


def _dump(data) -> bytes:
    return json.dumps(data, default=str).encode()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(mutated(GOOD).map(_dump), corrupted(RAW)))
def test_a_broken_layout_file_is_one_line_or_a_valid_layout(content):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "l.json"
        path.write_bytes(content)
        layout = check_outcome(lambda: load_layout(path), path, "layout")
    if layout is not None:
        assert isinstance(layout, Layout)
        for person in layout.people:
            x0, y0, x1, y1 = person.box
            assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1
            assert all(math.isfinite(v) for v in person.box)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2), st.integers(0, 3), _json_numbers)
def test_any_box_number_out_of_range_or_nan_is_refused(person, coordinate, value):
    data = json.loads(json.dumps(GOOD))
    data["people"][person]["box"][coordinate] = value
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "l.json"
        path.write_bytes(json.dumps(data).encode())
        layout = check_outcome(lambda: load_layout(path), path, "layout")
    box = data["people"][person]["box"]
    valid = all(0 <= v <= 1 for v in box) and box[0] < box[2] and box[1] < box[3]
    assert (layout is not None) == valid
