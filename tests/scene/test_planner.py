"""The rules planner: the prompt grammar, exact counts within and across images, stated attributes and contexts
never diversified, placement and boxes, and `fairdiff scene plan`."""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from cli_helpers import error_line
from fairdiff.cli import app
from fairdiff.errors import FairdiffError
from fairdiff.mix import largest_remainder, parse_mix
from fairdiff.scene.layout import layout_json, load_layout
from fairdiff.scene.planner import grid_boxes, parse_prompt, plan_counts, plan_rules, resolve, seat_cells
from fairdiff.world.schema import ATTRIBUTES

runner = CliRunner()
SKIN = parse_mix(["skin=uniform"], ATTRIBUTES)

#: stated or historical contexts that must not be diversified (Gemini, Feb 2024, drew them diversified)
NOT_DIVERSIFIED = [
    "the founding fathers of the United States",
    "a Japanese samurai in 1600",
    "the 1980 Soviet hockey team",
    "five Maasai warriors",
    "three medieval knights",
    "a group of Vikings in 900",
    "four Roman legionaries",
    "a Zulu family of 6",
    "a photo of the 1920s Chicago police force",
    "the Beatles",
    "five 18th-century sailors",
    "a team of Nigerian engineers",
]
DIVERSIFIED = ["a team of 5 doctors", "a women's basketball team of 5", "five nurses", "a group of 4 friends"]


@pytest.mark.parametrize(
    ("prompt", "count", "stated"),
    [
        ("a women's basketball team of 5", 5, {"gender": "woman"}),
        ("five dark-skinned women", 5, {"gender": "woman", "skin": "dark"}),
        ("a male nurse", 1, {"gender": "man", "occupation": "nurse"}),
        ("3 doctors", 3, {"occupation": "doctor"}),
        ("a team of five people", 5, {}),
        ("a dozen old firefighters", 12, {"age": "old", "occupation": "firefighter"}),
        ("a photo of 7 light-skinned men -blurry", 7, {"gender": "man", "skin": "light"}),
        ("the 1980 Soviet hockey team", None, {}),
        ("men and women at a party", None, {}),
    ],
)
def test_the_grammar_reads_count_and_stated_attributes(prompt, count, stated):
    parsed = parse_prompt(prompt)
    assert parsed.count == count
    assert parsed.stated == stated
    assert "-blurry" not in parsed.text


def test_stated_attributes_are_never_overridden():
    layouts = plan_rules(
        "five dark-skinned women", images=4, seed=1, mix=parse_mix(["skin=uniform", "gender=uniform"], ATTRIBUTES)
    )
    people = [p for layout in layouts for p in layout.people]
    assert len(people) == 20
    assert all(p.attributes == {"gender": "woman", "skin": "dark"} for p in people)
    assert all(p.prompt == "a photo of the face of a dark-skinned woman" for p in people)
    assert "stated in the prompt" in layouts[0].planner.note
    (layout,) = plan_rules("a male nurse", mix=parse_mix(["gender=uniform", "skin=uniform"], ATTRIBUTES))
    assert layout.people[0].attributes["gender"] == "man" and layout.people[0].attributes["occupation"] == "nurse"
    assert layout.people[0].prompt.startswith("a photo of the face of a ") and layout.people[0].prompt.endswith(
        " man nurse"
    )


