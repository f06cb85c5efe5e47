"""The config layer: reading, YAML errors with line and column, and pydantic errors as one line naming file kind,
file, key path and what was expected; and the same seen from the CLI."""

from __future__ import annotations

from typing import Annotated, Literal

import pytest
from pydantic import Field
from typer.testing import CliRunner

from cli_helpers import error_line
from fairdiff.cli import app
from fairdiff.config import (
    ConfigModel,
    Expected,
    describe_value,
    load_config_file,
    one_line,
    parse_yaml,
    read_config_text,
    validate,
)
from fairdiff.errors import FairdiffError

runner = CliRunner()


def _error(fn, *args) -> str:
    with pytest.raises(FairdiffError) as err:
        fn(*args)
    message = str(err.value)
    assert len(message.splitlines()) == 1, message
    return message


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: [a, b\n", "not valid YAML: line 2, column 1: expected ',' or ']', but got '<stream end>'"),
        ("a: 1\nb:\n  c: 2\n  c: 3\n", "not valid YAML: line 4, column 3: found duplicate key 'c'"),
        ("a: 1\n b: 2\n", "not valid YAML: line 2, column 3: mapping values are not allowed here"),
        ("a: \x07\n", "not valid YAML: line 1, column 4: character #x0007 is not allowed in YAML"),
        ("a: 2020-13-45\n", "not valid YAML: month must be in 1..12"),  # PyYAML reads it as a date
        ("a: " + "9" * 5000 + "\n", "not valid YAML: Exceeds the limit (4300 digits)"),
        ("a: &x [1, *x]\n", "an alias (*name) refers to a value that contains it"),
    ],
)
def test_yaml_errors_are_one_line_with_line_and_column(text, message):
    got = _error(parse_yaml, text, "suite", "s.yaml")
    assert got.startswith("suite s.yaml: ") and message in got


def test_aliases_that_expand_to_billions_are_refused_quickly():
    lines = ["a0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    assert "more than 1000000 values" in _error(parse_yaml, "\n".join(lines), "arms", "a.yaml")


def test_reading_names_missing_folder_binary_and_non_utf8_files(tmp_path):
    assert _error(read_config_text, tmp_path / "nope.yaml", "suite") == f"suite {tmp_path / 'nope.yaml'}: no such file"
    assert "is a directory, not a file" in _error(read_config_text, tmp_path, "suite")
    binary = tmp_path / "weights.yaml"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    assert _error(read_config_text, binary, "world config").endswith(": a binary file, not a YAML text file")
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("name: caf\xe9\n".encode("latin-1"))
    assert "not a UTF-8 text file (byte 0xe9 at offset 9)" in _error(read_config_text, latin1, "suite")
    bom = tmp_path / "bom.yaml"
    bom.write_bytes("\ufeffname: café\n".encode())
    assert parse_yaml(read_config_text(bom, "suite"), "suite", "bom.yaml") == {"name": "café"}


class _Leaf(ConfigModel):
    p: Annotated[float, Expected("a probability"), Field(ge=0, le=1)] = 0.5
    word: str = ""


class _A(ConfigModel):
    kind: Literal["a"] = "a"
    leaves: list[_Leaf] = []


class _B(ConfigModel):
    kind: Literal["b"]
    size: int


class _File(ConfigModel):
    mode: Literal["fast", "slow"] = "fast"
    items: dict[str, _Leaf] = {}
    parts: list[Annotated[_A | _B, Field(discriminator="kind")]] = []
    count: int


def _message(data) -> str:
    return _error(validate, _File, data, "layout", "l.yaml")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"count": 1, "items": {"x": {"word": ["a"]}}}, "items.x.word: expected a string, got list"),
        ({"count": "3"}, "count: expected an integer, got '3'"),  # strict: YAML "3" is not a number
        ({"count": 1.0}, "count: expected an integer, got 1.0"),
        ({"count": True}, "count: expected an integer, got true"),
        ({}, "count: missing key"),
        ({"count": 1, "colour": "red"}, "colour: unknown key (allowed: count, items, mode, parts)"),
        ({"count": 1, "items": {"x": {"p": 2}}}, "items.x.p: expected a probability, got 2"),
        ({"count": 1, "items": {"x": {"p": float("nan")}}}, "items.x.p: expected a probability, got nan"),
        ({"count": 1, "items": {"x": {"p": "high"}}}, "items.x.p: expected a probability, got 'high'"),
        ({"count": 1, "items": {"x": {"p": 1}}, "mode": "warp"}, "mode: must be one of fast, slow, got 'warp'"),
        ({"count": 1, "items": {3: {}}}, "items: key 3 is not a string"),
        ({"count": 1, "parts": [{"kind": "a"}, {"kind": "b", "size": "9"}]}, "parts[1].size: expected an integer"),
        (
            {"count": 1, "parts": [{"kind": "b", "size": 1, "colour": 1}]},
            "parts[0].colour: unknown key (allowed: kind, s",
        ),
        ({"count": 1, "parts": [{"kind": "a", "leaves": [{}, {"x": 1}]}]}, "parts[0].leaves[1].x: unknown key"),
        ({"count": 1, "items": {"a\nb": {"q": 1}}}, "items.'a\\nb'.q: unknown key"),  # still one line
        (None, "<top>: expected a mapping, got an empty document"),
        ([1, 2], "<top>: expected a mapping, got list"),
    ],
)
def test_validation_errors_name_kind_file_key_path_and_expectation(data, message):
    got = _message(data)
    assert got.startswith("layout l.yaml: ") and message in got, got


