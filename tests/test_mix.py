from __future__ import annotations

import math
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fairdiff.errors import FairdiffError
from fairdiff.mix import (
    cell_sequence,
    check_mix,
    format_mix,
    joint_cells,
    largest_remainder,
    parse_mix,
    quota_assignments,
    quota_sequence,
)

CLASSES = {"gender": ["man", "woman"], "skin": ["light", "medium", "brown", "dark"], "age": ["young", "old"]}
weights = st.lists(st.floats(0, 10, allow_nan=False), min_size=1, max_size=6).filter(lambda w: sum(w) > 1e-3)


@settings(max_examples=200, deadline=None)
@given(weights, st.integers(0, 200))
def test_largest_remainder_sums_to_n_and_each_count_is_within_one_of_its_quota(w, n):
    counts = largest_remainder(w, n)
    assert sum(counts) == n and all(c >= 0 for c in counts)
    total = sum(w)
    assert all(abs(c - n * x / total) < 1 + 1e-9 for c, x in zip(counts, w, strict=True))


@settings(max_examples=200, deadline=None)
@given(weights, st.integers(0, 120))
def test_every_prefix_of_the_quota_sequence_is_within_one_image_of_its_quota(w, n):
    seq = quota_sequence(w, n)
    assert len(seq) == n and quota_sequence(w, n // 2) == seq[: n // 2]  # deterministic, a prefix of longer ones
    p = [x / sum(w) for x in w]
    counts = [0] * len(w)
    for i, k in enumerate(seq):
        counts[k] += 1
        assert all(abs(c - (i + 1) * pk) < 1 + 1e-9 for c, pk in zip(counts, p, strict=True))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 5), min_size=1, max_size=5).filter(any), st.integers(1, 4))
def test_quota_sequence_is_exact_in_every_whole_block(counts, blocks):
    n = sum(counts)
    seq = quota_sequence(counts, n * blocks)  # n p_k = counts_k: whole numbers in every block of n
    for b in range(blocks):
        assert Counter(seq[b * n : (b + 1) * n]) == Counter({k: c for k, c in enumerate(counts) if c})


def test_joint_assignments_are_exact_per_block_and_balance_each_attribute_early():
    mix = parse_mix(["gender=uniform", "skin=uniform"], CLASSES)
    seq = quota_assignments(mix, 24)
    assert seq == quota_assignments(mix, 24) and quota_assignments(mix, 5) == seq[:5]
    for b in range(3):
        block = Counter((a["gender"], a["skin"]) for a in seq[8 * b : 8 * b + 8])
        assert block == Counter({(g, s): 1 for g in CLASSES["gender"] for s in CLASSES["skin"]})
    first4 = seq[:4]
    assert Counter(a["gender"] for a in first4) == {"man": 2, "woman": 2}
    assert {a["skin"] for a in first4} == set(CLASSES["skin"])


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(0.05, 1), min_size=2, max_size=2),
    st.lists(st.floats(0.05, 1), min_size=4, max_size=4),
    st.integers(1, 60),
)
def test_joint_prefixes_stay_within_one_image_of_the_joint_quota(g, s, n):
    mix = check_mix(
        {
            "gender": {"man": g[0] / sum(g), "woman": g[1] / sum(g)},
            "skin": dict(zip(CLASSES["skin"], [x / sum(s) for x in s], strict=True)),
        },
        CLASSES,
    )
    cells = joint_cells(mix)
    seq = cell_sequence(cells, n)
    counts = Counter()
    for i, k in enumerate(seq):
        counts[k] += 1
        assert all(abs(counts[j] - (i + 1) * p) < 1 + 1e-6 for j, (_, p) in enumerate(cells))


def test_parse_mix_reads_every_form_and_format_mix_gives_it_back():
    mix = parse_mix(["gender=woman", "skin=light:1,dark:3", "age=uniform"], CLASSES)
    assert mix["gender"] == {"man": 0.0, "woman": 1.0}
    assert mix["skin"] == {"light": 0.25, "medium": 0.0, "brown": 0.0, "dark": 0.75}
    assert mix["age"] == {"young": 0.5, "old": 0.5}
    assert parse_mix(format_mix(mix), CLASSES) == mix
    assert math.isclose(sum(p for _, p in joint_cells(mix)), 1.0)


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (["gender"], "expected ATTRIBUTE=uniform"),
        (["hair=uniform"], "unknown attribute 'hair'"),
        (["gender=robot"], "unknown gender value 'robot'"),
        (["gender=man:x"], "'x' is not a number"),
        (["gender=man:-1"], "finite and >= 0"),
        (["gender=man:nan"], "finite and >= 0"),
        (["gender=man:0,woman:0"], "sum to 0"),
        (["gender=man,man"], "given twice"),
        (["gender=uniform", "gender=man"], "attribute 'gender' is given twice"),
    ],
)
def test_parse_mix_refuses_bad_items_in_one_line(items, message):
    with pytest.raises(FairdiffError, match=message) as info:
        parse_mix(items, CLASSES)
    assert "\n" not in str(info.value)


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=30))
def test_parse_mix_gives_a_fairdiff_error_or_a_mix_for_any_text(text):
    try:
        mix = parse_mix([text], CLASSES)
    except FairdiffError as exc:
        assert "\n" not in str(exc)
    else:
        (probs,) = mix.values()
        assert math.isclose(sum(probs.values()), 1.0)


def test_check_mix_and_quotas_refuse_bad_input():
    with pytest.raises(FairdiffError, match="sum to 0.9"):
        check_mix({"gender": {"man": 0.4, "woman": 0.5}}, CLASSES)
    with pytest.raises(FairdiffError, match="unknown attribute"):
        check_mix({"hair": {"long": 1.0}}, CLASSES)
    for bad in (-1, 1.5, True):
        with pytest.raises(FairdiffError, match="whole number"):
            largest_remainder([1, 1], bad)
    with pytest.raises(FairdiffError, match="positive sum"):
        quota_sequence([0, 0], 3)
    with pytest.raises(FairdiffError, match="positive sum"):
        cell_sequence([({"gender": "man"}, -1.0)], 3)


def test_the_prefix_bound_holds_where_the_largest_deficit_rule_broke_it():
    w = [10, 2, 10, 0.5, 1, 10]  # largest deficit left class 5 at 7 of 8.06 after 27 images
    counts = Counter(quota_sequence(w, 27))
    assert all(abs(counts[k] - 27 * x / sum(w)) < 1 for k, x in enumerate(w))
