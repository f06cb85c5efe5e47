"""The planner arm (audit/arms_scene.py): plans, quotas, stated attributes, outcomes, specs, group suites."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from fairdiff.audit.arms import arm_from_spec
from fairdiff.audit.arms_scene import (
    PlannerArm,
    reference_layout,
    scene_layout,
    scene_record,
    total_variation,
)
from fairdiff.audit.runner import AuditConfig, build_plan, shard_batches
from fairdiff.audit.suites import load_suite, parse_suite
from fairdiff.errors import FairdiffError
from fairdiff.scene.layout import validate_layout
from fairdiff.world.schema import ATTRIBUTES

PEOPLE = "a photo of five people"
STATED = "a photo of five dark-skinned women"


def _attrs(layout, attribute):
    return [p.attributes[attribute] for p in layout.people]


def test_plans_are_deterministic_and_depend_on_prompt_index_and_seed():
    a, b = PlannerArm(name="p", mix=["skin=uniform"]), PlannerArm(name="p", mix=["skin=uniform"])
    first = [a.layout(PEOPLE, i, 4, 0) for i in range(4)]
    assert first == [b.layout(PEOPLE, i, 4, 0) for i in range(4)]  # a fresh arm plans the same
    assert [p.model_dump() for p in first] == [p.model_dump() for p in (a.layout(PEOPLE, i, 4, 0) for i in range(4))]
    other_seed = [b.layout(PEOPLE, i, 4, 1) for i in range(4)]
    assert [_attrs(x, "skin") for x in first] != [_attrs(x, "skin") for x in other_seed]  # placement is seeded
    assert first[0].canvas.width == 160 and first[0].canvas.height == 32  # five in a row, 32 px each
    assert first[0].prompt == PEOPLE
    assert first[0].people[0].prompt.startswith("a photo of the face of a ")


@pytest.mark.parametrize(("images", "people"), [(4, 5), (3, 5), (8, 3)])
def test_quotas_are_exact_over_the_prompts_images_and_within_one_per_image(images, people):
    arm = PlannerArm(name="p", mix=["skin=uniform"], people=people)
    layouts = [arm.layout("a photo of a team", i, images, 0) for i in range(images)]
    assert all(len(x.people) == people for x in layouts)  # the prompt names no count: the arm's
    total = Counter(v for x in layouts for v in _attrs(x, "skin"))
    seats = images * people
    # Hamilton's counts of people x images seats over 4 equal classes: floor(seats / 4) each, the rest one more
    assert sorted(total.values()) == sorted([seats // 4 + (k < seats % 4) for k in range(4)])
    for x in layouts:
        counts = Counter(_attrs(x, "skin"))
        assert all(abs(counts.get(c, 0) - people / 4) < 1 for c in ATTRIBUTES["skin"])


@pytest.mark.parametrize("mix", [None, ["skin=uniform"], ["skin=uniform", "gender=uniform"]])
def test_stated_attributes_are_never_overridden(mix):
    arm = PlannerArm(name="p", mix=mix)
    for i in range(4):
        layout = arm.layout(STATED, i, 4, 0)
        assert _attrs(layout, "skin") == ["dark"] * 5 and _attrs(layout, "gender") == ["woman"] * 5
        assert all("dark-skinned woman" in p.prompt for p in layout.people)
    ref = reference_layout(STATED, 0, 4, 0, {"people": 5, "mix": ["skin=uniform", "gender=uniform"]})
    assert _attrs(ref, "skin") == ["dark"] * 5
    male = PlannerArm(name="p", mix=["gender=uniform"]).layout("a photo of five male nurses", 0, 2, 0)
    assert _attrs(male, "gender") == ["man"] * 5 and _attrs(male, "occupation") == ["nurse"] * 5
    off = PlannerArm(name="p", diversify="off").layout(PEOPLE, 0, 2, 0)
    assert all(not p.attributes for p in off.people)  # nothing stated, nothing diversified


def test_people_come_from_the_prompt_then_the_arm_then_the_suite():
    assert len(PlannerArm(name="p", people=3).layout(PEOPLE, 0, 1, 0).people) == 5  # the prompt says five
    assert len(PlannerArm(name="p", people=3).layout("a photo of a team", 0, 1, 0, {"people": 4}).people) == 3
    assert len(PlannerArm(name="p").layout("a photo of a team", 0, 1, 0, {"people": 4}).people) == 4
    assert len(PlannerArm(name="p").layout("a photo of a team", 0, 1, 0).people) == 5  # DEFAULT_PEOPLE


def test_total_variation_by_hand():
    assert total_variation(["a", "a", "b", "c"], ["a", "b", "b", "b"], ["a", "b", "c"]) == pytest.approx(0.5)
    assert total_variation(["a", "b"], ["b", "a"], ["a", "b"]) == 0.0  # position-free
    with pytest.raises(FairdiffError, match="2 planned labels for 1"):
        total_variation(["a", "b"], ["a"], ["a", "b"])


class _ColourDetector:
    """Skin class from a crop's red level (0: light, 1: medium, 2: brown, 3: dark), every other head class 0."""

    name = "world"
    classes = {a: list(v) for a, v in ATTRIBUTES.items()}

    def __call__(self, images):
        images = np.asarray(images)
        out = {}
        for a, cls in self.classes.items():
            p = np.zeros((len(images), len(cls)))
            if a == "skin":
                p[np.arange(len(images)), images[..., 0].mean(axis=(1, 2)).round().astype(int) // 60] = 1.0
            else:
                p[:, 0] = 1.0
            out[a] = p
        return out


def _layout(skins, genders):
    n = len(skins)
    people = [
        {
            "id": f"p{k + 1}",
            "box": [k / n, 0, (k + 1) / n, 1],
            "attributes": {"skin": s, "gender": g},
            "prompt": f"a {s} {g}",
        }
        for k, (s, g) in enumerate(zip(skins, genders, strict=True))
    ]
    return validate_layout({"canvas": {"width": 32 * n, "height": 32}, "prompt": "p", "people": people}, "test")


def test_scene_record_counts_people_and_mix_error_by_hand():
    layout = _layout(["light", "medium", "brown", "dark"], ["man", "man", "woman", "woman"])
    image = np.zeros((32, 128, 3), np.uint8)
    for k, level in enumerate([0, 0, 120, 180]):  # drawn: light, light, brown, dark
        image[:, 32 * k : 32 * (k + 1), 0] = level
    record, row = scene_record(image, layout, _ColourDetector(), "arm")
    assert record["judged"] == ["gender", "skin"]
    # gender is always detected "man": p1, p2 right, p3, p4 wrong; skin: p2 (medium drawn light) wrong
    assert [p["as_planned"] for p in record["people"]] == [True, False, False, False]
    assert record["adherence"] == 0.25 and record["people_judged"] == 4 and record["people_as_planned"] == 1
    # skin TV: planned 1/4 each, detected light 1/2, brown 1/4, dark 1/4 -> 1/2 (|1/4-1/2| + 1/4) = 0.25
    # gender TV: planned 1/2 man, detected all man -> 0.5
    assert record["mix_error_by_attribute"] == {"gender": 0.5, "skin": 0.25}
    assert record["mix_error"] == 0.5
    assert row["skin"] == [0.5, 0.0, 0.25, 0.25]  # the row: mean over the box crops
    assert record["layout"]["people"][3]["attributes"] == {"skin": "dark", "gender": "woman"}


def test_scene_layout_planner_reference_or_none():
    groups, portraits = load_suite("world-groups"), load_suite("world-occupations")
    base, plan = arm_from_spec({"kind": "base"}), arm_from_spec({"kind": "planner", "name": "plan"})
    assert scene_layout(base, portraits, "a photo of the face of a doctor", 0, 2, 0) == (None, "")
    ref, who = scene_layout(base, groups, PEOPLE, 1, 4, 0)
    assert who == "reference" and ref == reference_layout(PEOPLE, 1, 4, 0, groups.scene)
    mine, who = scene_layout(plan, groups, PEOPLE, 1, 4, 0)
    assert who == "arm" and mine == ref  # same rules, mix and seed as the suite: the same layout
    single, _ = scene_layout(plan, portraits, "a photo of the face of a doctor", 0, 2, 0)
    assert len(single.people) == 1 and (single.canvas.width, single.canvas.height) == (32, 32)


def test_plan_gives_group_jobs_their_canvas_and_batches_hold_one_size():
    cfg = AuditConfig(
        suites=["world-groups", "world-occupations"],
        arms=[{"kind": "base"}, {"kind": "planner", "name": "plan"}],
        images_per_prompt=2,
        max_prompts=1,
        batch_size=8,
    )
    arms = [arm_from_spec(a) for a in cfg.arms]
    jobs = build_plan([load_suite(s) for s in cfg.suites], arms, cfg)
    sizes = {(j.suite, j.arm): j.size for j in jobs}
    assert sizes[("world-groups", "base")] == sizes[("world-groups", "plan")] == (32, 160)
    assert sizes[("world-occupations", "base")] is None and sizes[("world-occupations", "plan")] == (32, 32)
    assert jobs[0].prompt == PEOPLE and jobs[0].planned_by == "reference"
    batches = shard_batches(jobs, {a.name: a for a in arms}, cfg, 0, 1)
    assert len(batches) == 4  # base and planner, each at two canvas sizes
    for _, batch in batches:
        assert len({j.size for j in batch}) == 1 and len({j.arm for j in batch}) == 1


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"kind": "planner", "name": "p", "colour": 1}, r"arm p: colour: unknown key"),
        ({"kind": "planner", "name": "p", "mix": ["skin=purple"]}, r"arm p: mix: .*purple"),
        ({"kind": "planner", "name": "p", "mix": ["hair=uniform"]}, r"arm p: mix: .*unknown attribute 'hair'"),
        ({"kind": "planner", "name": "p", "mix": []}, r"arm p: mix: needs at least one"),
        (
            {"kind": "planner", "name": "p", "mode": "plain"},
            r"arm p: mode: must be one of regional, multidiffusion, got .plain.",
        ),
        ({"kind": "planner", "name": "p", "people": 0}, r"arm p: people: expected a whole number of people"),
        ({"kind": "planner", "name": "p", "planner": "llm"}, r"arm p: llm: `planner: llm` and an `llm"),
        (
            {"kind": "planner", "name": "p", "planner": "llm", "llm": {"url": "ftp://x", "model": "m"}},
            r"arm p: llm.url: .*http",
        ),
        (
            {"kind": "planner", "name": "p", "diversify": True},
            r"arm p: diversify: must be one of auto, on, off, got true",
        ),
    ],
)
def test_bad_planner_specs_are_one_clear_error(spec, message):
    with pytest.raises(FairdiffError, match=message) as err:
        arm_from_spec(spec)
    assert "\n" not in str(err.value)


