from __future__ import annotations

import pytest
from typer.testing import CliRunner

from fairdiff.cli import app

runner = CliRunner()


def _error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 1, result.output
    assert len(lines) == 1, result.stderr
    return lines[0]


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
        (["--negative", ""], "the negative prompt is empty"),
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
