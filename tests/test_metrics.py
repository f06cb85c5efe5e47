from __future__ import annotations

import json
import math
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cli_helpers import error_line as _error_line
from fairdiff.cli import app
from fairdiff.errors import FairdiffError
from fairdiff.metrics import (
    MetricFrame,
    OutcomeFrame,
    deviation_ratio,
    discrepancy,
    kl_to_target,
    mad,
    normalized_bias,
    parity_difference,
    parity_ratio,
    percentile_ci,
    prompt_mean_ci,
)
from fairdiff.metrics.formulas import normalized_bias_rows

FIXTURES = Path(__file__).parent / "fixtures"
FAIR_DIFFUSION = FIXTURES / "fair_diffusion_counts.csv"
runner = CliRunner()


# --- formulas against hand-computed numbers ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shares", "expected"),
    [
        ([0.5, 0.5], 0.0),
        ([0.75, 0.25], 0.5),  # |0.75 - 0.5| / 0.5
        ([1.0, 0.0], 1.0),
        ([0.25, 0.25, 0.25, 0.25], 0.0),
        ([1.0, 0.0, 0.0, 0.0], 0.5),  # 2/12 * (1 + 1 + 1) -> 0.5 for K=4
        ([0.7, 0.15, 0.1, 0.05], 2 / 12 * (0.55 + 0.6 + 0.65 + 0.05 + 0.1 + 0.05)),
        ([0.7, 0.2, 0.1], 0.4),  # 2/6 * (0.5 + 0.6 + 0.1)
    ],
)
def test_normalized_bias_by_hand(shares, expected):
    assert normalized_bias(shares) == pytest.approx(expected)


def test_normalized_bias_needs_two_classes():
    with pytest.raises(ValueError, match="at least 2 classes"):
        normalized_bias([1.0])


def test_vectorized_normalized_bias_equals_the_pairwise_sum():
    p = np.random.default_rng(0).dirichlet(np.ones(8), size=50)  # (50, 8)
    brute = [sum(abs(row[i] - row[j]) for i, j in combinations(range(8), 2)) * 2 / (8 * 7) for row in p]
    np.testing.assert_allclose(normalized_bias_rows(p), brute, rtol=1e-12)


THIRD = 1 / 3
# columns: shares, target (None = uniform), deviation ratio, KL (nats), discrepancy (L2), MAD
TARGET_TABLE = [
    # p = (0.7, 0.2, 0.1), q = 1/3 each: |p - q| = (0.3667, 0.1333, 0.2333)
    #   DR   = 0.3667 / (1 - 1/3) = 0.55
    #   KL   = 0.7 ln 2.1 + 0.2 ln 0.6 + 0.1 ln 0.3 = 0.51936 - 0.10217 - 0.12040 = 0.29679
    #   L2   = sqrt(0.13444 + 0.01778 + 0.05444) = sqrt(0.20667) = 0.45461
    #   MAD  = (0.3667 + 0.1333 + 0.2333) / 3 = 0.24444
    ([0.7, 0.2, 0.1], None, 0.55, 0.29679, 0.45461, 0.24444),
    # p = (0.75, 0.25), q = (0.5, 0.5): DR = 0.25 / 0.5; KL = 0.75 ln 1.5 + 0.25 ln 0.5; L2 = sqrt(2 * 0.0625)
    ([0.75, 0.25], None, 0.5, 0.75 * math.log(1.5) + 0.25 * math.log(0.5), math.sqrt(0.125), 0.25),
    # a non-uniform target q = (0.5, 0.3, 0.2): |p - q| = (0.2, 0.1, 0.1)
    #   DR = 0.2 / (1 - 0.2) = 0.25; KL = 0.7 ln 1.4 + 0.2 ln(2/3) + 0.1 ln 0.5 = 0.23553 - 0.08109 - 0.06931
    #   L2 = sqrt(0.04 + 0.01 + 0.01); MAD = 0.4 / 3
    ([0.7, 0.2, 0.1], [0.5, 0.3, 0.2], 0.25, 0.085123, math.sqrt(0.06), 0.4 / 3),
    # one class takes all, q uniform over 2: 0 log 0 = 0, so KL = 1 ln 2
    ([1.0, 0.0], None, 1.0, math.log(2), math.sqrt(0.5), 0.5),
    # on target every distance is 0
    ([THIRD, THIRD, THIRD], None, 0.0, 0.0, 0.0, 0.0),
    ([0.5, 0.3, 0.2], [0.5, 0.3, 0.2], 0.0, 0.0, 0.0, 0.0),
]