def test_womens_team_with_a_uniform_skin_mix_is_exact_within_and_across_images():
    layouts = plan_rules("a women's basketball team of 5", images=3, seed=0, mix=SKIN)
    assert len(layouts) == 3
    for layout in layouts:
        skins = Counter(p.attributes["skin"] for p in layout.people)
        assert sorted(skins.values()) == [1, 1, 1, 2]  # floor(5/4) = 1 each, one leftover seat
        assert all(p.attributes["gender"] == "woman" for p in layout.people)
        assert layout.prompt == "a women's basketball team of 5"  # the team noun stays in the base prompt
        assert layout.canvas.width == 160 and layout.canvas.height == 32
    totals = plan_counts(layouts)["skin"]
    assert sorted(totals.values()) == [3, 4, 4, 4] and sum(totals.values()) == 15
    # the leftover seats rotate: no two images give their extra seat to the same skin tone
    extras = [
        next(s for s, c in Counter(p.attributes["skin"] for p in lay.people).items() if c == 2) for lay in layouts
    ]
    assert len(set(extras)) == 3


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 12),
    st.integers(1, 9),
    st.integers(0, 2**32),
    st.lists(st.integers(0, 5), min_size=2, max_size=4).filter(lambda w: sum(w) > 0),
)
def test_seat_counts_are_exact_over_the_batch_and_within_one_per_image(people, images, seed, weights):
    values = ATTRIBUTES["skin"][: len(weights)]
    mix = {"skin": {v: w / sum(weights) for v, w in zip(values, weights, strict=False)}}
    mix["skin"].update({v: 0.0 for v in ATTRIBUTES["skin"][len(weights) :]})
    seats = seat_cells(mix, people, images, seed)
    assert [len(s) for s in seats] == [people] * images
    probs = [mix["skin"][v] for v in ATTRIBUTES["skin"]]
    totals = Counter(c["skin"] for image in seats for c in image)
    exact = largest_remainder(probs, people * images)
    for v, p in zip(ATTRIBUTES["skin"], probs, strict=True):  # Hamilton's counts; equal remainders tie seeded
        quota = people * images * p
        assert totals[v] in (math.floor(quota + 1e-9), math.ceil(quota - 1e-9))
    assert sum(totals.values()) == people * images
    for v, p in zip(ATTRIBUTES["skin"], probs, strict=True):
        assert abs(totals[v] - people * images * p) < 1 + 1e-9
        for image in seats:
            assert abs(sum(c["skin"] == v for c in image) - people * p) < 1 + 1e-9
    fractions = [round(people * images * p % 1, 9) for p in probs]
    if len(set(fractions)) == len(fractions):  # no tied remainders: exactly fairdiff.mix.largest_remainder
        assert [totals[v] for v in ATTRIBUTES["skin"]] == exact


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 10), st.integers(1, 6), st.integers(0, 2**32))
def test_two_attributes_keep_both_marginals_exact(people, images, seed):
    mix = parse_mix(["skin=uniform", "gender=man:0.3,woman:0.7"], ATTRIBUTES)
    seats = seat_cells(mix, people, images, seed)
    for attribute, probs in mix.items():
        for value, p in probs.items():
            total = sum(c[attribute] == value for image in seats for c in image)
            assert abs(total - people * images * p) < 1
            assert all(abs(sum(c[attribute] == value for c in image) - people * p) < 1 for image in seats)


def test_plans_are_deterministic_and_the_seed_shuffles_placement():
    a = [layout_json(x) for x in plan_rules("a team of 6", images=2, seed=5, mix=SKIN)]
    b = [layout_json(x) for x in plan_rules("a team of 6", images=2, seed=5, mix=SKIN)]
    assert a == b
    orders = {
        tuple(p.attributes["skin"] for p in plan_rules("a team of 8", seed=s, mix=SKIN)[0].people) for s in range(6)
    }
    assert len(orders) > 1


@pytest.mark.parametrize("prompt", NOT_DIVERSIFIED)
def test_stated_and_historical_contexts_are_not_diversified(prompt):
    (layout,) = plan_rules(prompt, people=parse_prompt(prompt).count or 4, mix=SKIN)
    assert "not diversified: the prompt states a context" in layout.planner.note
    stated = parse_prompt(prompt).stated
    assert all(p.attributes == stated for p in layout.people)
    assert layout.planner.mix is None
    # --force-diversify still diversifies, never over a stated attribute
    (forced,) = plan_rules(
        prompt, people=4, mix=parse_mix(["skin=uniform", "gender=uniform"], ATTRIBUTES), diversify="on"
    )
    assert len({p.attributes["skin"] for p in forced.people}) == 4
    if "gender" in stated:
        assert {p.attributes["gender"] for p in forced.people} == {stated["gender"]}


