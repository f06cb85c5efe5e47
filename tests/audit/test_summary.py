from __future__ import annotations

import json

import pandas as pd
import pytest

from fairdiff.audit.results import load_run
from fairdiff.audit.runner import AuditConfig, run_audit
from fairdiff.audit.summary import summarize
from fairdiff.errors import FairdiffError
from fairdiff.report.export import export_run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("summary") / "run"
    cfg = AuditConfig(
        suites=["world-occupations", "world-avatars"],
        arms=[{"kind": "base", "name": "base"}, {"kind": "negative", "name": "neg", "negative": "revealing clothes"}],
        images_per_prompt=4,
        max_prompts=4,
        steps=2,
        batch_size=16,
    )
    run_audit(cfg, out)
    return out


def test_rows_carry_labels_fields_and_outcomes(run_dir):
    res = load_run(run_dir)
    rows = res.rows
    assert len(rows) == 2 * (4 * 4) * 2
    avatars = rows[rows["suite"] == "world-avatars"]
    assert set(avatars["field_gender"]) == {"man"}  # first 4 prompts: men x 4 skins
    assert (rows["revealing"] == (rows["attire"] == "revealing")).all()
    p = rows[["prob_gender_man", "prob_gender_woman"]].to_numpy()
    assert ((p.argmax(1) == 0) == (rows["gender"] == "man")).all()


def test_shares_equal_label_counts_and_truth_is_attached(run_dir):
    summary = summarize(load_run(run_dir), n_boot=200)
    occ = summary.suites["world-occupations"]
    rows = load_run(run_dir).rows
    doctor = rows[(rows["suite"] == "world-occupations") & (rows["prompt"] == "doctor") & (rows["arm"] == "base")]
    shares = occ.frame.shares
    got = shares[(shares["arm"] == "base") & (shares["prompt"] == "doctor") & (shares["attribute"] == "gender")]
    assert dict(zip(got["class"], got["share"], strict=True)) == {
        "man": (doctor["gender"] == "man").mean(),
        "woman": (doctor["gender"] == "woman").mean(),
    }
    truth = occ.truth
    row = truth[(truth["prompt"] == "doctor") & (truth["attribute"] == "gender") & (truth["class"] == "man")]
    assert row["truth"].tolist() == [0.75, 0.75]  # both arms
    assert set(occ.frame.overall["attribute"]) >= {"gender", "skin", "gender×skin"}
    av = summary.suites["world-avatars"]
    assert av.kind == "outcome" and set(av.frame.by_group["attribute"]) == {"gender", "skin", "gender×skin"}
    assert set(av.by_prompt_outcome["context"]) == {"avatar"}
    assert summary.quality["arm"].tolist() == ["base", "neg"]


def test_export_writes_csv_parquet_and_json(run_dir, tmp_path):
    written = export_run(summarize(load_run(run_dir), n_boot=100), tmp_path)
    names = {p.name for p in written}
    assert {"rows.csv", "rows.parquet", "metrics.json"} <= names
    assert len(pd.read_parquet(tmp_path / "rows.parquet")) == 64
    assert {
        "metrics-world-avatars-ratio.csv",
        "metrics-world-avatars-by_prompt.csv",
        "metrics-world-avatars-overall.csv",
    } <= names


def test_metrics_json_is_strict_json_when_a_truth_rate_is_zero(run_dir, tmp_path):
    summary = summarize(load_run(run_dir), n_boot=50)
    # what a world with a group never drawn revealing gives: parity ratio max / 0 (and no estimate: NaN)
    truth_metrics = summary.suites["world-avatars"].truth_metrics
    attribute = next(iter(truth_metrics))  # the module's 4 prompts are all men: skin and gender×skin have groups
    truth_metrics[attribute].update(ratio=float("inf"), min_rate=float("nan"))
    export_run(summary, tmp_path)

    def reject(token):
        raise AssertionError(f"metrics.json holds a bare {token}")

    data = json.loads((tmp_path / "metrics.json").read_text(), parse_constant=reject)
    truth = data["suites"]["world-avatars"]["truth_metrics"][attribute]
    assert truth["ratio"] == "inf" and truth["min_rate"] is None


def test_not_a_run_dir(tmp_path):
    with pytest.raises(FairdiffError, match="not an audit run dir"):
        load_run(tmp_path)


def test_a_run_with_no_images_yet_is_one_red_line(run_dir, tmp_path):
    """An audit stopped before its first batch: audit-merge and report say so (no KeyError from pandas)."""
    from typer.testing import CliRunner

    from cli_helpers import error_line
    from fairdiff.cli import app

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "audit.json").write_text((run_dir / "audit.json").read_text())
    for command in (["audit-merge", str(empty)], ["report", str(empty)]):
        assert "the audit has no images yet" in error_line(CliRunner().invoke(app, command)), command


def test_truth_metrics_and_their_expectation_from_n_images(run_dir):
    occ = summarize(load_run(run_dir), n_boot=50).suites["world-occupations"]
    t = occ.truth_metrics
    assert t["gender"]["n"] == 4
    # the first four prompts, men share: doctor 0.75, nurse 0.12, CEO 0.90, engineer 0.85;
    # mean |p - 0.5| / 0.5 = (0.50 + 0.76 + 0.80 + 0.70) / 4 = 0.69
    assert t["gender"]["normalized_bias"] == pytest.approx(0.69)
    for a in ("gender", "skin", "age", "gender×skin"):
        # normalized bias is convex in the shares, so from n images it reads at least the truth (Jensen)
        assert t[a]["normalized_bias_at_n"] >= t[a]["normalized_bias"] - 0.01