def test_planner_spec_round_trips_through_the_run_config():
    spec = {
        "kind": "planner",
        "name": "llm",
        "mix": ["skin=uniform"],
        "planner": "llm",
        "llm": {"url": "http://127.0.0.1:9/v1", "model": "m", "key_env": "K", "timeout": 5.0, "retries": 0},
        "people": 4,
        "mode": "multidiffusion",
        "diversify": "off",
    }
    arm = arm_from_spec(spec)
    assert arm_from_spec(arm.spec()).spec() == arm.spec()
    assert arm.spec() == {**spec, "guidance": None}


GROUP = {
    "name": "g",
    "kind": "group",
    "templates": ["a photo of five {who}"],
    "values": {"who": ["people"]},
    "scene": {"people": 5, "mix": ["skin=uniform"]},
}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"scene": None}, r"scene: a `kind: group` suite \(and only one\) has a scene block"),
        ({"kind": "shares", "measure": ["skin"]}, r"scene: a `kind: group` suite \(and only one\)"),
        ({"scene": {"mix": ["skin=teal"]}}, r"scene.mix: .*teal"),
        ({"scene": {"canvas": [100, 32]}}, r"scene.canvas: expected width and height that are multiples of 8"),
        ({"scene": {"people": 0}}, r"scene.people: expected a whole number of people"),
        ({"measure": ["skin"]}, r"kind: a `kind: group` suite is measured per person"),
    ],
)
def test_group_suite_model(change, message):
    suite = parse_suite(GROUP, "g.yaml")
    assert suite.kind == "group" and suite.scene["mix"] == ["skin=uniform"] and suite.spec()["scene"] == suite.scene
    with pytest.raises(FairdiffError, match=message):
        parse_suite({k: v for k, v in {**GROUP, **change}.items() if v is not None}, "g.yaml")


