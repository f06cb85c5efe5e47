from __future__ import annotations

import numpy as np
import pytest
import torch

from fairdiff.models.tiny import TinyPortraitPipeline, build_tiny_pipeline, build_tiny_unet


@pytest.fixture(scope="module")
def random_pipe(minilm):
    pipe = build_tiny_pipeline(build_tiny_unet(seed=1), text=minilm)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _gens(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def test_attention_modules_carry_sd_names():
    names = {n for n, _ in build_tiny_unet().named_modules()}
    for suffix in ("attn1.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0"):
        assert any(n.endswith(suffix) for n in names), suffix
    assert "down_blocks.2.attentions.0.transformer_blocks.0.attn2.to_k" in names


def test_save_load_roundtrip_without_text_encoder(random_pipe, tmp_path):
    random_pipe.save_pretrained(tmp_path)
    assert not (tmp_path / "text_encoder").exists()
    assert random_pipe.text_encoder is not None  # restored after saving
    loaded = TinyPortraitPipeline.from_pretrained(
        tmp_path, text_encoder=random_pipe.text_encoder, tokenizer=random_pipe.tokenizer
    )
    loaded.set_progress_bar_config(disable=True)
    a = random_pipe(
        "a doctor", num_images_per_prompt=2, num_inference_steps=2, generator=_gens([0, 1]), output_type="np"
    )
    b = loaded("a doctor", num_images_per_prompt=2, num_inference_steps=2, generator=_gens([0, 1]), output_type="np")
    assert np.array_equal(a.images, b.images)


def test_per_image_seeds_are_batch_independent(random_pipe):
    both = random_pipe(
        "a nurse", num_images_per_prompt=2, num_inference_steps=2, generator=_gens([5, 6]), output_type="np"
    ).images
    alone = random_pipe("a nurse", num_inference_steps=2, generator=_gens([6]), output_type="np").images
    np.testing.assert_allclose(both[1], alone[0], atol=1e-5)


def test_guidance_and_negative_prompt_change_output(random_pipe):
    kw = dict(num_inference_steps=2, output_type="np")
    base = random_pipe("a nurse", generator=_gens([0]), guidance_scale=1.0, **kw).images
    guided = random_pipe("a nurse", generator=_gens([0]), guidance_scale=3.0, **kw).images
    neg = random_pipe("a nurse", negative_prompt="revealing", generator=_gens([0]), guidance_scale=3.0, **kw).images
    assert not np.allclose(base, guided) and not np.allclose(guided, neg)
    assert base.shape == (1, 32, 32, 3) and 0 <= base.min() and base.max() <= 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(num_inference_steps=0), "num_inference_steps"),
        (dict(guidance_scale=float("nan")), "guidance_scale"),
        (dict(num_images_per_prompt=0), "num_images_per_prompt"),
        (dict(negative_prompt=["a", "b"]), "negative_prompt"),
        (dict(output_type="latent"), "output_type"),
    ],
)
def test_check_inputs(random_pipe, kwargs, message):
    with pytest.raises(ValueError, match=message):
        random_pipe("a doctor", **{"num_inference_steps": 1, **kwargs})


def test_unet_overrides_for_architecture_experiments():
    import pytest

    from fairdiff.errors import FairdiffError
    from fairdiff.models.tiny import build_tiny_unet

    unet = build_tiny_unet(0, {"down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D")})
    assert unet.config.down_block_types[1] == "CrossAttnDownBlock2D"
    with pytest.raises(FairdiffError, match="unknown UNet config key"):
        build_tiny_unet(0, {"bogus": 1})