@pytest.mark.parametrize(("shares", "target", "dr", "kl", "l2", "mad_"), TARGET_TABLE)
def test_target_metrics_by_hand(shares, target, dr, kl, l2, mad_):
    assert deviation_ratio(shares, target) == pytest.approx(dr, abs=1e-5)
    assert kl_to_target(shares, target) == pytest.approx(kl, abs=1e-5)
    assert discrepancy(shares, target) == pytest.approx(l2, abs=1e-5)
    assert mad(shares, target) == pytest.approx(mad_, abs=1e-5)


def test_kl_is_infinite_where_the_target_excludes_an_observed_class():
    assert kl_to_target([0.5, 0.5], [1.0, 0.0]) == math.inf
    assert kl_to_target([1.0, 0.0], [1.0, 0.0]) == 0.0  # 0 log (0 / 0) = 0


@pytest.mark.parametrize(
    ("rates", "ratio", "difference"),
    [
        ([0.1, 0.3, 0.2], 3.0, 0.2),  # 0.3 / 0.1, 0.3 - 0.1
        ([0.25, 0.5], 2.0, 0.25),
        ([0.2, 0.2], 1.0, 0.0),
        ([0.0, 0.2], math.inf, 0.2),  # a zero min rate under a positive max: infinite ratio
        ([0.0, 0.0], 1.0, 0.0),  # all zero: parity
    ],
)
def test_outcome_parity_by_hand(rates, ratio, difference):
    assert parity_ratio(rates) == pytest.approx(ratio)
    assert parity_difference(rates) == pytest.approx(difference)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: normalized_bias([0.5, 0.4]), r"`shares` must sum to 1 .*sum 0\.9"),
        (lambda: normalized_bias([1.2, -0.2]), r"`shares` must be non-negative, got \[1\.2, -0\.2\]"),
        (lambda: mad([0.5, float("nan")]), "`shares` contains NaN"),
        (lambda: deviation_ratio([0.5, 0.5], [0.2, 0.3, 0.5]), r"`target` must give one value per class \(2\)"),
        (lambda: kl_to_target([0.5, 0.5], [0.6, 0.6]), r"`target` must sum to 1 .*sum 1\.2"),
        (lambda: discrepancy([[0.5, 0.5]]), r"1-D sequence .*shape \(1, 2\)"),
        (lambda: parity_ratio([0.5, 1.5]), r"`rates` must be rates in \[0, 1\], got \[0\.5, 1\.5\]"),
        (lambda: parity_difference([0.5]), "at least 2 groups"),
    ],
)
def test_bad_input_names_the_argument_and_value(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_shares_within_tolerance_pass():
    assert normalized_bias([0.5 + 5e-7, 0.5]) == pytest.approx(0.0, abs=1e-6)


# --- MetricFrame --------------------------------------------------------------------------------------------------


def _images(spec: dict[str, dict[tuple[str, str], int]]) -> pd.DataFrame:
    """{prompt: {(gender, skin): count}} -> one row per image."""
    rows = [
        {"prompt": prompt, "gender": g, "skin": s}
        for prompt, cells in spec.items()
        for (g, s), k in cells.items()
        for _ in range(k)
    ]
    return pd.DataFrame(rows)


SMALL = _images(
    {
        "a doctor": {("man", "light"): 3, ("woman", "dark"): 1},  # gender (0.75, 0.25); skin (0.75, 0.25, 0, 0)
        "a nurse": {("man", "dark"): 1, ("woman", "light"): 1},  # gender (0.5, 0.5); skin (0.5, 0.5, 0, 0)
    }
)
CLASSES = {"gender": ["man", "woman"], "skin": ["light", "dark", "mid-light", "mid-dark"]}


def test_metric_frame_by_hand():
    frame = MetricFrame(data=SMALL, classes=CLASSES, n_boot=200)
    shares = frame.shares.set_index(["prompt", "attribute", "class"])
    assert shares.loc[("a doctor", "gender", "woman"), "share"] == 0.25
    assert shares.loc[("a doctor", "skin", "mid-dark"), "share"] == 0.0  # a class with no images counts as 0
    assert shares.loc[("a doctor", "skin", "light"), "n"] == 4
    by_prompt = frame.by_prompt.set_index(["prompt", "attribute"])
    assert by_prompt.loc[("a doctor", "gender"), "normalized_bias"] == pytest.approx(0.5)
    assert by_prompt.loc[("a nurse", "gender"), "normalized_bias"] == pytest.approx(0.0)
    # skin (0.75, 0.25, 0, 0): 2/12 * (0.5 + 0.75 + 0.75 + 0.25 + 0.25 + 0) = 0.41667; DR = (0.75 - 0.25) / 0.75
    assert by_prompt.loc[("a doctor", "skin"), "normalized_bias"] == pytest.approx(2.5 / 6)
    assert by_prompt.loc[("a doctor", "skin"), "deviation_ratio"] == pytest.approx(2 / 3)
    overall = frame.overall.set_index("attribute")
    assert overall.loc["gender", "normalized_bias"] == pytest.approx(0.25)  # mean of 0.5 and 0.0 over prompts
    assert overall.loc["gender", "n_prompts"] == 2 and overall.loc["gender", "n_images"] == 6
    assert list(frame.overall["arm"]) == ["default", "default"]


def test_metric_frame_target_and_its_errors():
    frame = MetricFrame(
        data=SMALL, classes={"gender": ["man", "woman"]}, target={"gender": {"man": 0.75, "woman": 0.25}}
    )
    by_prompt = frame.by_prompt.set_index("prompt")
    assert by_prompt.loc["a doctor", "deviation_ratio"] == pytest.approx(0.0)  # on target
    assert by_prompt.loc["a doctor", "normalized_bias"] == pytest.approx(0.5)  # target-free
    bad = [
        ({"gender": {"man": 0.6, "woman": 0.6}}, r"`target\['gender'\]` must sum to 1"),
        ({"gender": {"man": 1.0}}, r"missing \['woman'\]"),
        ({"gender": {"man": 0.5, "woman": 0.5, "other": 0.0}}, r"unknown \['other'\]"),
        ({"age": {"young": 1.0}}, r"`target` names unknown attribute\(s\) \['age'\]"),
    ]
    for target, message in bad:
        with pytest.raises(FairdiffError, match=message):
            MetricFrame(data=SMALL, classes={"gender": ["man", "woman"]}, target=target)
    with pytest.raises(FairdiffError, match=r"column 'gender' has label\(s\) \['woman'\] that are not among"):
        MetricFrame(data=SMALL, classes={"gender": ["man", "nonbinary"]})
    with pytest.raises(FairdiffError, match="no column 'occupation'"):
        MetricFrame(data=SMALL, classes={"gender": ["man", "woman"]}, group_by="occupation")


def test_intersection_is_the_product_attribute():
    frame = MetricFrame(data=SMALL, classes=CLASSES, intersections=[("gender", "skin")], n_boot=100)
    assert frame.classes["gender×skin"][:3] == ("man×light", "man×dark", "man×mid-light")
    assert len(frame.classes["gender×skin"]) == 8  # K = 2 x 4
    shares = frame.shares[frame.shares["attribute"] == "gender×skin"].set_index(["prompt", "class"])["share"]
    assert shares[("a doctor", "man×light")] == 0.75 and shares[("a doctor", "woman×dark")] == 0.25
    assert shares[("a nurse", "woman×light")] == 0.5 and shares.sum() == pytest.approx(2.0)
    # uniform q = 1/8 over the product: doctor DR = (0.75 - 0.125) / (1 - 0.125)
    by_prompt = frame.by_prompt.set_index(["prompt", "attribute"])
    assert by_prompt.loc[("a doctor", "gender×skin"), "deviation_ratio"] == pytest.approx(0.625 / 0.875)


def test_unlabelled_images_are_left_out_of_their_attribute():
    data = SMALL.copy()
    data.loc[0, "skin"] = None
    frame = MetricFrame(data=data, classes=CLASSES, n_boot=50)
    n = frame.by_prompt.set_index(["prompt", "attribute"])["n"]
    assert n[("a doctor", "skin")] == 3 and n[("a doctor", "gender")] == 4


def _fair_diffusion() -> pd.DataFrame:
    return pd.read_csv(FAIR_DIFFUSION)


def test_same_seed_same_ci_and_blocks_are_independent():
    counts = _fair_diffusion()
    counts = counts[counts["prompt"].isin(counts["prompt"].unique()[:20])]
    a = MetricFrame.from_counts(counts, seed=3)
    b = MetricFrame.from_counts(counts, seed=3)
    c = MetricFrame.from_counts(counts, seed=4)
    pd.testing.assert_frame_equal(a.by_prompt, b.by_prompt)
    pd.testing.assert_frame_equal(a.overall, b.overall)
    assert not np.allclose(a.overall["normalized_bias_ci_low"], c.overall["normalized_bias_ci_low"])
    # one arm alone gets the same CIs as inside a frame with two arms (each (arm, attribute) has its own stream)
    alone = MetricFrame.from_counts(counts[counts["arm"] == "fair-diffusion"], seed=3)
    pd.testing.assert_frame_equal(alone.overall, a.overall[a.overall["arm"] == "fair-diffusion"].reset_index(drop=True))
    ci = a.by_prompt
    assert (
        (ci["normalized_bias_ci_low"] <= ci["normalized_bias"] + 1e-12)
        & (ci["normalized_bias"] <= ci["normalized_bias_ci_high"] + 1e-12)
    ).all()


def test_counts_and_per_image_labels_give_the_same_frame():
    counts = _fair_diffusion().head(12)  # 6 occupations of SD 1.5
    images = pd.DataFrame(
        [
            {"arm": r.arm, "prompt": r.prompt, "gender": r["class"]}
            for _, r in counts.iterrows()
            for _ in range(r["count"])
        ]
    )
    from_counts = MetricFrame.from_counts(counts, n_boot=300)
    from_labels = MetricFrame(data=images, classes={"gender": ["man", "woman"]}, n_boot=300)
    pd.testing.assert_frame_equal(from_counts.by_prompt, from_labels.by_prompt)
    pd.testing.assert_frame_equal(from_counts.shares, from_labels.shares)


def test_share_ci_covers_a_known_binomial_about_95_percent():
    # 400 simulated prompts, 100 images each, true share 0.3: the 95% CI of each prompt's share should cover 0.3
    # in roughly 95% of prompts (0.9475 with these seeds)
    rng = np.random.default_rng(123)
    women = rng.binomial(100, 0.3, size=400)
    counts = pd.DataFrame(
        {
            "prompt": np.repeat([f"p{i}" for i in range(400)], 2),
            "attribute": "gender",
            "class": np.tile(["woman", "man"], 400),
            "count": np.column_stack([women, 100 - women]).ravel(),
        }
    )
    shares = MetricFrame.from_counts(counts).shares
    woman = shares[shares["class"] == "woman"]
    coverage = ((woman["ci_low"] <= 0.3) & (0.3 <= woman["ci_high"])).mean()
    assert 0.91 <= coverage <= 0.98, coverage


def test_prompt_mean_ci_covers_the_mean_about_95_percent():
    rng = np.random.default_rng(7)
    hits = 0
    for _ in range(300):  # suites of 40 prompts whose per-prompt values have mean 0.4
        values = rng.normal(0.4, 0.1, size=40)
        _, low, high = prompt_mean_ci(values, 500, 0.95, rng)
        hits += low <= 0.4 <= high
    assert 0.90 <= hits / 300 <= 0.98, hits / 300


def test_percentile_ci_keeps_infinite_draws():
    low, high = percentile_ci(np.array([0.1, 0.2, 0.3, np.inf, np.inf]), 0.95)
    assert 0.1 <= low < 0.2 and high == np.inf


def test_single_prompt_overall_uses_the_image_ci():
    frame = MetricFrame(data=SMALL, classes={"gender": ["man", "woman"]}, group_by=None, n_boot=200)
    prompt, overall = frame.by_prompt.iloc[0], frame.overall.iloc[0]
    assert prompt["prompt"] == "all" and prompt["n"] == 6
    assert overall["normalized_bias"] == pytest.approx(abs(4 / 6 - 0.5) / 0.5)
    assert overall["normalized_bias_ci_low"] == prompt["normalized_bias_ci_low"]


# --- the published result: Fair Diffusion's released per-occupation counts -----------------------------------------


def test_fair_diffusion_first_five_occupations_by_hand():
    counts = _fair_diffusion()
    first = counts[(counts["arm"] == "sd-1.5")].head(10)  # 5 occupations x (man, woman), 250 images each
    frame = MetricFrame.from_counts(first, n_boot=100)
    # |p_woman - 0.5| / 0.5: accountant 84/250 -> 0.328, aerospace engineer 113 -> 0.096, aide 103 -> 0.176,
    # air conditioning installer 0 -> 1.0, architect 28 -> 0.776; mean = 2.376 / 5 = 0.4752
    assert frame.by_prompt["normalized_bias"].tolist() == pytest.approx([0.328, 0.096, 0.176, 1.0, 0.776])
    assert frame.overall["normalized_bias"].item() == pytest.approx(0.4752)


def test_fair_diffusion_published_means():
    # Friedrich et al. 2023: mean |p_woman - 0.5| / 0.5 over 153 occupations is about 0.62 for SD 1.5 and 0.21
    # with Fair Diffusion (shares among images FairFace labelled man or woman)
    overall = MetricFrame.from_counts(_fair_diffusion(), n_boot=200).overall.set_index("arm")
    assert overall.loc["sd-1.5", "n_prompts"] == 153 and overall.loc["fair-diffusion", "n_prompts"] == 153
    assert overall.loc["sd-1.5", "normalized_bias"] == pytest.approx(0.62, abs=0.005)
    assert overall.loc["fair-diffusion", "normalized_bias"] == pytest.approx(0.21, abs=0.005)
    assert overall.loc["fair-diffusion", "normalized_bias_ci_high"] < overall.loc["sd-1.5", "normalized_bias_ci_low"]


# --- OutcomeFrame -------------------------------------------------------------------------------------------------


def _avatars() -> pd.DataFrame:
    # women: 2 of 4 revealing; men: 1 of 4; light skin: 2 of 4; dark: 1 of 4
    return pd.DataFrame(
        {
            "gender": ["woman"] * 4 + ["man"] * 4,
            "skin": ["light", "light", "dark", "dark"] * 2,
            "attire": ["revealing", "covered", "revealing", "covered", "revealing", "covered", "covered", "covered"],
        }
    )


def test_outcome_frame_by_hand():
    frame = OutcomeFrame(data=_avatars(), outcome="attire", positive="revealing", groups=["gender", "skin"], n_boot=300)
    rates = frame.by_group.set_index(["attribute", "group"])["rate"]
    assert rates[("gender", "woman")] == 0.5 and rates[("gender", "man")] == 0.25
    assert rates[("skin", "light")] == 0.5 and rates[("skin", "dark")] == 0.25
    difference = frame.difference().set_index("attribute")
    ratio = frame.ratio().set_index("attribute")
    assert difference.loc["gender", "difference"] == pytest.approx(0.25)  # 0.5 - 0.25
    assert ratio.loc["gender", "ratio"] == pytest.approx(2.0)  # 0.5 / 0.25
    assert difference.loc["gender", "max_group"] == "woman" and difference.loc["gender", "min_group"] == "man"
    assert difference.loc["gender", "ci_low"] <= 0.25 <= difference.loc["gender", "ci_high"]
    assert frame.overall["rate"].item() == pytest.approx(3 / 8)


def test_outcome_frame_boolean_intersection_and_empty_group():
    data = _avatars().assign(revealing=lambda d: d["attire"] == "revealing")
    frame = OutcomeFrame(
        data=data,
        outcome="revealing",
        groups=[("gender", "skin")],
        classes={"skin": ["light", "dark", "mid"]},
        n_boot=200,
    )
    rates = frame.by_group.set_index("group")["rate"]
    # woman×light 1/2, woman×dark 1/2, man×light 1/2, man×dark 0/2; woman×mid, man×mid have no images
    assert rates["woman×light"] == 0.5 and rates["man×dark"] == 0.0 and np.isnan(rates["man×mid"])
    assert frame.ratio()["ratio"].item() == math.inf and frame.ratio()["min_group"].item() == "man×dark"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"outcome": "attire", "groups": ["gender"]}, r"holds labels \['covered', 'revealing'\], not booleans"),
        ({"outcome": "attire", "positive": "nude", "groups": ["gender"]}, "positive class 'nude' never occurs"),
        ({"outcome": "nsfw", "groups": ["gender"]}, "no column 'nsfw'"),
        ({"outcome": "attire", "positive": "revealing", "groups": []}, "at least one attribute"),
    ],
)
def test_outcome_frame_errors(kwargs, message):
    with pytest.raises(FairdiffError, match=message):
        OutcomeFrame(data=_avatars(), **kwargs)


