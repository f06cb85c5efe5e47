"""`--method balanced`: each prompt's renders follow the mix exactly, the rest of the world as configured,
captions neutral (a share explicit), all a function of (seed, step)."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from fairdiff.errors import FairdiffError
from fairdiff.mitigate.balanced import BalancedMethod, explicit_caption
from fairdiff.mitigate.training import MitigateConfig, TrainContext, TrainPrompt

OCCUPATIONS = ("doctor", "nurse", "engineer")
PROMPTS = [TrainPrompt(f"a photo of the face of a{'n' * (o[0] == 'e')} {o}", {"occupation": o}) for o in OCCUPATIONS]


def _method(prompts=PROMPTS, mix=None, **options) -> BalancedMethod:
    cfg = MitigateConfig(method="balanced", steps=8, batch_size=6, seed=3, method_options=options)
    ctx = TrainContext(
        loaded=None, cfg=cfg, prompts=[p.text for p in prompts], mix=mix or {}, device="cpu", train_prompts=prompts
    )
    return BalancedMethod(ctx)


def test_every_prompt_gets_the_mix_exactly_and_the_world_for_the_rest():
    method = _method()
    cells: dict[str, Counter] = {o: Counter() for o in OCCUPATIONS}
    ages: Counter = Counter()
    for step in range(8):  # 8 x 6 images: 16 per prompt, two full blocks of the 8 gender x skin cells
        portraits, seeds, captions = method.batch(step)
        assert len(portraits) == len(seeds) == len(captions) == 6
        for p in portraits:
            cells[p.occupation][p.gender, p.skin] += 1
            ages[p.age] += 1
    for occupation, counts in cells.items():
        assert len(counts) == 8 and set(counts.values()) == {2}, occupation
    assert set(ages) == {"young", "old"}  # age is not mixed: drawn from the world, both values occur
    assert method.batch(5) == method.batch(5)  # a function of (seed, step)
    assert method.batch(5) != method.batch(6)


def test_captions_are_the_neutral_prompt_or_name_the_mixed_attributes():
    method = _method(explicit_share=0.5)
    seen = [c for step in range(8) for c in method.batch(step)[2]]
    neutral = {p.text for p in PROMPTS}
    explicit = [c for c in seen if c not in neutral]
    assert 0 < len(explicit) < len(seen)
    assert all("skinned" in c and ("woman" in c or "man" in c) for c in explicit)
    assert not any(c not in neutral for step in range(4) for c in _method(explicit_share=0).batch(step)[2])
    assert (
        explicit_caption("a photo of the face of an engineer", "engineer", {"skin": "dark", "gender": "woman"})
        == "a photo of the face of a dark-skinned woman engineer"
    )
    assert explicit_caption("a CEO at work", "ceo", {"gender": "man"}) == "a man CEO at work"
    assert explicit_caption("a person", "doctor", {"gender": "man"}) is None


def test_a_given_mix_is_followed():
    method = _method(mix={"gender": {"man": 0.0, "woman": 1.0}})
    portraits = [p for step in range(3) for p in method.batch(step)[0]]
    assert {p.gender for p in portraits} == {"woman"}
    assert len({p.skin for p in portraits}) > 1  # skin not in this mix: the world's


def test_bad_input_is_one_error():
    with pytest.raises(FairdiffError, match="has no occupation of the world"):
        _method(prompts=[TrainPrompt("a photo of a person")])
    with pytest.raises(FairdiffError, match="unknown method option"):
        _method(temperature=1)
    with pytest.raises(FairdiffError, match="explicit_share must be in"):
        _method(explicit_share=2)
    with pytest.raises(FairdiffError, match="unknown attribute"):
        _method(mix={"hat": {"yes": 1.0}})


def test_loss_is_the_v_prediction_loss_and_deterministic():
    from fairdiff.mitigate.diffusion import Conditioner, training_scheduler
    from fairdiff.models.loading import load_pipeline

    loaded = load_pipeline("tiny")
    cfg = MitigateConfig(method="balanced", steps=2, batch_size=3, autocast="off")
    ctx = TrainContext(
        loaded=loaded,
        cfg=cfg,
        prompts=[p.text for p in PROMPTS],
        mix={},
        device="cpu",
        train_prompts=PROMPTS,
        conditioner=Conditioner(loaded, grad=False),
        scheduler=training_scheduler(loaded),
    )
    assert ctx.scheduler.config.prediction_type == "v_prediction"
    method = BalancedMethod(ctx)
    with torch.no_grad():
        (a, stats), (b, _), (c, _) = method.loss(1), method.loss(1), method.loss(0)
    assert a.dim() == 0 and torch.isfinite(a) and 0 < float(a) < 1  # the bundled model fits renders well
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert abs(sum(v for k, v in stats.items() if k.startswith("share_gender")) - 1) < 1e-9
