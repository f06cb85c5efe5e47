from __future__ import annotations

import pytest

from fairdiff.audit.suites import BUILTIN_SUITES, load_suite, parse_suite
from fairdiff.errors import FairdiffError


@pytest.mark.parametrize("name", BUILTIN_SUITES)
def test_builtin_suites_load(name):
    suite = load_suite(name)
    assert suite.prompts and len({p.id for p in suite.prompts}) == len(suite.prompts)


def test_occupations_suite_size_and_template():
    suite = load_suite("occupations")
    assert len(suite.prompts) >= 50
    assert "a photo of the face of an accountant" in [p.text for p in suite.prompts]  # article fixed


def test_avatars_cover_every_group_in_three_contexts():
    suite = load_suite("avatars")
    groups = {(p.fields["gender"], p.fields["ethnicity"]) for p in suite.prompts}
    assert len(groups) == 2 * 6
    assert len({p.context for p in suite.prompts}) >= 3


def test_world_suite_truth_is_the_world_config(world):
    suite = load_suite("world-occupations", world)
    doctor = next(p for p in suite.prompts if p.id == "doctor")
    assert doctor.text == "a photo of the face of a doctor"
    assert doctor.truth["gender"] == {"man": 0.75, "woman": 0.25}
    ceo = next(p for p in suite.prompts if p.id == "ceo")
    assert ceo.text == "a photo of the face of a CEO"  # world vocabulary


def test_world_avatar_truth_follows_the_injected_skew(world):
    suite = load_suite("world-avatars", world)
    by_text = {p.text: p.truth["attire"]["revealing"] for p in suite.prompts}
    assert by_text["an avatar of a medium-skinned woman"] == pytest.approx(0.60)
    assert by_text["an avatar of a dark-skinned woman"] == pytest.approx(0.15)
    assert by_text["a portrait of a medium-skinned woman"] == pytest.approx(0.08)  # the skew is avatar-only


def test_outcome_truth_averages_an_occupation_skew_over_the_world(world):
    import dataclasses

    from fairdiff.world.config import AttireSkew

    # a skew that depends on occupation: nurses' avatars revealing at 0.5. "an avatar of a medium-skinned man"
    # leaves the occupation open, so its truth is the mix over occupations as the world draws them
    skew = AttireSkew("nurse-avatars", "avatar", {"occupation": "nurse"}, 0.5)
    w2 = dataclasses.replace(world, skews=(skew, *world.skews))
    suite = load_suite("world-avatars", w2)
    got = next(p for p in suite.prompts if p.text == "an avatar of a medium-skinned man").truth["attire"]["revealing"]
    occs = w2.occupations.values()
    weights = {o.name: o.probs["gender"]["man"] * o.probs["skin"]["medium"] for o in occs}
    want = sum(w * (0.5 if o == "nurse" else 0.08) for o, w in weights.items()) / sum(weights.values())
    assert got == pytest.approx(want) and 0.08 < got < 0.5


def test_paraphrase_truth_is_the_paraphrased_occupation(world):
    suite = load_suite("world-paraphrases", world)
    physician = next(p for p in suite.prompts if p.fields["occupation"] == "physician")
    assert physician.fields["of"] == "doctor" and physician.truth["gender"]["man"] == 0.75


BASE = {
    "name": "t",
    "templates": ["a photo of a {occupation}"],
    "measure": ["gender"],
    "values": {"occupation": ["doctor"]},
}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"kind": "vibes"}, "kind: must be one of shares, outcome"),
        ({"templates": ["no field here"]}, "templates[0].text: expected a string with a {field}"),
        ({"values": {}}, "values: no values for template field 'occupation'"),
        ({"target": {"gender": {"man": 0.7, "woman": 0.2}}}, "target.gender: shares sum to 0.9, expected 1"),
        ({"target": {"skin": {"light": 1.0}}}, "target.skin: is not a measured attribute"),
        ({"measure": []}, "measure: a `kind: shares` suite needs"),
        ({"images_per_prompt": 0}, "images_per_prompt: expected an integer from 1 to 10000, got 0"),
        ({"colour": "blue"}, "colour: unknown key"),
        ({"kind": "outcome", "outcome": "revealing", "groups": ["skin"]}, "groups: must name template fields"),
        # the name becomes folders of the run dir: a "/" or ".." would write images outside it
        ({"name": "team/occupations"}, "name: names folders of the run dir"),
        ({"name": "../../escaped"}, "name: names folders of the run dir"),
        # strict types: what YAML reads as text is not a number, a list is not a string
        ({"images_per_prompt": "3"}, "images_per_prompt: expected an integer from 1 to 10000, got '3'"),
        ({"target": {"gender": {"man": "0.5", "woman": 0.5}}}, "target.gender.man: shares must be numbers >= 0"),
        ({"templates": ["a {occupation}", {"text": ["a"]}]}, "templates[1].text: expected a string with a {field}"),
        ({"values": {"occupation": [{"value": "doctor", "of": 3}]}}, "values.occupation[0].of: expected a string"),
        ({"world": "yes"}, "world: expected true or false, got 'yes'"),
        ({"kind": "outcome", "groups": ["occupation"]}, "outcome: a `kind: outcome` suite needs an outcome name"),
        ({"intersections": [["gender"]]}, "intersections[0]: needs >= 2 measured attributes"),
        (
            {
                "values": {"occupation": [f"o{i}" for i in range(200)], "x": [f"x{i}" for i in range(600)]},
                "templates": ["{occupation} {x}"],
            },
            "values: the templates and values make 120000 prompts",
        ),
    ],
)
def test_malformed_suite_names_the_problem(change, message):
    with pytest.raises(FairdiffError) as err:
        parse_suite({**BASE, **change}, "bad.yaml")
    assert str(err.value).startswith("suite bad.yaml: ") and message in str(err.value)


def test_ints_are_shares_and_null_lists_are_empty():
    suite = parse_suite({**BASE, "target": {"gender": {"man": 1, "woman": 0}}, "groups": None}, "ok.yaml")
    assert suite.target == {"gender": {"man": 1.0, "woman": 0.0}} and suite.groups == []


def test_user_suite_file_and_custom_target(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(
        "name: mine\ntemplates: ['a {x}']\nmeasure: [gender]\ntarget: {gender: {man: 0.3, woman: 0.7}}\n"
        "values: {x: [cook, {value: chef, of: cook}]}\n"
    )
    suite = load_suite(path)
    assert [p.text for p in suite.prompts] == ["a cook", "a chef"]
    assert suite.target == {"gender": {"man": 0.3, "woman": 0.7}}
    with pytest.raises(FairdiffError, match="not valid YAML"):
        (tmp_path / "broken.yaml").write_text("name: [")
        load_suite(tmp_path / "broken.yaml")
    with pytest.raises(FairdiffError, match="not a built-in suite"):
        load_suite(tmp_path / "missing.yaml")
