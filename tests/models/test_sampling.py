from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0

from fairdiff.errors import FairdiffError
from fairdiff.models.attention import cross_attention_layers
from fairdiff.models.loading import LoadedModel, load_pipeline
from fairdiff.models.random_pipelines import tiny_sd_pipeline, tiny_sdxl_pipeline
from fairdiff.models.sampling import ImageOptions, SamplingRequest, draw
from fairdiff.models.tiny import build_tiny_pipeline, build_tiny_unet


def _loaded(pipe, kind: str) -> LoadedModel:
    pipe.set_progress_bar_config(disable=True)
    return LoadedModel(pipeline=pipe, name=f"random-{kind}", kind=kind, source=".")


@pytest.fixture(scope="module")
def tiny(minilm):
    return _loaded(build_tiny_pipeline(build_tiny_unet(seed=1), text=minilm), "tiny")


@pytest.fixture(scope="module")
def sd():
    return _loaded(tiny_sd_pipeline(seed=0), "sd")


@pytest.fixture(scope="module", params=["tiny", "sd"])
def model(request, tiny, sd):
    return {"tiny": tiny, "sd": sd}[request.param]


def _request(images, **kw) -> SamplingRequest:
    return SamplingRequest(images, **{"steps": 2, "height": 32, "width": 32, **kw})


DOCTOR = ImageOptions("a doctor", "", 0, 5.0)
NURSE = ImageOptions("a nurse", "blurry", 1, 5.0)


def test_request_equals_the_old_call_on_the_bundled_model():
    """The list-based call fairdiff made before the request existed, written out, gives the same bytes."""
    loaded = load_pipeline("tiny")
    prompts, negatives, seeds = ["a photo of the face of a doctor"] * 2, ["", "revealing clothes"], [0, 7]
    for guidance in (None, 1.0, 3.0):
        kwargs = {"num_inference_steps": 3, "output_type": "np"}
        if guidance is not None:
            kwargs["guidance_scale"] = guidance
        old = loaded.pipeline(
            prompt=prompts,
            negative_prompt=negatives,
            generator=[torch.Generator("cpu").manual_seed(s) for s in seeds],
            **kwargs,
        ).images
        old = (np.clip(np.asarray(old, dtype=np.float32), 0, 1) * 255).round().astype(np.uint8)
        images = [ImageOptions(p, n, s, guidance) for p, n, s in zip(prompts, negatives, seeds, strict=True)]
        new = draw(loaded, SamplingRequest(images, steps=3, autocast="off"))  # the old call ran in fp32
        assert new.dtype == np.uint8 and new.shape == (2, 32, 32, 3)
        assert np.array_equal(new, old), guidance


def test_per_image_guidance_on_sd_is_sub_batches_in_request_order(sd):
    a, b, c = (
        ImageOptions("a doctor", "", 0, 5.0),
        ImageOptions("a nurse", "", 1, 2.0),
        ImageOptions("a cook", "", 2, 5.0),
    )
    mixed = draw(sd, _request([a, b, c]))
    ac, alone_b = draw(sd, _request([a, c])), draw(sd, _request([b]))
    assert np.array_equal(mixed[[0, 2]], ac) and np.array_equal(mixed[1], alone_b[0])
    assert not np.array_equal(draw(sd, _request([ImageOptions("a nurse", "", 1, 5.0)]))[0], alone_b[0])


def test_per_image_guidance_on_tiny_is_one_pass_with_a_tensor(tiny, monkeypatch):
    images = [ImageOptions("a nurse", "revealing", 3, g) for g in (1.0, 3.0, 6.0)]
    calls = []
    real = type(tiny.pipeline).__call__
    monkeypatch.setattr(type(tiny.pipeline), "__call__", lambda self, **kw: calls.append(kw) or real(self, **kw))
    mixed = draw(tiny, _request(images))
    assert len(calls) == 1 and torch.equal(calls[0]["guidance_scale"], torch.tensor([1.0, 3.0, 6.0]))
    for i, opt in enumerate(images):
        alone = draw(tiny, _request([opt]))[0]
        assert np.abs(mixed[i].astype(int) - alone.astype(int)).max() <= 1, opt.guidance  # batch-shape kernels
    assert np.abs(mixed[0].astype(int) - mixed[2].astype(int)).max() > 10  # guidance does act per image


