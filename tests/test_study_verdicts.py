"""Verdict rules on confidence intervals: inside, outside, straddling and touching the margin; combining parts;
claims read off a long table."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from fairdiff.errors import FairdiffError
from fairdiff.study import claims as claims_mod
from fairdiff.study.claims import Claim, Part, evaluate, select, stack_derived
from fairdiff.study.verdicts import (
    MIXED,
    NOT_MEASURED,
    NOT_SUPPORTED,
    SUPPORTED,
    Above,
    AtLeast,
    AtMost,
    Below,
    BitExact,
    Within,
    combine_all,
    combine_any,
)

S, N, M, U = SUPPORTED, NOT_SUPPORTED, MIXED, NOT_MEASURED


@pytest.mark.parametrize(
    ("rule", "low", "high", "want"),
    [
        # "X at most 0.05 worse than Y": the CI of the difference inside, outside, straddling, touching the margin
        (AtMost(0.05), -0.10, 0.04, S),
        (AtMost(0.05), 0.06, 0.20, N),
        (AtMost(0.05), 0.00, 0.10, M),
        (AtMost(0.05), -0.10, 0.05, S),  # touching from inside: the whole CI is within the margin
        (AtMost(0.05), 0.05, 0.10, M),  # touching from outside: not wholly above
        (AtLeast(0.95), 0.96, 1.00, S),
        (AtLeast(0.95), 0.80, 0.94, N),
        (AtLeast(0.95), 0.90, 0.99, M),
        (AtLeast(0.95), 0.95, 1.00, S),
        (Above(0.0), 0.01, 0.30, S),
        (Above(0.0), -0.20, 0.00, N),  # at or below: not supported
        (Above(0.0), 0.00, 0.20, M),  # touching 0 from above is not "wholly above"
        (Below(0.0), -0.3, -0.01, S),
        (Below(0.0), 0.00, 0.30, N),
        (Below(0.0), -0.1, 0.10, M),
        (Within(0.05), -0.04, 0.05, S),
        (Within(0.05), 0.06, 0.10, N),
        (Within(0.05), -0.20, -0.06, N),
        (Within(0.05), -0.10, 0.02, M),
        (BitExact(), 1.0, 1.0, S),
        (BitExact(), 0.0, 0.0, N),
        (AtMost(0.05), math.nan, 0.1, U),
        (Above(0.0), None, None, U),
    ],
)
def test_rule_on_interval(rule, low, high, want):
    assert rule.judge(low, high) == want


def test_reversed_interval_and_bad_margins_are_errors():
    with pytest.raises(FairdiffError, match="low <= high"):
        AtMost(0.1).judge(0.3, 0.1)
    with pytest.raises(FairdiffError, match="finite"):
        AtMost(float("inf"))
    with pytest.raises(FairdiffError, match=">= 0"):
        Within(-0.1)
    with pytest.raises(FairdiffError, match="0 or 1"):
        BitExact().judge(0.0, 1.0)


@pytest.mark.parametrize(
    ("verdicts", "all_", "any_"),
    [
        ([S, S], S, S),
        ([S, N], N, S),
        ([S, M], M, S),
        ([N, N], N, N),
        ([N, M], N, M),
        ([M, U], M, M),
        ([U, U], U, U),
        ([S, U], M, S),
        ([], U, U),
    ],
)
def test_combine(verdicts, all_, any_):
    assert combine_all(verdicts) == all_
    assert combine_any(verdicts) == any_


def test_unknown_verdict_is_an_error():
    with pytest.raises(FairdiffError, match="unknown verdict"):
        combine_all(["yes"])


def _table(rows):
    return pd.DataFrame(
        rows, columns=["stage", "arm", "reference", "measure", "attribute", "value", "ci_low", "ci_high"]
    )


def test_claim_reads_rows_and_combines_each_and_parts():
    table = _table(
        [
            ("a", "w", "lora", "bias_difference", "gender", -0.2, -0.3, -0.1),  # W fairer on gender
            ("a", "w", "lora", "bias_difference", "skin", -0.1, -0.2, 0.05),  # straddles 0 on skin
            ("a", "w", "lora", "fd_difference", "", 0.5, -1.0, 1.5),
        ]
    )
    gs = ("gender", "skin")
    fair_all = Part("d", {"measure": "bias_difference", "attribute": gs}, Below(0.0), each="all")
    fair_any = Part("d", {"measure": "bias_difference", "attribute": gs}, Below(0.0), each="any")
    fd = Part("fd", {"measure": "fd_difference"}, AtMost(2.0))
    missing = Part("x", {"measure": "not_there"}, AtMost(1.0))
    out = evaluate(
        {"lora-vs-w": table},
        (
            Claim("T1", "all", (fair_all, fd)),
            Claim("T2", "any", (fair_any, fd)),
            Claim("T3", "missing", (missing,)),
            Claim("T4", "missing part", (fair_any, missing)),
        ),
    )
    assert [v.verdict for v in out] == [M, S, U, M]
    assert out[0].parts[0].verdicts == [S, M]
    assert len(out[0].evidence) == 3


def test_select_any_of_values_and_largest_k():
    df = pd.DataFrame({"method": ["naive_sum", "naive_sum", "ties"], "k": [1, 4, 4], "measure": ["fd"] * 3})
    assert len(select(df, {"method": ("naive_sum", "ties")})) == 3
    assert select(df, {"method": "naive_sum", "k": "max"})["k"].tolist() == [4]
    assert select(df, {"nope": 1}).empty


def test_stack_derived_quantities():
    stack = pd.DataFrame(
        [
            ("base", 0, "fd", 10.0, 9.0, 11.0),
            ("naive_sum", 1, "fd", 12.0, 11.0, 13.0),
            ("naive_sum", 8, "fd", 20.0, 18.0, 22.0),
            ("activation", 8, "fd", 30.0, 28.0, 32.0),
            ("naive_sum", 8, "restored_bit_exact", 1.0, 1.0, 1.0),
            ("activation", 8, "restored_bit_exact", 1.0, 1.0, 1.0),
        ],
        columns=["method", "k", "measure", "value", "ci_low", "ci_high"],
    )
    d = stack_derived(stack).set_index("measure")
    growth = d[d.index == "fd_growth"].set_index("method").loc["naive_sum"]
    assert (growth["value"], growth["ci_low"], growth["ci_high"], growth["reference"]) == (10.0, 7.0, 13.0, "base")
    assert d.loc["irrecoverable", "value"] == 0.0
    assert d.loc["fd_activation_minus_weights", "ci_low"] == 6.0
    verdicts = {
        v.claim.id: v.verdict for v in evaluate({"stack": stack}, claims_mod.CLAIMS) if v.claim.source == "stack"
    }
    # FD grew by more than the margin but removal is exact: "irrecoverably" fails -> C5 not supported
    assert verdicts["C5"] == N and verdicts["C6"] == S and verdicts["C8"] == U


def test_every_claim_states_its_rule():
    ids = [c.id for c in claims_mod.CLAIMS]
    assert len(set(ids)) == len(ids) and {"C1", "C2", "C3", "C4", "C5", "C6", "C7", "C8"} <= set(ids)
    for c in claims_mod.CLAIMS:
        assert c.parts and all(p.describe() for p in c.parts) and c.rule_text()


def test_docs_state_the_rules_of_the_code():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "study.md").read_text()
    assert claims_mod.rules_markdown() in doc
