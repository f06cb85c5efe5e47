"""tools/gpu_train/kit.py restore: a trimmed BERT (kept word rows, first position rows, xz) becomes a loadable
full-size model that encodes kept tokens exactly as the original did."""

from __future__ import annotations

import importlib.util
import json
import lzma
from pathlib import Path

import torch
from safetensors.torch import save
from transformers import BertConfig, BertModel

KIT = Path(__file__).parents[2] / "tools" / "gpu_train" / "kit.py"


def _kit_module():
    spec = importlib.util.spec_from_file_location("gpu_kit", KIT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_restore_rebuilds_a_model_that_encodes_kept_tokens_exactly(tmp_path):
    kit = _kit_module()
    config = BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    )
    torch.manual_seed(0)
    original = BertModel(config, add_pooling_layer=False).eval()
    state = original.state_dict()
    kept = torch.tensor([0, 3, 7, 11, 42])
    small = {k: v for k, v in state.items() if k not in (kit.WORD_EMBEDDINGS, kit.POSITION_EMBEDDINGS)}
    small.pop("embeddings.position_ids", None)
    small["word_embeddings.ids"] = kept
    small["word_embeddings.rows"] = state[kit.WORD_EMBEDDINGS][kept].clone()
    small["position_embeddings.rows"] = state[kit.POSITION_EMBEDDINGS][:6].clone()
    (tmp_path / "kit" / "minilm").mkdir(parents=True)
    (tmp_path / "kit" / "minilm" / kit.TRIMMED).write_bytes(lzma.compress(save(small)))
    (tmp_path / "kit" / "minilm" / "config.json").write_text(json.dumps(config.to_dict()))
    for name in kit.TOKENIZER_FILES[1:]:
        (tmp_path / "kit" / "minilm" / name).write_text("{}")

    restored_dir = kit.restore(tmp_path / "kit", tmp_path / "restored")
    restored = BertModel.from_pretrained(restored_dir, add_pooling_layer=False).eval()
    ids = torch.tensor([[0, 42, 7, 3, 11, 0]])  # kept tokens only, 6 positions
    with torch.no_grad():
        assert torch.equal(restored(input_ids=ids).last_hidden_state, original(input_ids=ids).last_hidden_state)
    weights = restored.state_dict()
    assert weights[kit.WORD_EMBEDDINGS][5].abs().sum() == 0  # a dropped row is zero
    assert weights[kit.POSITION_EMBEDDINGS].shape == (32, 16) and weights[kit.POSITION_EMBEDDINGS][6:].abs().sum() == 0
