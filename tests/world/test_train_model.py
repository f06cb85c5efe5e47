from __future__ import annotations

import json

import pytest
import torch

from fairdiff.errors import FairdiffError
from fairdiff.models.tiny import TinyPortraitPipeline
from fairdiff.world.train_model import TrainModelConfig, train_model, world_batch


class _Interrupt(Exception):
    pass


def _cfg(**kw):
    return TrainModelConfig(**{"steps": 4, "batch_size": 4, "checkpoint_every": 2, "warmup": 2, **kw})


def test_batches_are_a_function_of_the_step(world):
    a_imgs, a_caps = world_batch(world, _cfg(), 3)
    b_imgs, b_caps = world_batch(world, _cfg(), 3)
    assert (a_imgs == b_imgs).all() and a_caps == b_caps
    assert world_batch(world, _cfg(), 4)[1] != a_caps


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
    pipe = TinyPortraitPipeline.from_pretrained(straight, tokenizer=minilm[0], text_encoder=minilm[1])
    assert pipe.unet.config.cross_attention_dim == 384 and resumed.is_dir()


def test_checkpoint_of_another_run_is_refused(world, minilm, tmp_path):
    train_model(world, _cfg(steps=2), tmp_path, text=minilm)
    with pytest.raises(FairdiffError, match="checkpoint was trained with"):
        train_model(world, _cfg(steps=2, seed=9), tmp_path, text=minilm)