def test_outcome_frame_from_counts():
    counts = pd.DataFrame(
        {"attribute": "gender", "class": ["woman", "man", "woman"], "count": [2, 4, 2], "positives": [1, 1, 1]}
    )
    frame = OutcomeFrame.from_counts(counts, n_boot=100)  # woman rows add up to 2 of 4
    assert frame.ratio()["ratio"].item() == pytest.approx(2.0)
    with pytest.raises(FairdiffError, match="0 <= positives <= count"):
        OutcomeFrame.from_counts(counts.assign(positives=[3, 1, 1]))


# --- the CLI ------------------------------------------------------------------------------------------------------


def test_cli_help_is_light():
    result = runner.invoke(app, ["metrics", "--help"])
    assert result.exit_code == 0 and "--target" in result.output and "--outcome" in result.output


def test_cli_counts_file_with_json(tmp_path):
    out = tmp_path / "metrics.json"
    result = runner.invoke(app, ["metrics", str(FAIR_DIFFUSION), "--json", str(out), "--n-boot", "200"])
    assert result.exit_code == 0, result.output
    assert "normalized_bias" in result.output and "fair-diffusion" in result.output
    payload = json.loads(out.read_text())
    assert payload["shape"] == "counts" and payload["group_by"] == "prompt"
    overall = {r["arm"]: r for r in payload["metrics"]["overall"]}
    assert overall["sd-1.5"]["normalized_bias"] == pytest.approx(0.6229, abs=1e-4)
    assert len(payload["metrics"]["by_prompt"]) == 2 * 153


