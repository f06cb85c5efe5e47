from __future__ import annotations

import pytest
from typer.testing import CliRunner

from cli_helpers import error_line as _error_line
from fairdiff.cli import app

runner = CliRunner()


def test_audit_end_to_end_prints_the_headline(tmp_path):
    out = tmp_path / "run"
    args = ["audit", "-s", "world-avatars", "--negative", "revealing clothes", "-n", "2", "--max-prompts", "8"]
    result = runner.invoke(app, [*args, "--steps", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "world-avatars: revealing rate by gender×skin" in result.stdout and "negative" in result.stdout
    assert (out / "metrics.json").is_file() and (out / "rows.csv").is_file()
    again = runner.invoke(app, [*args, "--steps", "2", "--out", str(out)])
    assert "pass --resume" in _error_line(again)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-s", "no-such-suite"], "suite 'no-such-suite': not a built-in suite"),
        (["--detector", "oracle"], "unknown detector 'oracle'"),
        (["--steps", "0"], "--steps must be >= 1, got 0"),
        (["--negative", ""], "the negative prompt must be non-empty text"),
        (["--adapter", "x.safetensors:heavy"], "x.safetensors:heavy"),
    ],
)
def test_audit_bad_input_is_one_red_line(tmp_path, args, message):
    result = runner.invoke(app, ["audit", *args, "--out", str(tmp_path / "run")])
    assert message in _error_line(result)


def test_malformed_suite_file_and_bad_target(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: x\ntemplates: ['a {o}']\nmeasure: [gender]\ntarget: {gender: {man: 0.6, woman: 0.6}}\n"
        "values: {o: [doctor]}\n"
    )
    result = runner.invoke(app, ["audit", "-s", str(bad), "--out", str(tmp_path / "run")])
    assert "target.gender: shares sum to 1.2, expected 1" in _error_line(result)
    assert not (tmp_path / "run").exists()  # nothing written before the input is checked


@pytest.mark.parametrize(
    ("arms", "message"),
    [
        ("- {kind: base, name: g, guidance: '3'}", "[0].guidance: expected a number >= 0, got '3'"),
        ("- {kind: negative, name: n, negative: 5}", "the negative prompt must be non-empty text, got 5"),
        ("- {kind: adapter, name: a, adapters: x.safetensors}", "adapters must be a list of FILE[:WEIGHT]"),
        ("- {kind: adapter, name: a, adapters: [missing.safetensors]}", "no such file or directory"),
        ("- {kind: magic, name: m}", "unknown arm kind 'magic'"),
        ("- {kind: base, name: 'a b'}", "[0].name: names folders of the run dir"),
    ],
)
def test_bad_arms_file_is_one_red_line(tmp_path, arms, message):
    path = tmp_path / "arms.yaml"
    path.write_text(arms + "\n")
    result = runner.invoke(app, ["audit", "--arms", str(path), "--out", str(tmp_path / "run")])
    assert message in _error_line(result)


def test_adapter_arms_get_unique_readable_names(tmp_path):
    from pathlib import Path

    from fairdiff.audit.arms import adapter_arm_name

    taken: set[str] = set()
    for p in ("a/pytorch_lora_weights.safetensors", "b/pytorch_lora_weights.safetensors", "x y.safetensors"):
        taken.add(adapter_arm_name(Path(p), taken))
    assert taken == {"a", "b", "x-y"}
    assert adapter_arm_name(Path("a/pytorch_lora_weights.safetensors"), {"a"}) == "a-2"


def test_headline_survives_an_outcome_suite_with_one_group(tmp_path):
    args = ["audit", "-s", "world-avatars", "-n", "1", "--max-prompts", "1", "--steps", "1"]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output


def test_audit_merge_refuses_a_folder_that_is_not_a_run(tmp_path):
    assert "not an audit run dir" in _error_line(runner.invoke(app, ["audit-merge", str(tmp_path)]))
    assert not (tmp_path / "store.sqlite").exists()


def test_error_text_is_not_read_as_markup(tmp_path):
    bad = tmp_path / "nan.yaml"
    bad.write_text(
        "name: x\ntemplates: ['a {o}']\nmeasure: [gender]\ntarget: {gender: {man: .nan, woman: 1.0}}\n"
        "values: {o: [doctor]}\n"
    )
    line = _error_line(runner.invoke(app, ["audit", "-s", str(bad), "--out", str(tmp_path / "run")]))
    assert "shares must be numbers >= 0, got nan" in line
