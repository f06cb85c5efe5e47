"""`fairdiff demo` (the README's main job) runs base against the shipped mitigations and writes the report."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from fairdiff.cli import app
from fairdiff.world.shipped import EDIT_UCE, LORA_BALANCED


def test_the_shipped_mitigations_exist():
    assert (LORA_BALANCED / "adapter_model.safetensors").is_file() and (LORA_BALANCED / "card.json").is_file()
    assert EDIT_UCE.is_file()


def test_demo_runs_base_against_the_shipped_mitigations(tmp_path):
    out = tmp_path / "demo"
    args = ["demo", "-n", "1", "--steps", "2", "--max-prompts", "2", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    arms = [a["name"] for a in json.loads((out / "audit.json").read_text())["arms"]]
    assert arms == ["base", "guided", "guided-no-revealing", "lora-balanced", "edit-uce", "quota"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert {r["arm"] for r in metrics["suites"]["world-occupations"]["overall"]} == set(arms)
    html = (out / "report.html").read_text()
    assert all(name in html for name in arms)