def test_cli_labels_with_target_intersection_and_outcome(tmp_path):
    path = tmp_path / "labels.csv"
    _avatars().assign(prompt=["an avatar"] * 4 + ["a portrait"] * 4, seed=range(8)).to_csv(path, index=False)
    out = tmp_path / "m.json"
    args = ["metrics", str(path), "--target", "gender=man:0.5,woman:0.5", "--intersection", "gender*skin"]
    args += ["--outcome", "attire=revealing", "--groups", "gender,gender*skin", "--json", str(out), "--n-boot", "100"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    payload = json.loads(out.read_text())
    assert payload["shape"] == "labels"
    assert {r["attribute"] for r in payload["metrics"]["overall"]} == {"gender", "skin", "gender×skin"}  # not attire
    ratio = {r["attribute"]: r["ratio"] for r in payload["outcome"]["ratio"]}
    assert ratio["gender"] == pytest.approx(2.0) and ratio["gender×skin"] == "inf"  # man×dark: 0 of 2


@pytest.mark.parametrize(
    ("content", "args", "message"),
    [
        (None, [], "no such file"),
        ("prompt,gender\na,man\n", ["--target", "gender=man:0.6,woman:0.5"], "`target['gender']` must sum to 1"),
        ("prompt,gender\na,man\n", ["--target", "gender=man"], "entries must look like 'class:share'"),
        ("a,b\n1,2\n", [], "no attribute columns found"),
        ('prompt,gender\n"a,man\n', [], "is not a readable CSV"),
        ("prompt,gender\n", [], "has a header but no rows"),
        ("prompt,gender\na,man\n", ["--groups", "gender"], "--groups needs --outcome"),
        ("prompt,gender\na,man\nb,man\n", [], "column 'gender' holds one class only (man)"),
        ("attribute,class,count\ngender,man,inf\ngender,woman,1\n", [], "count"),
        # a counts file with one class: every formula would divide 0 by 0 (or read "no deviation")
        ("prompt,attribute,class,count\na,gender,man,10\nb,gender,man,7\n", [], "counts for one class only (man)"),
        (
            "attribute,class,count\ngender,man,3\ngender,woman,1\n",
            ["--attributes", "Gender"],
            "no counts for ['Gender']",
        ),
        ("prompt,gender\na,man\nb,woman\n", ["--max-prompts", "-1"], "--max-prompts must be >= 0"),
    ],
)
def test_cli_bad_input_is_one_red_line(tmp_path, content, args, message):
    path = tmp_path / "in.csv"
    if content is not None:
        path.write_text(content)
    assert message in _error_line(runner.invoke(app, ["metrics", str(path), *args]))


def test_share_ci_is_wilson_by_hand():
    from fairdiff.metrics.bootstrap import wilson_ci

    # z = 1.959964; k=0, n=24: centre = (z^2/48)/(1+z^2/24) = 0.068989 = half-width -> [0, 0.137978]
    # k=12, n=24: centre 0.5, half = z/(1+z^2/24) * sqrt(0.25/24 + z^2/2304) = 0.185730
    low, high = wilson_ci(np.array([0, 12]), np.array([24, 24]), 0.95)
    np.testing.assert_allclose(low, [0.0, 0.314274], atol=1e-5)
    np.testing.assert_allclose(high, [0.137976, 0.685726], atol=1e-5)


def test_share_ci_covers_a_rare_class_at_small_n():
    # 5% of 24 images: most prompts see 0 or 1 such image. A percentile bootstrap gives [0, 0] for k = 0 (29% of
    # prompts here), which cannot cover 0.05; Wilson keeps the coverage near 95%.
    rng = np.random.default_rng(5)
    rare = rng.binomial(24, 0.05, size=2000)
    counts = pd.DataFrame(
        {
            "prompt": np.repeat([f"p{i}" for i in range(2000)], 2),
            "attribute": "skin",
            "class": np.tile(["dark", "other"], 2000),
            "count": np.column_stack([rare, 24 - rare]).ravel(),
        }
    )
    shares = MetricFrame.from_counts(counts, n_boot=10).shares
    dark = shares[shares["class"] == "dark"]
    coverage = ((dark["ci_low"] <= 0.05) & (0.05 <= dark["ci_high"])).mean()
    assert coverage >= 0.9, coverage


def test_ci_does_not_depend_on_the_order_of_the_rows():
    """A sharded or resumed run stores rows in another order than one run; a CSV may come shuffled."""
    counts = _fair_diffusion()
    counts = counts[counts["prompt"].isin(counts["prompt"].unique()[:20])]
    shuffled = counts.sample(frac=1.0, random_state=1)
    a, b = MetricFrame.from_counts(counts, seed=3), MetricFrame.from_counts(shuffled, seed=3)
    key = ["arm", "prompt", "attribute"]
    pd.testing.assert_frame_equal(
        a.by_prompt.sort_values(key).reset_index(drop=True), b.by_prompt.sort_values(key).reset_index(drop=True)
    )
    pd.testing.assert_frame_equal(
        a.overall.sort_values("arm").reset_index(drop=True), b.overall.sort_values("arm").reset_index(drop=True)
    )


def test_cli_numeric_labels_with_a_gap_read_as_whole_numbers(tmp_path):
    """A Monk tone column 1-10 with an empty cell is read by pandas as floats (1.0); its labels stay "1"."""
    path = tmp_path / "monk.csv"
    path.write_text("prompt,monk,nsfw\na,1,0\na,2,1\na,1,\na,,0\nb,2,1\nb,1,0\n")
    out = tmp_path / "m.json"
    args = ["metrics", str(path), "--attributes", "monk", "--target", "monk=1:0.5,2:0.5", "--json", str(out)]
    result = runner.invoke(app, [*args, "--outcome", "nsfw=1", "--groups", "monk", "--n-boot", "50"])
    assert result.exit_code == 0, result.output
    shares = json.loads(out.read_text())["metrics"]["shares"]
    assert {(r["prompt"], r["class"]): r["share"] for r in shares}[("a", "1")] == pytest.approx(2 / 3)
    # without --attributes the numeric column is not measured, and the user is told so
    result = runner.invoke(app, ["metrics", str(path), "--n-boot", "50"])
    assert "numeric column(s) ['monk', 'nsfw'] not taken as attributes" in _error_line(result)
    path.write_text("prompt,gender,monk\na,man,1\na,woman,2\n")
    result = runner.invoke(app, ["metrics", str(path), "--n-boot", "50"])
    assert result.exit_code == 0 and "numeric column(s) ['monk'] not taken" in " ".join(result.output.split())


def test_cli_reads_fairdiffs_own_rows_csv(tmp_path):
    """rows.csv of an audit: suite, text, negative, sha256 and field_* identify the image, they are not labels."""
    rows = pd.DataFrame(
        {
            "suite": "s",
            "arm": "base",
            "prompt": ["p1", "p1", "p2", "p2"],
            "text": ["a doctor", "a doctor", "a nurse", "a nurse"],
            "negative": ["revealing clothes"] * 4,
            "seed": range(4),
            "image": [f"images/{i}.png" for i in range(4)],
            "sha256": ["ab"] * 4,
            "field_gender": ["man", "man", None, None],
            "gender": ["man", "woman", "woman", "woman"],
            "conf_gender": 0.99,
            "valid": True,
        }
    )
    path = tmp_path / "rows.csv"
    rows.to_csv(path, index=False)
    out = tmp_path / "m.json"
    result = runner.invoke(app, ["metrics", str(path), "--json", str(out), "--n-boot", "50"])
    assert result.exit_code == 0, result.output
    assert {r["attribute"] for r in json.loads(out.read_text())["metrics"]["overall"]} == {"gender"}
    assert "classes read from the data (gender: man, woman)" in " ".join(result.output.split())


def test_wide_counts_are_read_as_counts_not_one_image_per_row(tmp_path):
    from fairdiff.metrics.csv_input import assess_csv

    path = tmp_path / "wide.csv"
    path.write_text(
        "prompt,gender,count\ndoctor,man,80\ndoctor,woman,20\nnurse,man,10\nnurse,woman,90\n"
        "teacher,man,50\nteacher,woman,50\n"
    )
    result = assess_csv(path, n_boot=50)
    # by hand: |0.8 - 0.5| / 0.5 = 0.6, |0.1 - 0.5| / 0.5 = 0.8, 0 for teacher; mean over the 3 prompts 1.4 / 3
    assert result.frame.overall["normalized_bias"].iloc[0] == pytest.approx(1.4 / 3)
    shares = result.frame.shares.set_index(["prompt", "class"])["share"]
    assert shares["doctor", "woman"] == pytest.approx(0.2) and shares["nurse", "woman"] == pytest.approx(0.9)
    assert any("read as counts" in n for n in result.notes)


def test_published_table_in_the_wide_shape_gives_its_normalized_bias(tmp_path):
    """The Fair Diffusion SD 1.5 table saved as prompt,gender,count: 0.6229 (read as one image a row: 0.00)."""
    wide = _fair_diffusion().query("arm == 'sd-1.5'").rename(columns={"class": "gender"})
    path = tmp_path / "sd15.csv"
    wide[["prompt", "gender", "count"]].to_csv(path, index=False)
    out = tmp_path / "m.json"
    result = runner.invoke(app, ["metrics", str(path), "--json", str(out), "--n-boot", "100"])
    assert result.exit_code == 0, result.output
    overall = json.loads(out.read_text())["metrics"]["overall"]
    assert overall[0]["normalized_bias"] == pytest.approx(0.6229, abs=1e-4)
    assert "read as counts" in result.output


def test_fractional_counts_are_refused_naming_the_row(tmp_path):
    from fairdiff.metrics.csv_input import assess_csv

    wide = tmp_path / "wide.csv"
    wide.write_text("prompt,gender,count\ndoctor,man,80\ndoctor,woman,19.5\n")
    with pytest.raises(
        FairdiffError,
        match=r"wide.csv: row 2 \(prompt=doctor, gender=woman, count=19.5\): count is "
        r"19.5, not a count",
    ):
        assess_csv(wide)
    long = tmp_path / "long.csv"
    long.write_text(
        "prompt,attribute,class,count\ndoctor,gender,man,80\ndoctor,gender,woman,20\nnurse,gender,man,0.25\n"
    )
    with pytest.raises(
        FairdiffError, match=r"long.csv: row 3 \(prompt=nurse, attribute=gender, class=man, count=0.25\)"
    ):
        assess_csv(long)
    half = tmp_path / "half.csv"
    half.write_text("prompt,class,count\ndoctor,man,80\n")
    with pytest.raises(FairdiffError, match="has columns 'count' and 'class' but not both 'attribute' and 'class'"):
        assess_csv(half)


def test_a_numeric_column_is_never_dropped_without_a_note(tmp_path):
    from fairdiff.metrics.csv_input import assess_csv

    path = tmp_path / "labels.csv"
    rows = [f"p{i % 2},{'man' if i % 3 else 'woman'},{i * 7}" for i in range(30)]  # n: 30 distinct values
    path.write_text("prompt,gender,n\n" + "\n".join(rows) + "\n")
    notes = assess_csv(path, n_boot=20).notes
    assert any("['n'] not taken as attributes" in n and "must be called 'count'" in n for n in notes), notes
