from __future__ import annotations

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor

from fairdiff.errors import FairdiffError
from fairdiff.models.attention import attention_layers, cross_attention_layers, edit_attention
from fairdiff.models.random_pipelines import SD_UNET, SDXL_UNET
from fairdiff.models.tiny import build_tiny_unet


def _sd_unet(config):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(**config)


@pytest.fixture(scope="module", params=["tiny", "sd", "sdxl"])
def unet(request):
    return request.param, {"tiny": lambda: build_tiny_unet(1), "sd": lambda: _sd_unet(SD_UNET)}.get(
        request.param, lambda: _sd_unet(SDXL_UNET)
    )()


def _forward(kind, unet, seed=0):
    g = torch.Generator().manual_seed(seed)
    channels, size, cross = {"tiny": (3, 32, 384), "sd": (4, 16, 32), "sdxl": (4, 16, 64)}[kind]
    x = torch.randn(2, channels, size, size, generator=g)
    states = torch.randn(2, 5, cross, generator=g)
    extra = {}
    if kind == "sdxl":
        extra["added_cond_kwargs"] = {"text_embeds": torch.randn(2, 32, generator=g), "time_ids": torch.zeros(2, 6)}
    with torch.no_grad():
        return unet(x, torch.tensor(500), encoder_hidden_states=states, return_dict=False, **extra)[0]


def _state(unet):
    return {k: (v.data_ptr(), v.clone()) for k, v in unet.state_dict().items()}


def _same_state(unet, before) -> bool:
    after = unet.state_dict()
    return all(after[k].data_ptr() == p and torch.equal(after[k], v) for k, (p, v) in before.items())


def test_cross_attention_layers(unet):
    kind, unet = unet
    layers = cross_attention_layers(unet)
    names = [n for n, m in unet.named_modules() if n.endswith("attn2")]
    assert [layer.name for layer in layers] == names and names
    cross = {"tiny": 384, "sd": 32, "sdxl": 64}[kind]
    for layer in layers:
        m = layer.module
        assert layer.is_cross and layer.cross_dim == cross == m.to_k.in_features == m.to_v.in_features
        assert layer.query_dim == m.to_q.in_features and layer.heads * layer.head_dim == m.to_q.out_features
    assert {f"{layer.name}.processor" for layer in attention_layers(unet)} == set(unet.attn_processors)
    assert not any(layer.is_cross for layer in attention_layers(unet) if layer.name.endswith("attn1"))
    if kind == "sdxl":  # transformer_layers_per_block (1, 2): two blocks in each attention of the second level
        assert len(layers) == 2 + 3 * 2


def test_processors_installed_and_restored_exactly(unet):
    kind, unet = unet
    before = dict(unet.attn_processors)
    base = _forward(kind, unet)
    calls = []

    class Counting(AttnProcessor):
        def __call__(self, attn, *args, **kwargs):
            calls.append(attn)
            return super().__call__(attn, *args, **kwargs)

    cross = cross_attention_layers(unet)
    with edit_attention(unet, processors={layer.name: Counting() for layer in cross}):
        assert torch.allclose(_forward(kind, unet), base, atol=1e-5)  # the classic processor: same maths
    assert {id(m) for m in calls} == {id(layer.module) for layer in cross}
    assert all(unet.attn_processors[k] is v for k, v in before.items())
    with pytest.raises(RuntimeError, match="boom"), edit_attention(unet, processors=Counting()):
        assert all(isinstance(p, Counting) for p in unet.attn_processors.values())  # one for every layer
        raise RuntimeError("boom")
    assert all(unet.attn_processors[k] is v for k, v in before.items())
    assert torch.equal(_forward(kind, unet), base)


def test_weight_edits_and_deltas_restore_bit_exact(unet):
    kind, unet = unet
    layer = cross_attention_layers(unet)[0]
    before, base = _state(unet), _forward(kind, unet)
    k_weight = layer.module.to_k.weight
    new_k = torch.randn(k_weight.shape, generator=torch.Generator().manual_seed(3))
    delta_v = torch.full(layer.module.to_v.weight.shape, 0.01)
    old_v = layer.module.to_v.weight.detach().clone()
    with edit_attention(unet, weights={f"{layer.name}.to_k": new_k}, deltas={f"{layer.name}.to_v": delta_v}):
        assert torch.equal(layer.module.to_k.weight, new_k) and layer.module.to_k.weight is k_weight
        assert torch.equal(layer.module.to_v.weight, (old_v + delta_v).to(old_v.dtype))
        assert not torch.allclose(_forward(kind, unet), base)
    assert _same_state(unet, before) and torch.equal(_forward(kind, unet), base)


def test_weight_edits_restore_on_an_exception(unet):
    kind, unet = unet
    layer = cross_attention_layers(unet)[-1]
    before = _state(unet)
    delta = {f"{layer.name}.to_k": torch.ones_like(layer.module.to_k.weight)}
    with pytest.raises(ValueError, match="inside"), edit_attention(unet, deltas=delta):
        raise ValueError("inside")
    assert _same_state(unet, before)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda name: dict(processors={"down_blocks.9.attn2": AttnProcessor()}), "no attention layer"),
        (lambda name: dict(weights={f"{name}.to_z": torch.zeros(1)}), "not '<attention layer>"),
        (lambda name: dict(weights={"nope.to_k": torch.zeros(1)}), "not '<attention layer>"),
        (lambda name: dict(weights={f"{name}.to_k": torch.zeros(2, 2)}), "expected a tensor of shape"),
        (lambda name: dict(deltas={f"{name}.to_v": "big"}), "expected a tensor of shape"),
        (lambda name: dict(weights={f"{name}.to_k": 1}, deltas={f"{name}.to_k": 1}), "both"),
    ],
)
def test_bad_edits_change_nothing(unet, edit, message):
    kind, unet = unet
    layer = cross_attention_layers(unet)[0]
    before, processors = _state(unet), dict(unet.attn_processors)
    valid = {f"{layer.name}.to_q": torch.zeros_like(layer.module.to_q.weight)}
    kwargs = edit(layer.name)
    kwargs["weights"] = {**valid, **kwargs.get("weights", {})}
    with pytest.raises(FairdiffError, match=message), edit_attention(unet, **kwargs):
        pass
    assert _same_state(unet, before) and all(unet.attn_processors[k] is v for k, v in processors.items())


def test_edits_see_through_adapter_slots():
    from fairdiff.adapters.slots import LoRASlots

    unet = build_tiny_unet(1)
    layer = cross_attention_layers(unet)[0]
    linear = layer.module.to_k
    layer.module.to_k = LoRASlots(linear, num_slots=1, rank=2)
    before = linear.weight.detach().clone()
    with edit_attention(unet, deltas={f"{layer.name}.to_k": torch.ones_like(before)}):
        assert torch.equal(linear.weight, before + 1)
    assert torch.equal(linear.weight, before)
