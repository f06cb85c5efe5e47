from __future__ import annotations

import json

import pytest
import torch

from fairdiff.errors import FairdiffError
from fairdiff.models.tiny import TinyPortraitPipeline
from fairdiff.world.train_model import TrainModelConfig, sample_timesteps, train_model, world_batch, world_batches


class _Interrupt(Exception):
    pass


def _cfg(**kw):
    return TrainModelConfig(**{"steps": 4, "batch_size": 4, "checkpoint_every": 2, "warmup": 2, **kw})


def test_batches_are_a_function_of_the_step(world):
    a_imgs, a_caps = world_batch(world, _cfg(), 3)
    b_imgs, b_caps = world_batch(world, _cfg(), 3)
    assert (a_imgs == b_imgs).all() and a_caps == b_caps
    assert world_batch(world, _cfg(), 4)[1] != a_caps


def test_render_workers_give_the_same_batches_in_order_and_stop_when_closed(world):
    cfg = _cfg(steps=7, workers=2)
    batches = world_batches(world, cfg, 2)
    for step in (2, 3, 4):
        imgs, caps = next(batches)
        want_imgs, want_caps = world_batch(world, cfg, step)
        assert (imgs == want_imgs).all() and caps == want_caps, step
    batches.close()  # with steps 5 and 6 still in flight: returns, workers shut down
    assert len(list(world_batches(world, _cfg(steps=7), 2))) == 5  # in-process: steps 2..6


def test_a_run_with_render_workers_equals_one_without(world, minilm, tmp_path):
    a = train_model(world, _cfg(steps=3), tmp_path / "a", text=minilm).parent / "checkpoint.pt"
    b = train_model(world, _cfg(steps=3, workers=2), tmp_path / "b", text=minilm).parent / "checkpoint.pt"
    a, b = torch.load(a, weights_only=False)["ema"], torch.load(b, weights_only=False)["ema"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_after_interruption_equals_an_uninterrupted_run(world, minilm, tmp_path):
    straight = train_model(world, _cfg(), tmp_path / "straight", text=minilm)

    def stop_at_2(step, loss):
        if step == 3:  # the checkpoint of step 2 is on disk; step 3 is lost
            raise _Interrupt

    with pytest.raises(_Interrupt):
        train_model(world, _cfg(), tmp_path / "resumed", on_step=stop_at_2, text=minilm)
    assert torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=False)["step"] == 2
    resumed = train_model(world, _cfg(), tmp_path / "resumed", text=minilm)

    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=False)
    assert a["step"] == b["step"] == 4
    for key in a["ema"]:
        assert torch.equal(a["ema"][key], b["ema"][key]), key
    log = [json.loads(line) for line in (tmp_path / "straight" / "train.log").read_text().splitlines()]
    assert log[-1]["step"] == 4 and log[-1]["loss"] > 0
    assert json.loads((tmp_path / "resumed" / "exported.json").read_text()) == {"step": 4}
    assert not (tmp_path / "resumed" / "pipeline.tmp").exists() and not (tmp_path / "resumed" / "pipeline.old").exists()
    pipe = TinyPortraitPipeline.from_pretrained(straight, tokenizer=minilm[0], text_encoder=minilm[1])
    assert pipe.unet.config.cross_attention_dim == 384 and resumed.is_dir()


def test_checkpoint_of_another_run_is_refused(world, minilm, tmp_path):
    train_model(world, _cfg(steps=2), tmp_path, text=minilm)
    with pytest.raises(FairdiffError, match="checkpoint was trained with"):
        train_model(world, _cfg(steps=2, seed=9), tmp_path, text=minilm)


def test_timesteps_stay_uniform_unless_a_high_noise_share_is_asked_for():
    def draw(**kw):
        return sample_timesteps(_cfg(**kw), 1000, 4000, torch.Generator().manual_seed(0))

    plain = draw()
    assert torch.equal(plain, torch.randint(0, 1000, (4000,), generator=torch.Generator().manual_seed(0)))
    assert (draw(high_t_share=1.0, high_t_from=850) >= 850).all()
    half = draw(high_t_share=0.5, high_t_from=850)
    # half from [850, 1000), half uniform (15% of which also land there): 57.5% in the band
    assert 0.54 < (half >= 850).float().mean().item() < 0.61
    assert half.min() >= 0 and half.max() < 1000


def test_a_run_can_start_from_an_exported_pipeline(world, minilm, tmp_path):
    first = train_model(world, _cfg(steps=2), tmp_path / "first", text=minilm)
    start = TinyPortraitPipeline.from_pretrained(first, tokenizer=minilm[0], text_encoder=minilm[1]).unet
    cfg = _cfg(steps=1, lr=0.0, init=str(first))  # lr 0: the weights stay the init's
    ckpt = train_model(world, cfg, tmp_path / "second", text=minilm).parent / "checkpoint.pt"
    weights = torch.load(ckpt, weights_only=False)["unet"]
    for key, value in start.state_dict().items():
        assert torch.equal(weights[key], value), key

    wider = _cfg(steps=1, init=str(first), unet={"block_out_channels": (16, 32, 64)})
    with pytest.raises(FairdiffError, match="does not match this run's architecture"):
        train_model(world, wider, tmp_path / "third", text=minilm)
    with pytest.raises(FairdiffError, match="no UNet weights"):
        train_model(world, _cfg(steps=1, init=str(tmp_path)), tmp_path / "fourth", text=minilm)
