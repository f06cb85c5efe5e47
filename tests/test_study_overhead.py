"""Reversibility is checked bit for bit: a change removed exactly passes, a change not restored fails."""

from __future__ import annotations

import pytest
import torch

from fairdiff.study.overhead import _request, check_reversible


@pytest.fixture(scope="module")
def tiny():
    from fairdiff.models.loading import load_pipeline

    return load_pipeline("tiny")


def _projection(loaded):
    from fairdiff.models.attention import cross_attention_layers

    return cross_attention_layers(loaded.pipeline.unet)[0].module.to_k


def test_exact_restore_passes_and_a_perturbed_model_fails(tiny):
    request = _request(images=1, steps=2, seed=0)
    linear = _projection(tiny)
    original = linear.weight.data.clone()

    def perturb() -> None:
        linear.weight.data = linear.weight.data + 0.05

    def restore() -> None:
        linear.weight.data = original.clone()

    good = check_reversible(tiny, request, perturb, restore)
    assert good == {"identical_images": True, "identical_weights": True, "changed_images": True, "max_abs_diff": 0}
    try:
        bad = check_reversible(tiny, request, perturb, lambda: None)  # the edit is never taken out
        assert not bad["identical_weights"] and not bad["identical_images"] and bad["max_abs_diff"] > 0
        # a remove that leaves the weights off by one float step is caught too
        tiny_step = check_reversible(
            tiny, request, restore, lambda: setattr(linear.weight, "data", torch.nextafter(original, original + 1))
        )
        assert not tiny_step["identical_weights"]
    finally:
        restore()