def test_world_groups_suite_has_a_stated_prompt_that_is_not_diversified():
    suite = load_suite("world-groups")
    texts = {p.id: p.text for p in suite.prompts}
    assert texts["dark-skinned-women"] == STATED and texts["people"] == PEOPLE
    for p in suite.prompts:
        layout = reference_layout(p.text, 0, suite.images_per_prompt, 0, suite.scene)
        assert len(layout.people) == 5
    assert reference_layout(STATED, 0, 8, 0, suite.scene).planner.note.startswith("stated in the prompt")


def test_a_store_without_the_scenes_table_reads_as_having_no_scene_rows(tmp_path):
    import sqlite3

    from fairdiff.audit.store import _SCHEMA, SCHEMA_VERSION, ImageRow, Store

    path = tmp_path / "store.sqlite"
    db = sqlite3.connect(path)  # an older fairdiff's store: the same tables less `scenes`
    db.executescript(_SCHEMA.split("CREATE TABLE IF NOT EXISTS scenes")[0])
    db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
    db.execute("INSERT INTO images VALUES ('k', 's', 'p', 'a', 0, 't', '', 'i.png', 'h', '{\"skin\": [1.0]}', 0, 0.1)")
    db.commit()
    db.close()
    with Store(path, create=False) as store:
        (row,) = store.rows()
    assert row.scene is None and row.probs == {"skin": [1.0]}
    with Store(path) as store:  # opened for writing it gains the table; a scene row joins its image row
        store.add([ImageRow("k2", "s", "p", "a", 1, "t", "", "j.png", "h2", {"skin": [1.0]}, scene={"x": 1})])
        assert {r.job_key: r.scene for r in store.rows()} == {"k": None, "k2": {"x": 1}}
