from __future__ import annotations

import numpy as np
import pytest
import torch

from fairdiff.errors import FairdiffError
from fairdiff.mitigate.guidance import EditPrompt, SegaParams, SemanticGuidance, sega_hook
from fairdiff.models.loading import LoadedModel, load_pipeline
from fairdiff.models.random_pipelines import tiny_sd_pipeline, tiny_sdxl_pipeline
from fairdiff.models.sampling import ImageOptions, SamplingRequest, draw


def _loaded(pipe, kind: str) -> LoadedModel:
    pipe.set_progress_bar_config(disable=True)
    return LoadedModel(pipeline=pipe, name=f"random-{kind}", kind=kind, source=".")


@pytest.fixture(scope="module")
def bundled():
    loaded = load_pipeline("tiny")
    loaded.pipeline.set_progress_bar_config(disable=True)
    return loaded


@pytest.fixture(scope="module", params=["tiny", "sd", "sdxl"])
def model(request, bundled):
    if request.param == "tiny":
        return bundled
    build = tiny_sd_pipeline if request.param == "sd" else tiny_sdxl_pipeline
    return _loaded(build(seed=0), request.param)


IMAGES = [ImageOptions("a photo of the face of a doctor", "", 0, 3.0), ImageOptions("a photo of a nurse", "", 1, 3.0)]
# short texts: the random pipelines' byte-level tokenizer keeps 14 characters
EDITS = [[EditPrompt("a woman"), EditPrompt("a man", reverse=True)], [EditPrompt("dark-skinned")]]


def _draw(model, hook=None, images=IMAGES, steps=2):
    return draw(model, SamplingRequest(images, steps=steps, height=32, width=32, step_hook=hook, autocast="off"))


def test_zero_scale_is_bit_identical_and_a_strong_scale_changes_the_images(model):
    base = _draw(model)
    calls = []
    hook = sega_hook(model.pipeline, EDITS, SegaParams(scale=0.0, warmup=0))
    counted = lambda ctx: calls.append(ctx.step) or hook(ctx)  # noqa: E731
    assert np.array_equal(_draw(model, counted), base)  # the hook ran (its extra pass too) and changed nothing
    assert calls == [0, 1]
    strong = _draw(model, sega_hook(model.pipeline, EDITS, SegaParams(scale=20.0, warmup=0, threshold=0.5)))
    for i in range(2):  # both images move, each by its own edits
        assert np.abs(strong[i].astype(int) - base[i].astype(int)).max() > 10
    assert not model.pipeline.unet._forward_hooks


def test_one_extra_batched_pass_per_step_holds_every_edit_prompt(model):
    guidance = SemanticGuidance(model.pipeline, SegaParams(scale=5.0, warmup=0))
    batches = []
    unet = model.pipeline.unet
    handle = unet.register_forward_pre_hook(
        lambda m, args, kw: batches.append((args or [kw["sample"]])[0].shape[0]), with_kwargs=True
    )
    try:
        _draw(model, guidance.hook(EDITS))
    finally:
        handle.remove()
    assert batches == [4, 3, 4, 3]  # per step: the CFG pass (2 x 2 images), then ONE pass of the 3 edit prompts


def test_warmup_keeps_the_first_steps_and_an_image_without_edits_is_unchanged(bundled):
    base = _draw(bundled, steps=3)
    late = _draw(bundled, sega_hook(bundled.pipeline, [[], EDITS[1]], SegaParams(scale=20.0, warmup=2)), steps=3)
    assert np.array_equal(late[0], base[0])  # no edit prompts: image 0 is bit-identical
    assert np.abs(late[1].astype(int) - base[1].astype(int)).max() > 0
    never = _draw(bundled, sega_hook(bundled.pipeline, EDITS, SegaParams(scale=20.0, warmup=3)), steps=3)
    assert np.array_equal(never, base)  # warm-up longer than the run: momentum builds but is never applied
    off = _draw(bundled, sega_hook(bundled.pipeline, EDITS, SegaParams(scale=20.0, warmup=0, cooldown=0)), steps=3)
    assert np.array_equal(off, base)


def test_without_classifier_free_guidance_the_extra_pass_brings_the_unconditional_prediction(bundled):
    images = [ImageOptions(o.prompt, o.negative, o.seed, 1.0) for o in IMAGES]  # guidance 1: no CFG on tiny
    base = _draw(bundled, images=images)
    pushed = _draw(bundled, sega_hook(bundled.pipeline, EDITS, SegaParams(scale=20.0, warmup=0)), images=images)
    assert np.abs(pushed.astype(int) - base.astype(int)).max() > 10


def test_the_edit_term_follows_sega(bundled):
    """One step by hand: psi = s_e (eps_c - eps_u), thresholded per channel, momentum; added to the CFG output."""
    p = SegaParams(scale=3.0, warmup=0, threshold=0.75, momentum=0.5, beta=0.6)
    seen = {}

    def probe(ctx):
        out = hook(ctx)
        if ctx.step == 0:
            emb = bundled.pipeline.encode_prompt(["dark-skinned"])
            eps_c = ctx.predict(ctx.sample[1:2], emb)
            uncond, cond = ctx.noise_pred.chunk(2)
            psi = 3.0 * (eps_c - uncond)
            q = torch.quantile(psi.abs().flatten(2), 0.75, dim=2)[..., None, None]
            psi = torch.where(psi.abs() >= q, psi, torch.zeros_like(psi))
            want = uncond + 3.0 * (cond - uncond) + psi  # momentum 0 at the first step
            got_u, got_c = out.chunk(2)
            seen["err"] = float((got_u + 3.0 * (got_c - got_u) - want).abs().max())
        return out

    hook = sega_hook(bundled.pipeline, [EDITS[1]], p)
    _draw(bundled, probe, images=IMAGES[:1], steps=1)
    assert seen["err"] < 1e-4


def test_bad_parameters_and_edits_are_one_error(bundled):
    for bad, match in (
        (SegaParams(scale=-1.0), "scale"),
        (SegaParams(threshold=1.0), "threshold"),
        (SegaParams(warmup=-2), "warmup"),
        (SegaParams(beta=float("nan")), "beta"),
    ):
        with pytest.raises(FairdiffError, match=match):
            SemanticGuidance(bundled.pipeline, bad)
    with pytest.raises(FairdiffError, match="EditPrompt"):
        sega_hook(bundled.pipeline, [["a woman"]])
    with pytest.raises(FairdiffError, match="no edit prompts for image 1"):
        _draw(bundled, sega_hook(bundled.pipeline, EDITS[:1]))
