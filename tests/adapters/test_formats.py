from __future__ import annotations

import json

import pytest
import torch

from fairdiff.adapters.engine import attach, load_into_slot, set_combination
from fairdiff.adapters.formats import read_peft, write_peft
from fairdiff.errors import FairdiffError
from fairdiff.models.tiny import build_tiny_unet

TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(2, 3, 32, 32, generator=g), torch.tensor([10, 500]), torch.randn(2, 24, 384, generator=g))


def _peft_adapter(tmp_path, name="a", seed=1, **config):
    """A random non-zero PEFT LoRA on the tiny UNet, saved with PEFT itself; returns (dir, PEFT output)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    cfg = LoraConfig(target_modules=TARGETS, init_lora_weights=False, **config)
    model = get_peft_model(build_tiny_unet(), cfg)
    x, t, c = _inputs()
    with torch.no_grad():
        out = model.base_model.model(x, t, encoder_hidden_states=c).sample
    model.save_pretrained(tmp_path / name)
    return tmp_path / name, out


@pytest.mark.parametrize(
    "config",
    [
        dict(r=4, lora_alpha=8),
        dict(r=4, lora_alpha=4, use_rslora=True),
        dict(r=4, lora_alpha=8, rank_pattern={"to_k": 2}, alpha_pattern={"to_v": 3}),
    ],
)
def test_outputs_equal_peft_on_the_same_file(tmp_path, config):
    path, expected = _peft_adapter(tmp_path, **config)
    adapter = read_peft(path)
    unet = build_tiny_unet().requires_grad_(False)
    attach(unet, [adapter])
    set_combination(unet, [1.0])
    x, t, c = _inputs()
    with torch.no_grad():
        got = unet(x, t, encoder_hidden_states=c).sample
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_written_files_load_in_peft_with_the_same_output(tmp_path):
    from peft import PeftModel

    path, expected = _peft_adapter(tmp_path, r=4, lora_alpha=8, rank_pattern={"to_k": 2})
    written = write_peft(read_peft(path), tmp_path / "rewritten")
    model = PeftModel.from_pretrained(build_tiny_unet(), written)
    x, t, c = _inputs()
    with torch.no_grad():
        got = model.base_model.model(x, t, encoder_hidden_states=c).sample
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_hot_swap_into_a_slot(tmp_path):
    path_a, out_a = _peft_adapter(tmp_path, "a", seed=1, r=4, lora_alpha=8)
    path_b, out_b = _peft_adapter(tmp_path, "b", seed=2, r=4, lora_alpha=8)
    unet = build_tiny_unet().requires_grad_(False)
    attach(unet, [read_peft(path_a)])
    set_combination(unet, [1.0])
    x, t, c = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(unet(x, t, encoder_hidden_states=c).sample, out_a, rtol=0, atol=1e-5)
        load_into_slot(unet, read_peft(path_b), 0)
        torch.testing.assert_close(unet(x, t, encoder_hidden_states=c).sample, out_b, rtol=0, atol=1e-5)


def _corrupt(tmp_path, edit):
    from safetensors.torch import load_file, save_file

    path, _ = _peft_adapter(tmp_path, r=2, lora_alpha=2)
    tensors = load_file(str(path / "adapter_model.safetensors"))
    edit(tensors, path)
    save_file(tensors, str(path / "adapter_model.safetensors"))
    return path


def test_bad_files_name_the_key(tmp_path):
    key = next(iter(read_peft(_peft_adapter(tmp_path / "ok", r=2, lora_alpha=2)[0]).layers))

    def nan(t, _):
        k = next(k for k in t if "lora_B" in k)
        t[k][0, 0] = float("nan")

    with pytest.raises(FairdiffError, match="contains NaN or Inf"):
        read_peft(_corrupt(tmp_path / "nan", nan))

    def extra(t, _):
        t["base_model.model.mid_block.magic"] = torch.zeros(1)

    with pytest.raises(FairdiffError, match="unknown key 'base_model.model.mid_block.magic'"):
        read_peft(_corrupt(tmp_path / "extra", extra))

    def drop_b(t, _):
        del t[next(k for k in t if "lora_B" in k)]

    with pytest.raises(FairdiffError, match="has lora_A but no lora_B"):
        read_peft(_corrupt(tmp_path / "drop", drop_b))

    truncated = _peft_adapter(tmp_path / "trunc", r=2, lora_alpha=2)[0] / "adapter_model.safetensors"
    truncated.write_bytes(truncated.read_bytes()[:-100])
    with pytest.raises(FairdiffError, match="truncated or corrupt"):
        read_peft(truncated.parent)

    pickled = tmp_path / "pickle"
    pickled.mkdir()
    (pickled / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2}))
    torch.save({}, pickled / "adapter_model.bin")
    with pytest.raises(FairdiffError, match="pickled weights are refused"):
        read_peft(pickled)

    # a target the model lacks, and a shape that does not fit
    adapter = read_peft(_peft_adapter(tmp_path / "ok2", r=2, lora_alpha=2)[0])
    adapter.layers["not.a.module"] = adapter.layers[key]
    with pytest.raises(FairdiffError, match="target 'not.a.module' does not exist"):
        attach(build_tiny_unet(), [adapter])
    del adapter.layers["not.a.module"]
    layer = adapter.layers[key]
    layer.A = torch.randn(2, layer.A.shape[1] + 1)
    with pytest.raises(FairdiffError, match=rf"{key}.*does not fit"):
        attach(build_tiny_unet(), [adapter])


def _layer(seed: int = 0):
    from fairdiff.adapters.formats import LoRALayer

    g = torch.Generator().manual_seed(seed)
    return LoRALayer(torch.randn(2, 4, generator=g), torch.randn(4, 2, generator=g), 2.0, 1.0)


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ({"model": {"old": _layer()}}, {"unet": {"new": _layer(1)}}),  # one-model, then a pipeline adapter
        ({"unet": {"u1": _layer()}, "text_encoder": {"t_old": _layer(1)}}, {"unet": {"u2": _layer(2)}}),
        ({"unet": {"u1": _layer()}}, {"model": {"new": _layer(1)}}),  # pipeline, then one-model
    ],
)
def test_write_peft_replaces_an_earlier_adapter_whole(tmp_path, first, second):
    from fairdiff.adapters.formats import LoRAAdapter

    out = tmp_path / "out"
    write_peft(LoRAAdapter(first), out)
    (out / "compose.json").write_text("{}")  # a record of the earlier adapter
    write_peft(LoRAAdapter(second), out)
    back = read_peft(out)
    assert {c: sorted(layers) for c, layers in back.components.items()} == {
        c: sorted(layers) for c, layers in second.items()
    }
    assert not (out / "compose.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary or old directory left


def test_write_peft_refuses_to_replace_what_is_not_an_adapter(tmp_path):
    from fairdiff.adapters.formats import LoRAAdapter

    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    with pytest.raises(FairdiffError, match="exists and is not a PEFT adapter directory"):
        write_peft(LoRAAdapter({"model": {"m": _layer()}}), tmp_path / "notes")
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"
    with pytest.raises(FairdiffError, match=r"components \['model'\] cannot be written next to others"):
        write_peft(LoRAAdapter({"model": {"m": _layer()}, "unet": {"u": _layer()}}), tmp_path / "mixed")
    assert not (tmp_path / "mixed").exists()
