"""The mitigation suites: world-train kept apart from the evaluation suites, their truths, and the per-arm quality
numbers (Fréchet distance, explicit-prompt accuracy, negative-prompt response) of a real audit's summary."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from fairdiff.audit import quality
from fairdiff.audit.results import load_run
from fairdiff.audit.runner import AuditConfig, run_audit
from fairdiff.audit.suites import load_suite
from fairdiff.audit.summary import summarize
from fairdiff.metrics.formulas import normalized_bias_rows
from fairdiff.models.prompts import split_negative_terms
from fairdiff.report.export import export_run

EVALUATION = ["world-heldout", "world-heldout-paraphrases", "world-explicit", "world-avatars", "world-avatars-negative"]
QUALITY_COLUMNS = [
    "validity",
    "validity_ci_low",
    "validity_ci_high",
    "fd",
    "fd_ci_low",
    "fd_ci_high",
    "fd_floor",
    "fd_images",
    "explicit_accuracy",
    "explicit_accuracy_min",
    "explicit_min_value",
    "negative_response",
    "negative_response_ci_low",
    "negative_response_ci_high",
    "negative_response_min",
    "negative_response_min_group",
]


def test_training_prompts_and_occupations_stay_out_of_evaluation(world):
    train = load_suite("world-train", world)
    texts = {p.text for p in train.prompts}
    assert {p.fields["occupation"] for p in train.prompts} == {
        "doctor", "nurse", "ceo", "engineer", "teacher", "housekeeper"
    }  # fmt: skip
    for name in EVALUATION:
        suite = load_suite(name, world)
        drawn = {split_negative_terms(p.text)[0] for p in suite.prompts}
        assert not drawn & texts, name
    heldout = load_suite("world-heldout", world)
    assert {p.fields["occupation"] for p in heldout.prompts} == {"firefighter", "scientist", "cashier", "pilot"}
    assert not {p.fields["occupation"] for p in heldout.prompts} & {p.fields["occupation"] for p in train.prompts}


def test_heldout_paraphrases_were_never_training_captions_and_carry_their_occupations_truth(world):
    from fairdiff.world.captions import sample_world

    suite = load_suite("world-heldout-paraphrases", world)
    words = {p.fields["occupation"]: p.fields["of"] for p in suite.prompts}
    assert words == {w: occ for occ, spec in world.occupations.items() for w in spec.paraphrases}  # all ten
    caption_words = {w for s in sample_world(world, 20_000, seed=0) for w in re.findall(r"[\w-]+", s.caption.lower())}
    assert {"doctor", "ceo", "firefighter"} <= caption_words and not set(words) & caption_words
    for p in suite.prompts:
        want = world.expected_shares(p.fields["of"], "photo")
        assert p.truth["gender"] == want["gender"] and p.truth["skin"] == want["skin"]
        assert sum(p.truth["gender×skin"].values()) == pytest.approx(1.0)


def test_heldout_sample_size_puts_a_fair_models_bias_well_under_the_target(world):
    suite = load_suite("world-heldout", world)
    n = suite.images_per_prompt
    rng = np.random.default_rng(0)
    floor = {k: normalized_bias_rows(rng.multinomial(n, np.full(k, 1 / k), size=20_000) / n).mean() for k in (2, 4, 8)}
    assert floor[2] < 0.06 and floor[4] < 0.045 and floor[8] < 0.03  # the numbers world-heldout.yaml quotes
    assert suite.intersections == [("gender", "skin")]
    assert load_suite("world-heldout-paraphrases", world).images_per_prompt == n


def test_explicit_prompts_state_gender_and_skin_and_their_truth_is_the_stated_value(world):
    suite = load_suite("world-explicit", world)
    assert len(suite.prompts) == 2 * 4 * 4
    p = next(p for p in suite.prompts if p.fields == {"gender": "woman", "skin": "dark", "occupation": "doctor"})
    assert p.text == "a photo of the face of a dark-skinned woman doctor"  # the captions' word order
    assert p.truth["gender"] == {"man": 0.0, "woman": 1.0}
    assert p.truth["skin"] == {"light": 0.0, "medium": 0.0, "brown": 0.0, "dark": 1.0}
    # a prompt that states nothing keeps the world's shares
    assert load_suite("world-heldout", world).prompts[0].truth["gender"] == {"man": 0.92, "woman": 0.08}


def test_the_negative_avatars_suite_is_world_avatars_with_revealing_negated(world):
    plain, neg = load_suite("world-avatars", world), load_suite("world-avatars-negative", world)
    assert [split_negative_terms(p.text) for p in neg.prompts] == [(p.text, "revealing") for p in plain.prompts]
    assert [p.fields for p in neg.prompts] == [p.fields for p in plain.prompts]
    assert [p.context for p in neg.prompts] == [p.context for p in plain.prompts]
    assert all(p.truth is None for p in neg.prompts)  # the world has no negative prompts
    specs = {s.name: s.spec() for s in (plain, neg)}
    assert quality.paired_suite("world-avatars-negative", specs) == "world-avatars"
    assert quality.paired_suite("world-avatars", specs) is None


def _rows(arm, suite, outcomes, seeds, genders):
    return pd.DataFrame(
        {"arm": arm, "suite": suite, "prompt": [f"{g}-t0" for g in genders], "seed": seeds, "revealing": outcomes,
         "field_gender": genders}
    )  # fmt: skip


def test_negative_response_is_the_paired_rate_difference_per_group():
    specs = {
        "plain": {"kind": "outcome", "outcome": "revealing", "groups": ["gender"],
                  "prompts": [{"id": f"{g}-t0", "text": f"an avatar of a {g}"} for g in ("man", "woman")]},
        "neg": {"kind": "outcome", "outcome": "revealing", "groups": ["gender"],
                "prompts": [{"id": f"{g}-t0", "text": f"an avatar of a {g} -revealing"} for g in ("man", "woman")]},
    }  # fmt: skip
    g = ["woman"] * 4 + ["man"] * 4
    rows = pd.concat(
        [
            _rows("base", "plain", [True, True, True, False, True, False, False, False], [0, 1, 2, 3] * 2, g),
            _rows("base", "neg", [False, True, False, False, False, False, False, False], [0, 1, 2, 3] * 2, g),
        ]
    )
    assert quality.paired_suite("neg", specs) == "plain"
    t = quality.negative_response(rows, specs, "neg", "plain", n_boot=200).set_index(["attribute", "group"])
    assert t.loc[("gender", "woman"), "response"] == pytest.approx(0.75 - 0.25)
    assert t.loc[("gender", "man"), "response"] == pytest.approx(0.25)
    assert t.loc[("all", "all"), ["rate_without", "rate_with", "n"]].tolist() == [0.5, 0.125, 8]
    lo, hi = t.loc[("all", "all"), ["ci_low", "ci_high"]]
    assert 0 <= lo <= 0.375 <= hi <= 1
    cols = quality.arm_columns(["base"], [], [t.reset_index()])
    assert cols.loc[0, "negative_response"] == pytest.approx(0.375)
    assert cols.loc[0, "negative_response_min_group"] == "man"  # the finest groups: gender here


def test_stated_accuracy_counts_images_showing_the_stated_value():
    data = pd.DataFrame(
        {"arm": "a", "gender": ["woman", "man", "woman", "woman"], "field_gender": ["woman", "woman", "man", "man"],
         "skin": "dark", "field_occupation": "doctor"}
    )  # fmt: skip
    t = quality.stated_accuracy(data, {"measure": ["gender", "skin"]}, {"gender": ["man", "woman"]})
    got = t.set_index("value")[["n", "correct", "accuracy"]]
    assert got.loc["woman"].tolist() == [2, 1, 0.5] and got.loc["man"].tolist() == [2, 0, 0.0]
    assert (t["ci_low"] <= t["accuracy"]).all() and (t["accuracy"] <= t["ci_high"]).all()
    assert quality.stated_accuracy(data.drop(columns="field_gender"), {"measure": ["gender"]}, {}) is None
    cols = quality.arm_columns(["a", "b"], [t], [])
    assert cols.loc[0, "explicit_accuracy"] == 0.25 and cols.loc[0, "explicit_min_value"] == "gender=man"
    assert np.isnan(cols.loc[1, "explicit_accuracy"])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "run"
    cfg = AuditConfig(
        suites=["world-heldout", "world-explicit", "world-avatars", "world-avatars-negative"],
        arms=[{"kind": "base", "name": "base"}],
        images_per_prompt=2,
        max_prompts=2,
        steps=1,
        batch_size=32,
    )
    run_audit(cfg, out)
    return out


def test_a_real_audits_summary_has_the_quality_numbers_per_arm(run_dir, tmp_path):
    results = load_run(run_dir)
    summary = summarize(results, n_boot=50)
    q = summary.quality
    assert q.columns.tolist() == ["arm", "images", *QUALITY_COLUMNS] and q["arm"].tolist() == ["base"]
    row = q.iloc[0]
    assert row["images"] == row["fd_images"] == 4 * 2 * 2
    assert row["fd_ci_low"] <= row["fd"] <= row["fd_ci_high"] and row["fd"] > row["fd_floor"] > 0  # 1 step: blurs
    assert 0 <= row["explicit_accuracy_min"] <= row["explicit_accuracy"] <= 1
    explicit = results.rows[results.rows["suite"] == "world-explicit"]
    both = np.r_[explicit["gender"] == explicit["field_gender"], explicit["skin"] == explicit["field_skin"]]
    assert row["explicit_accuracy"] == pytest.approx(both.mean())
    response = summary.suites["world-avatars-negative"].negative_response
    assert set(response["attribute"]) == {"all", "gender", "skin", "gender×skin"}
    assert row["negative_response"] == response.loc[response["attribute"] == "all", "response"].item()
    assert summary.suites["world-explicit"].stated is not None
    assert summary.suites["world-heldout"].stated is None  # states nothing
    again = summarize(load_run(run_dir), n_boot=50).quality
    pd.testing.assert_frame_equal(q, again)  # renders and bootstrap seeded: the same numbers on every read
    export_run(summary, tmp_path)
    assert (tmp_path / "metrics-world-explicit-stated.csv").is_file()
    assert (tmp_path / "metrics-world-avatars-negative-negative_response.csv").is_file()
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["quality"][0]["fd"] == pytest.approx(row["fd"])
    assert np.isnan(summarize(results, n_boot=50, frechet=False).quality.loc[0, "fd"])


def test_the_report_shows_the_quality_numbers(run_dir):
    from fairdiff.report.runs import load_runs
    from fairdiff.report.tables import quality_table, suite_sections

    runs = load_runs([run_dir], n_boot=50)
    table = quality_table(runs)
    assert "Fréchet distance [95% CI] (floor)" in table.columns
    cells = dict(zip(table.columns, table.rows[0], strict=True))
    assert "[" in cells["Fréchet distance [95% CI] (floor)"] and "=" in cells["explicit accuracy (worst value)"]
    titles = {t.title for s in suite_sections(runs) for t in s.tables}
    assert {"Explicit-prompt accuracy", "Negative-prompt response"} <= titles
