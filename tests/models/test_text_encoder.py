from __future__ import annotations

import torch

from fairdiff.models.text_encoder import EMBED_DIM, MAX_LENGTH, encode_text
from fairdiff.world.captions import sample_world


def test_token_embeddings_shape_and_determinism(minilm):
    tokenizer, model = minilm
    a = encode_text(tokenizer, model, ["a photo of the face of a doctor", ""])
    assert a.shape == (2, MAX_LENGTH, EMBED_DIM)
    assert torch.equal(a, encode_text(tokenizer, model, ["a photo of the face of a doctor", ""]))
    assert not torch.allclose(a[0], a[1])


def test_every_world_caption_fits_without_truncation(minilm, world):
    tokenizer, _ = minilm
    captions = {s.caption for s in sample_world(world, 20_000, seed=0)}
    longest = max(len(tokenizer(c).input_ids) for c in captions)
    assert longest <= MAX_LENGTH, longest


def test_a_prompt_longer_than_the_model_reads_is_named_in_a_warning(minilm, caplog):
    tokenizer, model = minilm
    long = "a photo of the face of a dark-skinned old woman doctor in a bright hospital corridor at night with a "
    long += "stethoscope"
    with caplog.at_level("WARNING", logger="fairdiff.models.text_encoder"):
        encode_text(tokenizer, model, ["a photo of the face of a doctor", long, long])
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "longer than 24 tokens" in warnings[0] and "stethoscope" in warnings[0]
