"""`fairdiff study lora-vs-w --quick` end to end on the bundled model, its reuse on a rerun, and bad input."""

from __future__ import annotations

import time

import pandas as pd
import pytest
from typer.testing import CliRunner

from cli_helpers import error_line
from fairdiff.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "lvw"
    result = runner.invoke(app, ["study", "lora-vs-w", "--out", str(out), "--quick"])
    assert result.exit_code == 0, result.output
    return out, result


def test_quick_run_measures_every_part(quick_run):
    out, result = quick_run
    numbers = pd.read_parquet(out / "claims" / "numbers.parquet")
    by = numbers.groupby("measure")
    measures = set(numbers["measure"])
    want = {
        "bias", "bias_difference", "validity", "fd", "explicit_accuracy", "negative_response", "revealing_rate",
        "train_seconds", "edit_fit_seconds", "lora_relative_error", "overhead_ratio", "restored_bit_exact",
    }  # fmt: skip
    assert want <= measures, want - measures
    # the same recipe trained both ways, the overhead of each variant, each rank of the edit
    assert set(by.get_group("train_seconds")["arm"]) == {"lora-study", "finetune-study"}
    assert set(by.get_group("overhead_ratio")["arm"]) == {"lora-unmerged", "lora-merged", "edit"}
    errors = by.get_group("lora_relative_error").set_index("arm")["value"]
    assert errors["edit-rank1"] > errors["edit-rank2"] > 0  # SVD truncation: a higher rank loses less
    restored = by.get_group("restored_bit_exact").set_index("arm")["value"]
    assert restored.to_dict() == {"lora-removed": 1.0, "edit-removed": 1.0}
    diffs = by.get_group("bias_difference")
    assert ((diffs["ci_low"] <= diffs["value"] + 1e-12) & (diffs["value"] <= diffs["ci_high"] + 1e-12)).all()
    # every arm of the mitigation issue on the held-out suites
    held = numbers[(numbers["stage"] == "audit-heldout") & (numbers["measure"] == "bias")]
    assert {"base", "lora-shipped", "lora-study", "finetune-study", "edit-uce", "guidance", "quota", "negative"} == set(
        held["arm"]
    )


def test_quick_run_writes_one_self_contained_report(quick_run):
    out, result = quick_run
    html = (out / "claims" / "report.html").read_text()
    for cid in ("C1", "C2", "C3", "C4", "C5a", "C7"):
        assert f'id="{cid}"' in html
    assert "<script" not in html and "http://" not in html.replace("http-equiv", "")
    verdicts = pd.read_csv(out / "claims" / "verdicts.csv")
    assert set(verdicts["claim_verdict"]) <= {"supported", "not supported", "mixed", "not measured"}
    # the verdict shown is the one computed: C1's part reads the overhead row
    c1 = verdicts[verdicts["claim"] == "C1"].iloc[0]
    assert c1["rows"] == 1 and c1["part_verdict"] in html


def test_rerun_reuses_every_stage(quick_run):
    out, _ = quick_run
    stages = ("train-lora", "train-finetune", "edits", "audit-heldout", "audit-keep", "audit-concepts", "overhead")
    marks = {s: (out / s / "done.json").stat().st_mtime_ns for s in stages}
    t0 = time.perf_counter()
    result = runner.invoke(app, ["study", "lora-vs-w", "--out", str(out), "--quick"])
    assert result.exit_code == 0, result.output
    assert {s: (out / s / "done.json").stat().st_mtime_ns for s in stages} == marks  # nothing ran again
    assert result.output.count("reused") == len(stages)
    assert time.perf_counter() - t0 < 30


def test_bad_out_is_one_line(tmp_path):
    a_file = tmp_path / "f"
    a_file.write_text("x")
    assert "is a file" in error_line(runner.invoke(app, ["study", "lora-vs-w", "--out", str(a_file), "--quick"]))
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "mine.txt").write_text("x")
    line = error_line(runner.invoke(app, ["study", "claims", "--out", str(busy), "--quick", "--no-stack"]))
    assert "no study wrote" in line


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("heldout_images: 3\nbogus: 1\n", "bogus"),
        ("heldout_images: many\n", "heldout_images"),
        ("ranks: []\n", "ranks"),
        ("overhead_rounds: 1\n", "overhead_rounds"),
        ("- 1\n- 2\n", "mapping"),
        ("a: [1\n", "study config"),
    ],
)
def test_malformed_study_config_is_one_line(tmp_path, text, match):
    cfg = tmp_path / "study.yaml"
    cfg.write_text(text)
    line = error_line(runner.invoke(app, ["study", "lora-vs-w", "--out", str(tmp_path / "o"), "--config", str(cfg)]))
    assert match in line and "study config" in line
    assert not (tmp_path / "o").exists()  # nothing written before the config is checked


def test_claims_reuses_lora_vs_w_and_marks_stack_claims_not_measured(quick_run):
    out, _ = quick_run
    result = runner.invoke(app, ["study", "claims", "--out", str(out), "--quick", "--no-stack"])
    assert result.exit_code == 0, result.output
    verdicts = pd.read_csv(out / "claims" / "verdicts.csv").drop_duplicates("claim").set_index("claim")
    assert set(verdicts.index) == {"C1", "C2", "C3", "C4", "C5", "C5a", "C6", "C7", "C8"}
    assert (verdicts.loc[["C5", "C6", "C8"], "claim_verdict"] == "not measured").all()
    assert (verdicts.loc[["C1", "C2"], "claim_verdict"] != "not measured").all()
