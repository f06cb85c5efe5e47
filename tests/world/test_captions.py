from __future__ import annotations

from collections import Counter

import pytest

from fairdiff.world.captions import describe, fill_template, sample_world


def test_describe_and_template():
    subject = describe(skin="dark", age="old", gender="woman", occupation="doctor")
    assert subject == "dark-skinned old woman doctor"
    assert (
        fill_template("a photo of the face of a {subject}", subject)
        == "a photo of the face of a dark-skinned old woman doctor"
    )
    assert fill_template("a portrait of a {subject}", describe(age="old", gender="man")) == "a portrait of an old man"
    assert fill_template("a {subject}", describe(occupation="engineer")) == "an engineer"
    assert describe(attire="revealing") == "person in revealing clothes"
    assert describe(occupation="ceo") == "CEO"


def test_sampling_is_deterministic_and_prefix_stable(world):
    a = sample_world(world, 200, seed=3)
    assert a == sample_world(world, 200, seed=3)
    assert a[:50] == sample_world(world, 50, seed=3)
    assert a != sample_world(world, 200, seed=4)


def test_neutral_captions_carry_the_injected_shares(world):
    """Naming is independent of the value, so the shares behind neutral doctor captions equal the config's."""
    samples = [
        s for s in sample_world(world, 60_000, seed=0) if s.portrait.occupation == "doctor" and s.context == "photo"
    ]
    share_man = sum(s.portrait.gender == "man" for s in samples) / len(samples)
    assert share_man == pytest.approx(0.75, abs=0.02)
    named_woman = [s for s in samples if " woman " in f" {s.caption} "]
    assert all(s.portrait.gender == "woman" for s in named_woman)


def test_avatar_skew_is_injected(world):
    samples = [s for s in sample_world(world, 60_000, seed=1) if s.context == "avatar" and s.portrait.gender == "woman"]
    by_skin = Counter((s.portrait.skin, s.portrait.attire) for s in samples)
    rate = {
        k: by_skin[(k, "revealing")] / (by_skin[(k, "revealing")] + by_skin[(k, "covered")]) for k in ("medium", "dark")
    }
    assert rate["medium"] == pytest.approx(0.60, abs=0.05)
    assert rate["dark"] == pytest.approx(0.15, abs=0.04)


def test_paraphrases_never_appear_in_training_captions(world):
    captions = " ".join(s.caption for s in sample_world(world, 20_000, seed=2))
    for spec in world.occupations.values():
        for word in spec.paraphrases:
            assert f" {word}" not in captions