def test_tensor_of_equal_scales_is_the_float(tiny):
    pipe, kw = tiny.pipeline, dict(num_inference_steps=2, output_type="np")
    gens = lambda: [torch.Generator().manual_seed(s) for s in (0, 1)]  # noqa: E731
    as_float = pipe(["a nurse", "a cook"], generator=gens(), guidance_scale=3.0, **kw).images
    as_tensor = pipe(["a nurse", "a cook"], generator=gens(), guidance_scale=torch.tensor([3.0, 3.0]), **kw).images
    assert np.array_equal(as_float, as_tensor)
    with pytest.raises(ValueError, match="guidance_scale"):
        pipe(["a nurse"], generator=gens()[:1], guidance_scale=torch.tensor([3.0, 2.0]), **kw)


@pytest.mark.parametrize("seed", [-1, 2**64, 2**70])
def test_seeds_outside_64_bits_are_refused_by_name(tiny, seed):
    with pytest.raises(FairdiffError, match=f"image 1: seed.*{seed}"):
        draw(tiny, _request([DOCTOR, ImageOptions("a nurse", "", seed)]))


def test_largest_seed_draws(tiny):
    assert draw(tiny, _request([ImageOptions("a nurse", "", 2**64 - 1)])).shape == (1, 32, 32, 3)


@pytest.mark.parametrize(
    ("request_kw", "message"),
    [
        (dict(images=[]), "at least one image"),
        (dict(steps=0), "steps"),
        (dict(images=[ImageOptions("a", "", 0, -1.0)]), "image 0: guidance"),
        (dict(images=[ImageOptions("a", "", 0, float("nan"))]), "image 0: guidance"),
        (dict(autocast="fp8"), "autocast"),
    ],
)
def test_bad_requests(tiny, request_kw, message):
    with pytest.raises(FairdiffError, match=message):
        draw(tiny, _request(**{"images": [DOCTOR], **request_kw}))


