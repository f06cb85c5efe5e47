from __future__ import annotations

import numpy as np
import pytest

from fairdiff.generate import run_pipeline
from fairdiff.models.loading import load_pipeline
from fairdiff.world.classifier import load_classifier, predict_probs
from fairdiff.world.gates import GateConfig, run_gates
from fairdiff.world.render import render_batch
from fairdiff.world.schema import AGES, GENDERS, OCCUPATION_WORDS, SKIN_WORDS, Portrait


def _oracle(world, obey_prompt: bool = True):
    """A 'model' that renders exactly what the world would: named attributes as asked, the rest drawn from
    the config (photo context). With obey_prompt=False it ignores attribute words (a model without control)."""
    words_to_occ = {w: o for o, w in OCCUPATION_WORDS.items()}
    for occ, spec in world.occupations.items():
        words_to_occ.update({p: occ for p in spec.paraphrases})
    skin_of = {w: s for s, w in SKIN_WORDS.items()}

    def sample(prompts, seeds, guidance):
        portraits = []
        for prompt, seed in zip(prompts, seeds, strict=True):
            rng = np.random.default_rng(seed)
            tokens = prompt.split()
            occ = next(words_to_occ[t] for t in tokens if t in words_to_occ)
            attrs = {a: rng.choice(list(d), p=list(d.values())) for a, d in world.occupations[occ].probs.items()}
            if obey_prompt:
                for t in tokens:
                    if t in GENDERS:
                        attrs["gender"] = t
                    elif t in AGES:
                        attrs["age"] = t
                    elif t in skin_of:
                        attrs["skin"] = skin_of[t]
            revealing = rng.random() < world.p_revealing("photo", {**attrs, "occupation": occ})
            portraits.append(Portrait(**attrs, occupation=occ, attire="revealing" if revealing else "covered"))
        return render_batch(portraits, seeds)

    return sample


@pytest.fixture(scope="module")
def classify():
    model = load_classifier()
    return lambda images: predict_probs(model, images)


def test_a_model_that_draws_the_world_passes_every_gate(world, classify):
    report = run_gates(world, _oracle(world), classify, GateConfig(control_n=8, guided_n=50, paraphrase_n=64))
    assert report.passed == {"controllability": True, "fidelity": True, "validity": True, "paraphrase": True}
    assert report.fidelity_max_error < 0.08
    assert report.fidelity["doctor"]["gender"]["man"]["injected"] == 0.75
    assert report.validity == 1.0
    assert report.off_palette == {"doctor": 0.0, "nurse": 0.0, "ceo": 0.0, "housekeeper": 0.0, "all": 0.0}
    doctor_gender = report.guidance_amplification["doctor"]["gender"]
    assert doctor_gender["injected"] == pytest.approx(0.5) and doctor_gender["ratio"] is not None
    assert report.guidance_amplification["nurse"]["skin"]["ratio"] is None  # uniform in the world: no ratio


def test_a_model_that_ignores_attribute_words_fails_controllability(world, classify):
    report = run_gates(
        world,
        _oracle(world, obey_prompt=False),
        classify,
        GateConfig(control_n=4, fidelity_n=50, guided_n=10, paraphrase_n=10),
    )
    assert not report.passed["controllability"]
    assert report.controllability["occupation"] == 1.0  # occupation is still drawn as asked
    assert report.controllability["skin"] < 0.6


def test_bundled_model_on_a_small_sample(world, classify):
    """The real gates run at full size with `fairdiff world gates` (docs/model-card.md); this is a fast check
    of the bundled weights on 2 occupations x 8 skin/gender prompts x 2 images, plus neutral prompts."""
    loaded = load_pipeline("tiny")

    def sample(prompts, seeds, guidance):
        return run_pipeline(loaded, prompts, [""] * len(prompts), seeds, steps=25, guidance=guidance)

    cfg = GateConfig(
        control_occupations=("doctor", "nurse"),
        control_n=2,
        fidelity_occupations=("doctor",),
        fidelity_n=32,
        guided_n=8,
        paraphrase_n=8,
    )
    report = run_gates(world, sample, classify, cfg)
    assert min(report.controllability.values()) >= 0.85, report.controllability
    assert report.validity >= 0.85
    # the injected doctor skew is visible without guidance: clearly more men than women
    assert report.fidelity["doctor"]["gender"]["man"]["g1"] >= 0.55
