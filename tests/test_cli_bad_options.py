"""Bad option values: seeds outside [0, 2**64), huge counts refused before allocating, output paths that are a
directory, under a file, read-only or too long, a negative --top. Usage errors keep typer's exit code 2; every
other error is one red line, exit 1; a file that existed before a failed command is left as it was."""

from __future__ import annotations

import os

import pytest
from typer.testing import CliRunner

from cli_helpers import error_line
from fairdiff.cli import app

runner = CliRunner()
LONG = "x" * 300


@pytest.fixture
def labels(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("prompt,gender\na,man\na,woman\nb,man\n")
    return path


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["generate", "-p", "a", "--seed", str(2**64)], "--seed must be <= 2**64 - 1"),
        (["generate", "-p", "a", "--seed", str(2**64 - 1), "-n", "2"], "run past 2**64 - 1"),
        (["generate", "-p", "a", "--seed", "-1"], "--seed must be a whole number >= 0, got -1"),
        (["generate", "-p", "a", "-n", str(10**12)], "-n must be a whole number in [1, 1_000_000]"),
        (["generate", "-p", "a", "--steps", str(10**12)], "--steps must be a whole number in [1, 1_000]"),
        (["audit", "--seed", str(2**64)], "--seed must be <= 2**64 - 1"),
        (["audit", "--seed", "-5"], "--seed must be a whole number >= 0, got -5"),
        (["audit", "-n", str(10**12)], "-n/--images-per-prompt must be a whole number in [1, 10_000]"),
        (["world", "render", "--n", str(10**12)], "--n must be a whole number in [1, 1_000_000]"),
        (["world", "sheet", "--seed", str(2**64)], "--seed must be <= 2**64 - 1"),
        (["world", "sheet", "--seed", "-1"], "--seed must be a whole number >= 0"),
        (["report", "nowhere", "--n-boot", str(10**15)], "--n-boot must be a whole number in [1, 100_000]"),
        (["adapters", "inspect", "nowhere", "--top", "-1"], "--top must be a whole number >= 0, got -1"),
    ],
)
def test_out_of_range_options_are_one_red_line(args, message, tmp_path):
    out = tmp_path / ("o.png" if args[:2] == ["world", "sheet"] else "o")
    if args[0] in ("generate", "audit", "world") and "--out" not in args:
        args = [*args, "--out", str(out)]
    assert message in error_line(runner.invoke(app, args))
    assert not out.exists()


@pytest.mark.parametrize("option", [["--n-boot", str(10**15)], ["--seed", "-1"], ["--seed", str(2**70)]])
def test_metrics_bounds_are_checked_before_allocating(labels, option):
    assert option[0] in error_line(runner.invoke(app, ["metrics", str(labels), *option]))


@pytest.mark.parametrize("args", [["metrics", "f", "--n-boot", "1e15"], ["generate", "-p", "a", "-n", "1.5"]])
def test_usage_errors_keep_exit_code_2(args):
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "Traceback" not in result.output


def _outputs(tmp_path):
    (tmp_path / "a-dir").mkdir()
    (tmp_path / "a-file").write_text("keep")
    return {
        "directory": (tmp_path / "a-dir", "is a directory"),
        "under a file": (tmp_path / "a-file" / "x.out", "Not a directory"),
        "too long": (tmp_path / LONG, "too long"),
    }


@pytest.mark.parametrize("case", ["directory", "under a file", "too long"])
@pytest.mark.parametrize(
    "command",
    [
        lambda out, labels: ["metrics", str(labels), "--json", str(out)],
        lambda out, labels: ["report", str(labels.parent), "--out", str(out)],
        lambda out, labels: ["world", "sheet", "--out", str(out.with_suffix(".png") if out.suffix else out)],
        lambda out, labels: ["world", "gates", "--scale", "0.01", "--out", str(out)],
    ],
    ids=["metrics --json", "report --out", "world sheet --out", "world gates --out"],
)
def test_unusable_output_files(tmp_path, labels, case, command):
    out, message = _outputs(tmp_path)[case]
    if case == "directory" and "sheet" in command(out, labels):
        out = tmp_path / "a-dir.png"
        out.mkdir()
    line = error_line(runner.invoke(app, command(out, labels)))
    assert message in line or "is a directory" in line, line
    assert (tmp_path / "a-file").read_text() == "keep"


@pytest.mark.parametrize("case", ["under a file", "too long"])
def test_unusable_output_dirs(tmp_path, case):
    out, message = _outputs(tmp_path)[case]
    for args in (["generate", "-p", "a", "--steps", "1", "-n", "1"], ["audit", "-n", "1", "--max-prompts", "1"]):
        assert message in error_line(runner.invoke(app, [*args, "--out", str(out)]))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_directory(tmp_path, labels):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        assert "not writable" in error_line(runner.invoke(app, ["metrics", str(labels), "--json", str(ro / "m.json")]))
    finally:
        ro.chmod(0o700)


def test_a_failed_command_leaves_an_existing_output_alone(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"\x00\xff garbage")
    out = tmp_path / "m.json"
    out.write_text("before")
    stat = out.stat()
    error_line(runner.invoke(app, ["metrics", str(bad), "--json", str(out)]))
    report = tmp_path / "r.html"
    report.write_text("before")
    error_line(runner.invoke(app, ["report", str(tmp_path), "--out", str(report)]))
    assert out.read_text() == "before" and out.stat().st_mtime_ns == stat.st_mtime_ns
    assert report.read_text() == "before"