class _Probe(AttnProcessor2_0):
    """SD's default processor that records the `probe` kwarg it receives and multiplies its output by `gain`."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list = []

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, probe=None, gain=1.0):
        self.seen.append(probe)
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask) * gain


def test_processors_and_cross_attention_kwargs_reach_every_cross_layer(model):
    unet = model.pipeline.unet
    before = dict(unet.attn_processors)
    base = draw(model, _request([DOCTOR, NURSE]))
    probes = {layer.name: _Probe() for layer in cross_attention_layers(unet)}
    same = draw(model, _request([DOCTOR, NURSE], attention_processors=probes, cross_attention_kwargs={"probe": 7}))
    assert np.array_equal(same, base)  # the same computation, seen from inside
    for probe in probes.values():
        assert probe.seen and set(probe.seen) == {7}
    assert all(unet.attn_processors[k] is v for k, v in before.items())  # restored: the very same objects
    louder = draw(model, _request([DOCTOR, NURSE], attention_processors=probes, cross_attention_kwargs={"gain": 3.0}))
    assert not np.array_equal(louder, base)


def test_lora_scale_in_cross_attention_kwargs(model):
    from peft import LoraConfig

    unet = model.pipeline.unet
    base = draw(model, _request([DOCTOR]))
    torch.manual_seed(0)
    unet.add_adapter(LoraConfig(r=4, target_modules=["to_k", "to_v"], init_lora_weights=False), "probe")
    try:
        off = draw(model, _request([DOCTOR], cross_attention_kwargs={"scale": 0.0}))
        on = draw(model, _request([DOCTOR], cross_attention_kwargs={"scale": 1.0}))
    finally:
        unet.delete_adapters("probe")
    assert np.array_equal(off, base) and not np.array_equal(on, base)


def test_step_hook_sees_each_step_and_changes_nothing_when_it_returns_none(model):
    seen = []

    def hook(ctx):
        n = len(ctx.indices)
        assert ctx.cfg and ctx.sample.shape[0] == ctx.encoder_hidden_states.shape[0] == ctx.noise_pred.shape[0] == 2 * n
        assert torch.equal(ctx.predict(), ctx.noise_pred)  # an extra pass, not re-entering the hook
        seen.append((ctx.step, float(ctx.timestep), ctx.indices, ctx.guidance.tolist()))

    base = draw(model, _request([DOCTOR, NURSE], steps=3))
    hooked = draw(model, _request([DOCTOR, NURSE], steps=3, step_hook=hook))
    assert np.array_equal(hooked, base)
    timesteps = [float(t) for t in model.pipeline.scheduler.timesteps]
    assert seen == [(i, timesteps[i], [0, 1], [5.0, 5.0]) for i in range(3)]
    assert not model.pipeline.unet._forward_hooks  # removed after the draw


def test_step_hook_changes_the_prediction(model):
    fp32 = {"steps": 3, "autocast": "off"}  # exact hook arithmetic; bf16 rounds the round trip more
    base = draw(model, _request([DOCTOR, NURSE], **fp32))
    same = draw(model, _request([DOCTOR, NURSE], **fp32, step_hook=lambda ctx: ctx.raw_for(ctx.guided())))
    assert np.abs(same.astype(int) - base.astype(int)).max() <= 1  # the same guided prediction, up to rounding

    def push(ctx):  # a guidance term on the guided prediction, as Fair Diffusion adds its edit directions
        return ctx.raw_for(ctx.guided() + 0.5 * torch.ones_like(ctx.guided()))

    pushed = draw(model, _request([DOCTOR, NURSE], **fp32, step_hook=push))
    assert np.abs(pushed.astype(int) - base.astype(int)).max() > 10
    with pytest.raises(FairdiffError, match="step hook returned"):
        draw(model, _request([DOCTOR], step_hook=lambda ctx: ctx.noise_pred[:1, :1]))
    assert not model.pipeline.unet._forward_hooks


def test_step_hook_on_an_sd_sub_batch_sees_its_images(sd):
    seen = []
    mixed = [DOCTOR, ImageOptions("a nurse", "", 1, 2.0), ImageOptions("a cook", "", 2, 5.0)]
    draw(sd, _request(mixed, step_hook=lambda ctx: seen.append((ctx.step, ctx.indices, ctx.guidance.tolist()))))
    assert seen == [(0, [0, 2], [5.0, 5.0]), (1, [0, 2], [5.0, 5.0]), (0, [1], [2.0]), (1, [1], [2.0])]


def test_step_callback_replaces_latents_as_in_sd(model):
    """The same callback on both pipelines: it sees the tensors it asks for, and the latents it returns are used."""
    pipe, seen = model.pipeline, []

    def zero_latents(p, i, t, tensors):
        seen.append((i, sorted(tensors), tensors["prompt_embeds"].shape[0]))
        return {"latents": torch.zeros_like(tensors["latents"])} if i == p.num_timesteps - 1 else {}

    def run(seed, callback=None):
        kw = dict(num_inference_steps=2, guidance_scale=5.0, output_type="np", height=32, width=32)
        if model.kind == "tiny":
            kw.pop("height"), kw.pop("width")
        if callback is not None:
            kw |= dict(callback_on_step_end=callback, callback_on_step_end_tensor_inputs=["latents", "prompt_embeds"])
        return pipe(["a doctor"], generator=[torch.Generator().manual_seed(seed)], **kw).images

    assert not np.allclose(run(0), run(1))
    assert np.array_equal(run(0, zero_latents), run(1, zero_latents))  # the last latents were replaced
    assert seen[:2] == [(0, ["latents", "prompt_embeds"], 2), (1, ["latents", "prompt_embeds"], 2)]  # cat(neg, pos)


def test_step_callback_tensor_inputs_are_checked(tiny):
    with pytest.raises(ValueError, match="callback_on_step_end_tensor_inputs"):
        tiny.pipeline(
            "a doctor",
            num_inference_steps=1,
            callback_on_step_end=lambda *a: {},
            callback_on_step_end_tensor_inputs=["sample"],
        )


def test_bf16_autocast_is_close_to_fp32_when_on(tiny):
    base = draw(tiny, _request([DOCTOR, NURSE], autocast="off"))
    assert _request([DOCTOR]).autocast == "auto"
    bf16 = draw(tiny, _request([DOCTOR, NURSE], autocast="on"))
    diff = np.abs(bf16.astype(int) - base.astype(int))
    assert bf16.shape == base.shape and diff.mean() < 8  # a random UNet at 2 steps: bf16 rounding, not garbage


def test_sdxl_draws_a_request_with_a_hook():
    loaded = _loaded(tiny_sdxl_pipeline(seed=0), "sdxl")
    steps = []
    images = draw(loaded, _request([DOCTOR, NURSE], step_hook=lambda ctx: steps.append(ctx.unet_kwargs.keys())))
    assert images.shape == (2, 32, 32, 3) and len(steps) == 2
    assert "added_cond_kwargs" in steps[0]  # SDXL's text_embeds and time_ids, for extra passes


@pytest.mark.parametrize("native", [True, False])
def test_auto_autocast_is_bf16_exactly_where_the_cpu_has_it(tiny, monkeypatch, native):
    import fairdiff.models.precision as precision
    from fairdiff.models.sampling import autocast_used

    monkeypatch.setattr(precision, "bf16_is_native", lambda device: native)
    auto = draw(tiny, _request([DOCTOR, NURSE]))
    expected = draw(tiny, _request([DOCTOR, NURSE], autocast="on" if native else "off"))
    assert np.array_equal(auto, expected) and autocast_used(tiny) is native