def test_ints_are_numbers_and_models_load_from_files(tmp_path):
    path = tmp_path / "l.yaml"
    path.write_text("count: 2\nitems: {x: {p: 1}}\n")
    model, data = load_config_file(path, _File, "layout")
    assert model.items["x"].p == 1.0 and data == {"count": 2, "items": {"x": {"p": 1}}}


def test_describe_value_is_short_and_one_line():
    assert describe_value("x" * 100).endswith("...") and len(describe_value("x" * 100)) == 60
    assert describe_value("a\nb") == "'a\\nb'"
    assert [describe_value(v) for v in (None, True, [], [1], {}, {"a": 1}, b"\x00")] == [
        "null",
        "true",
        "an empty list",
        "list",
        "an empty mapping",
        "mapping",
        "binary data",
    ]
    assert one_line("a\u2028b\x85c\rd") == "a\\u2028b\\x85c\\rd"


# ------------------------------------------------------------------------------------------- as a user sees it

SUITE = "name: x\ntemplates: ['a {o}']\nmeasure: [gender]\nvalues: {o: [doctor]}\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (SUITE.replace("['a {o}']", "['a {o}', 'b {o}', {text: [a]}]"), "templates[2].text: expected a string"),
        (SUITE + "images_per_prompt: '3'\n", "images_per_prompt: expected an integer from 1 to"),
        (SUITE + "colour: blue\n", "colour: unknown key (allowed:"),
        (SUITE + "name: y\n", "not valid YAML: line 5, column 1: found duplicate key 'name'"),
        (SUITE.replace("[doctor]", "[doctor"), "not valid YAML: line 4, column 20: expected ',' or ']'"),
        (
            SUITE + "target: {gender: {man: .inf, woman: 0}}\n",
            "target.gender.man: shares must be numbers >= 0, got inf",
        ),
    ],
)
def test_audit_with_a_malformed_suite_is_one_red_line(tmp_path, text, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    line = error_line(runner.invoke(app, ["audit", "-s", str(bad), "--out", str(tmp_path / "run")]))
    assert f"suite {bad}: " in line and message in line, line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- {kind: negative, name: n}\n", "[0].negative: missing key"),
        ("- {kind: base, name: g, guidance: -1}\n", "[0].guidance: expected a number >= 0, got -1"),
        ("- {kind: base}\n- {kind: magic}\n", "[1].kind: unknown arm kind 'magic'; choose one of: adapter, base"),
        ("- {kind: negative, negative: x, colour: red}\n", "[0].colour: unknown key (allowed: guidance, kind, name"),
        ("- base\n", "[0]: expected an arm mapping (kind, name, ...), got 'base'"),
        ("kind: base\n", "<top>: expected a list of arms, got mapping"),
    ],
)
def test_audit_with_a_malformed_arms_file_is_one_red_line(tmp_path, text, message):
    bad = tmp_path / "arms.yaml"
    bad.write_text(text)
    line = error_line(runner.invoke(app, ["audit", "--arms", str(bad), "--out", str(tmp_path / "run")]))
    assert f"arms {bad}: " in line and message in line, line


_CONTEXTS = "contexts: {photo: {weight: 1, templates: ['a {subject}']}}\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "occupations: {doctor: {gender: {man: '0.5', woman: 0.5}}}\n" + _CONTEXTS,
            "occupations.doctor.gender.man: expected a probability, got '0.5'",
        ),
        ("occupations: {doctor: }\n" + _CONTEXTS.replace("weight: 1, ", ""), "contexts.photo.weight: missing key"),
        ("occupations: {doctor: }\n" + _CONTEXTS + "skews: [{context: photo}]\n", "skews[0].revealing: missing key"),
        ("occupations: {doctor: }\n" + _CONTEXTS + "version: '1'\n", "version: expected version 1, got '1'"),
        ("occupations:\n  doctor:\n    gender: {man: 1}\n   skin: {}\n", "not valid YAML: line 4, column 4:"),
    ],
)
def test_world_render_with_a_malformed_config_is_one_red_line(tmp_path, text, message):
    bad = tmp_path / "world.yaml"
    bad.write_text(text)
    line = error_line(runner.invoke(app, ["world", "render", "-c", str(bad), "-n", "2", "--out", str(tmp_path / "r")]))
    assert f"world config {bad}: " in line and message in line, line
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("command", [["audit", "-s"], ["audit", "--arms"], ["world", "render", "-c"]])
def test_binary_and_latin1_files_are_named_as_such(tmp_path, command):
    binary, latin1 = tmp_path / "b.yaml", tmp_path / "l.yaml"
    binary.write_bytes(b"PK\x03\x04\x00\x00 a zip file")
    latin1.write_bytes(b"name: caf\xe9\n")
    for path, message in ((binary, "a binary file, not a YAML text file"), (latin1, "not a UTF-8 text file")):
        line = error_line(runner.invoke(app, [*command, str(path), "--out", str(tmp_path / "out")]))
        assert f"{path}: {message}" in line, line
