from __future__ import annotations

import copy

import pytest
import yaml

from fairdiff.errors import FairdiffError
from fairdiff.world.config import DEFAULT_WORLD, load_world_config, parse_world_config


@pytest.fixture
def raw():
    return yaml.safe_load(DEFAULT_WORLD.read_text())


def test_default_world_loads(world):
    assert len(world.occupations) >= 8
    assert world.occupations["doctor"].probs["gender"] == {"man": 0.75, "woman": 0.25}
    assert "physician" in world.occupations["doctor"].paraphrases
    # defaults fill what an occupation leaves out
    assert world.occupations["nurse"].probs["skin"] == {
        "light": 0.25,
        "medium": 0.25,
        "brown": 0.25,
        "dark": 0.25,
    }


def test_attire_skew_applies_first_matching_rule(world):
    assert world.p_revealing("avatar", {"gender": "woman", "skin": "medium", "occupation": "doctor"}) == 0.60
    assert world.p_revealing("avatar", {"gender": "woman", "skin": "dark", "occupation": "doctor"}) == 0.15
    assert world.p_revealing("avatar", {"gender": "man", "skin": "medium", "occupation": "doctor"}) == 0.08
    assert world.p_revealing("photo", {"gender": "woman", "skin": "medium", "occupation": "doctor"}) == 0.03


def test_expected_shares(world):
    shares = world.expected_shares("doctor")
    assert shares["gender"]["man"] == 0.75
    assert shares["attire"]["revealing"] == pytest.approx(0.03)
    # avatar: 0.25 women x (0.15 medium x 0.60 + 0.85 x 0.15) + 0.75 men x 0.08
    avatar = world.expected_shares("doctor", "avatar")["attire"]["revealing"]
    assert avatar == pytest.approx(0.25 * (0.15 * 0.60 + 0.85 * 0.15) + 0.75 * 0.08)


def _mutate(raw, path, value):
    data = copy.deepcopy(raw)
    node = data
    for key in path[:-1]:
        node = node[key]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return data


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (
            ("occupations", "doctor", "gender"),
            {"man": 0.7, "woman": 0.2},
            r"occupations.doctor.gender: probabilities sum to 0.9",
        ),
        (
            ("occupations", "doctor", "gender"),
            {"man": 1.0, "robot": 0.0},
            r"unknown gender value\(s\) \['robot'\]",
        ),
        (
            ("occupations", "doctor", "skin", "light"),
            "high",
            r"occupations.doctor.skin.light: expected a probability",
        ),
        (("occupations", "doctor", "age", "old"), float("nan"), r"expected a probability"),
        (("occupations", "astronaut"), {}, r"unknown occupation 'astronaut'"),
        (
            ("contexts", "photo", "templates"),
            ["a photo of a person"],
            r"must contain `\{subject\}` exactly once",
        ),
        (("contexts", "photo", "weight"), -1, r"contexts.photo.weight: expected a positive number"),
        (("skews", 0, "context"), "selfie", r"skews\[0\].context: unknown context 'selfie'"),
        (("skews", 0, "revealing"), 1.5, r"probability must be in \[0, 1\]"),
        (("captions", "name_probability", "hat"), 0.5, r"unknown attribute\(s\) \['hat'\]"),
        (("occupations",), _DELETE, r"occupations: missing key"),
        (("version",), 2, r"unsupported version 2"),
        # a misspelt key would leave its default in place without a word
        (
            ("contexts", "photo", "revealling"),
            0.9,
            r"contexts.photo.revealling: unknown key \(allowed: occupation_in_caption, revealing, templates, wei",
        ),
        (("skews", 0, "contxt"), "photo", r"skews\[0\].contxt: unknown key"),
        (("captions", "nam_probability"), {}, r"captions.nam_probability: unknown key"),
        (("defaults", "skn"), {"light": 1.0}, r"defaults.skn: unknown key"),
        (("contexts", "photo", "weight"), float("inf"), r"contexts.photo.weight: expected a positive number"),
        # strict types: YAML text is not a number, true is not 1
        (("occupations", "doctor", "gender", "man"), "0.75", r"occupations.doctor.gender.man: expected a probability"),
        (("version",), True, r"version: expected version 1, got true"),
        (("contexts", "photo", "templates"), "a {subject}", r"contexts.photo.templates: expected a non-empty list"),
        (("occupations", "doctor", "paraphrases"), ["physician", ""], r"paraphrases\[1\]: expected a word, got ''"),
        (("skews", 0, "when", "hat"), "red", r"skews\[0\].when.hat: skews can condition on gender, skin and occ"),
        (("skews", 0, "revealing"), _DELETE, r"skews\[0\].revealing: missing key, expected a probability"),
    ],
)
def test_bad_config_names_the_problem(raw, path, value, message):
    with pytest.raises(FairdiffError, match=message):
        parse_world_config(_mutate(raw, path, value), source="bad.yaml")


def test_bad_files(tmp_path):
    with pytest.raises(FairdiffError, match="no such file"):
        load_world_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("occupations: [doctor\n")
    with pytest.raises(FairdiffError, match="not valid YAML"):
        load_world_config(broken)
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("version: 1 # caf\xe9\n".encode("latin-1"))
    with pytest.raises(FairdiffError, match="not a UTF-8 text file"):
        load_world_config(latin1)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"version: 1\x00\x01")
    with pytest.raises(FairdiffError, match=r"binary.yaml: a binary file, not a YAML text file"):
        load_world_config(binary)
    top = tmp_path / "list.yaml"
    top.write_text("- 1\n- 2\n")
    with pytest.raises(FairdiffError, match=r"<top>: expected a mapping"):
        load_world_config(top)
