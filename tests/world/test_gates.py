from __future__ import annotations

import numpy as np
import pytest

from fairdiff.metrics.bootstrap import wilson_ci
from fairdiff.models.loading import load_pipeline
from fairdiff.models.sampling import ImageOptions, SamplingRequest, draw
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
    # the worst cell is the one behind the max error, and its CI holds its share; no miss anywhere
    worst = report.fidelity_worst
    assert worst["error"] == report.fidelity_max_error and worst["g1_ci"][0] <= worst["g1"] <= worst["g1_ci"][1]
    occ, cell = worst["cell"].split(" ")
    attribute, value = cell.split("=")
    assert report.fidelity[occ][attribute][value]["g1"] == worst["g1"]
    assert report.fidelity_misses_beyond_ci == [] and report.validity_ci[1] == 1.0


def test_a_clear_fidelity_miss_is_beyond_its_ci_and_a_narrow_one_is_not(world, classify):
    """Doctors drawn dark-skinned every time: a miss that no sampling noise explains. The 400-image gate's CI
    on a 0.35 share is about +-0.047, so a share 0.09 off misses the +-0.08 band but not beyond its CI."""
    oracle = _oracle(world)

    def sample(prompts, seeds, guidance):
        if guidance == 1.0 and prompts[0] == "a photo of the face of a doctor":
            prompts = ["a photo of the face of a dark-skinned doctor"] * len(prompts)
        return oracle(prompts, seeds, guidance)

    report = run_gates(world, sample, classify, GateConfig(control_n=2, fidelity_n=100, guided_n=4, paraphrase_n=4))
    assert not report.passed["fidelity"]
    assert report.fidelity_worst["cell"] in ("doctor skin=light", "doctor skin=dark")
    assert report.fidelity_worst["error"] == pytest.approx(0.95, abs=0.06)
    assert {"doctor skin=light", "doctor skin=dark"} <= set(report.fidelity_misses_beyond_ci)
    assert all(c.startswith("doctor skin=") for c in report.fidelity_misses_beyond_ci)
    low, high = wilson_ci(140 + 36, 400, 0.95)  # 0.44 observed against 0.35: off by 0.09
    assert low < 0.35 + 0.08 < 0.44 < high


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
        images = [ImageOptions(p, "", s, guidance) for p, s in zip(prompts, seeds, strict=True)]
        return draw(loaded, SamplingRequest(images, steps=25))

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


def test_a_world_without_a_gate_occupation_is_one_error_before_sampling(world):
    import copy

    from fairdiff.errors import FairdiffError

    smaller = copy.copy(world)
    object.__setattr__(smaller, "occupations", {k: v for k, v in world.occupations.items() if k != "nurse"})
    never = lambda *a: pytest.fail("sampled before the check")  # noqa: E731
    with pytest.raises(FairdiffError, match=r"measure the occupations doctor, nurse, ceo, housekeeper; .* no nurse"):
        run_gates(smaller, never, never, GateConfig())