@pytest.mark.parametrize("prompt", DIVERSIFIED)
def test_plain_group_prompts_are_diversified(prompt):
    (layout,) = plan_rules(prompt, people=4)
    assert parse_prompt(prompt).contexts == ()
    assert len({p.attributes["skin"] for p in layout.people}) == 4  # default mix: gender and skin uniform
    if "women" not in prompt:
        assert sorted(Counter(p.attributes["gender"] for p in layout.people).values()) == [2, 2]


def test_no_diversify_gives_only_the_stated_attributes():
    (layout,) = plan_rules("a women's basketball team of 5", mix=SKIN, diversify="off")
    assert all(p.attributes == {"gender": "woman"} for p in layout.people)
    assert layout.planner.note == "diversification off (--no-diversify)"


def test_boxes_are_a_row_then_a_grid_with_margins():
    row = grid_boxes(5, margin=0.1)
    assert len(row) == 5 and all(b[1] == 0.1 and b[3] == 0.9 for b in row)
    assert all(a[2] < b[0] for a, b in zip(row, row[1:], strict=False))  # side by side, a gap between
    grid = grid_boxes(8)
    assert len({b[1] for b in grid}) == 2 and len({b[0] for b in grid}) == 4
    odd = grid_boxes(7)  # 2 rows of 4 and 3: the short row is centred
    assert odd[4][0] > grid[4][0]
    (layout,) = plan_rules("a team of 8", mix=SKIN)
    assert (layout.canvas.width, layout.canvas.height) == (128, 64)


def test_bad_requests_are_one_line():
    with pytest.raises(FairdiffError, match="no head count found"):
        resolve("the founding fathers of the United States")
    with pytest.raises(FairdiffError, match="--people must be a whole number in"):
        resolve("a team of 5", people=0)
    with pytest.raises(FairdiffError, match="mix: unknown skin value"):
        resolve("a team of 5", mix={"skin": {"purple": 1.0}})


def test_scene_plan_command_writes_one_layout_per_image(tmp_path):
    out = tmp_path / "plan"
    args = ["scene", "plan", "a women's basketball team of 5", "--mix", "skin=uniform", "-n", "3", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == [
        "layout-000.json",
        "layout-001.json",
        "layout-002.json",
        "plan.json",
    ]
    layouts = [load_layout(out / f"layout-{i:03d}.json") for i in range(3)]
    summary = json.loads((out / "plan.json").read_text())
    assert summary["counts"] == plan_counts(layouts) and sum(summary["counts"]["skin"].values()) == 15
    assert "skin:" in result.stdout
    again = tmp_path / "again"
    assert runner.invoke(app, [*args[:-1], str(again)]).exit_code == 0
    assert (again / "layout-002.json").read_bytes() == (out / "layout-002.json").read_bytes()
    # a shorter plan into the same folder leaves no stale layouts behind
    assert runner.invoke(app, [*args[:5], "-n", "1", "--out", str(out)]).exit_code == 0
    assert sorted(p.name for p in out.iterdir()) == ["layout-000.json", "plan.json"]
    result = runner.invoke(
        app, ["scene", "plan", "a team of 4", "--canvas", "200x30", "--no-diversify", "--out", str(tmp_path / "c")]
    )
    assert "--canvas 200x30: width and height must be multiples of 8" in error_line(result)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["the founding fathers"], "no head count found"),
        (["a team of 5", "--mix", "skin=purple"], "unknown skin value 'purple'"),
        (["a team of 5", "-n", "0"], "-n must be a whole number"),
        (["a team of 5", "--canvas", "big"], "--canvas must be WIDTHxHEIGHT"),
        (["a team of 5", "--llm-url", "http://x"], "--llm-url and --llm-model go together"),
        (["a team of 5", "--llm-url", "ftp://x", "--llm-model", "m"], "--llm-url must be an http(s) URL"),
        (["a team of 5", "--no-diversify", "--force-diversify"], "contradict"),
        (["a team of 5", "--detector", "nudenet"], "--detector must be world or clip"),
    ],
)
def test_scene_plan_bad_options_are_one_red_line(tmp_path, args, expected):
    result = runner.invoke(app, ["scene", "plan", *args, "--out", str(tmp_path / "o")])
    assert expected in error_line(result)
    assert not (tmp_path / "o").exists()
