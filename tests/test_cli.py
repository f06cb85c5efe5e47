from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from cli_helpers import error_line as _error_line
from fairdiff.cli import app

runner = CliRunner()


def test_help_and_version():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0 and "generate" in result.output and "world" in result.output
    assert runner.invoke(app, ["--version"]).output.startswith("fairdiff ")
    for sub in (
        ["generate"],
        ["world", "render"],
        ["world", "sheet"],
        ["world", "gates"],
        ["world", "train-model"],
        ["world", "train-classifier"],
    ):
        assert runner.invoke(app, [*sub, "--help"]).exit_code == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["generate", "-p", "a doctor", "--model", "no/such/thing"], "unknown model 'no/such/thing'"),
        (["generate", "-p", "a doctor", "-n", "0"], "-n must be >= 1, got 0"),
        (["generate", "-p", "a doctor", "--steps", "0"], "--steps must be >= 1, got 0"),
        (["generate", "-p", "a doctor", "--dtype", "float8"], "unknown --dtype 'float8'"),
        (["world", "render", "--n", "0"], "--n must be >= 1"),
        (["world", "train-model", "--checkpoint-every", "0"], "--checkpoint-every must be >= 1, got 5000, 64, 0"),
        (["world", "train-model", "--high-t-share", "1.5"], "--high-t-share must be in [0, 1]"),
        (["world", "train-model", "--workers", "-1"], "--workers must be >= 0, got -1"),
        (["world", "train-model", "--init", "docs"], "--init docs: no UNet weights at docs/unet/"),
        (["world", "render", "--n", "3", "--seed", "-1"], "--seed must be >= 0 for the world's renders, got -1"),
        (["world", "train-model", "--lr", "-1"], "--lr must be a finite number > 0, got -1.0"),
        (["world", "gates", "--batch-size", "0"], "--steps and --batch-size >= 1, got 1.0, 25 and 0"),
        (["generate", "-p", "a doctor", "--height", "64"], "the tiny model draws 32x32 images only"),
    ],
)
def test_bad_input_is_one_red_line(args, message, tmp_path):
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "out")] if args[0] == "generate" else args)
    assert message in _error_line(result)


def test_bad_world_yaml(tmp_path):
    bad = tmp_path / "world.yaml"
    bad.write_text("occupations:\n  doctor:\n    gender: {man: 0.9, woman: 0.3}\ncontexts: {}\n")
    line = _error_line(
        runner.invoke(app, ["world", "render", "--n", "3", "--config", str(bad), "--out", str(tmp_path / "o")])
    )
    assert "occupations.doctor.gender: probabilities sum to 1.2" in line


def test_unwritable_out(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    line = _error_line(runner.invoke(app, ["generate", "-p", "a doctor", "--out", str(blocker / "sub")]))
    assert "not writable" in line and str(blocker / "sub") in line


def test_debug_shows_the_traceback():
    result = runner.invoke(app, ["--debug", "generate", "-p", "a doctor", "-n", "0"])
    assert result.exit_code != 0 and result.exception is not None
    assert "-n must be >= 1" in str(result.exception)


def test_world_render_and_sheet(tmp_path):
    result = runner.invoke(app, ["world", "render", "--n", "12", "--out", str(tmp_path / "w"), "--seed", "1"])
    assert result.exit_code == 0, result.output
    rows = (tmp_path / "w" / "manifest.jsonl").read_text().splitlines()
    assert len(rows) == 12 and set(json.loads(rows[0])) >= {
        "file",
        "caption",
        "gender",
        "skin",
        "age",
        "attire",
        "occupation",
    }
    result = runner.invoke(app, ["world", "sheet", "--out", str(tmp_path / "sheet.png")])
    assert result.exit_code == 0 and (tmp_path / "sheet.png").stat().st_size > 10_000


def test_generate_bundled_model_twice_is_byte_identical(tmp_path):
    args = ["generate", "--model", "tiny", "-p", "a photo of the face of a nurse -revealing", "-n", "3", "--steps", "4"]
    for name in ("a", "b"):
        result = runner.invoke(app, [*args, "--out", str(tmp_path / name)])
        assert result.exit_code == 0, result.output
    for png in ("000000.png", "000001.png", "000002.png", "grid.png"):
        assert (tmp_path / "a" / png).read_bytes() == (tmp_path / "b" / png).read_bytes()
    sidecar = json.loads((tmp_path / "a" / "generate.json").read_text())
    assert sidecar["model_kind"] == "tiny" and sidecar["negative_prompt"] == "revealing"
    assert any(k.startswith("text_encoder(") for k in sidecar["weight_hashes"])


def test_world_gates_cli_writes_json(tmp_path):
    out = tmp_path / "gates.json"
    result = runner.invoke(app, ["world", "gates", "--scale", "0.03", "--steps", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert set(report["passed"]) == {"controllability", "fidelity", "validity", "paraphrase"}
    assert report["config"]["fidelity_n"] == 12 and "quality gates" in result.output
