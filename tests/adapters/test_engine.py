from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from _adapter_fixtures import TEXT_ATTN, UNET_ATTN, outputs, random_lora
from torch import nn

from fairdiff.adapters import LoRAAdapter, LoRALayer, LoRASlots, attach_adapters, parse_adapter_spec
from fairdiff.errors import FairdiffError
from fairdiff.models.random_pipelines import tiny_sd_pipeline


@pytest.mark.parametrize(
    ("text", "path", "weight"),
    [
        ("a.safetensors", "a.safetensors", 1.0),
        ("a.safetensors:0.5", "a.safetensors", 0.5),
        ("a.safetensors:-1e-1", "a.safetensors", -0.1),
        ("dir/with:colon/x.safetensors", "dir/with:colon/x.safetensors", 1.0),
        ("C:\\loras\\x.safetensors", "C:\\loras\\x.safetensors", 1.0),
        ("C:\\loras\\x.safetensors:2", "C:\\loras\\x.safetensors", 2.0),
    ],
)
def test_parse_adapter_spec(text, path, weight):
    spec = parse_adapter_spec(text)
    assert (spec.path, spec.weight) == (Path(path), weight)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a.safetensors:abc", "weight 'abc' is not a number"),
        ("a.safetensors:nan", "weight 'nan' is not a finite number"),
        (":0.5", "no file before ':'"),
        ("  ", "--adapter is empty"),
    ],
)
def test_parse_adapter_spec_errors_name_the_text(text, message):
    with pytest.raises(FairdiffError, match=message):
        parse_adapter_spec(text)


def _pipeline_adapter(pipe, seed: int) -> LoRAAdapter:
    """A random non-zero adapter on the UNet's attention and the text encoder's attention."""
    components = {}
    for component, pattern, rank in (("unet", UNET_ATTN, 2 + seed % 3), ("text_encoder", TEXT_ATTN, 2)):
        layers = random_lora(getattr(pipe, component), pattern, rank, seed=seed * 10 + rank)
        components[component] = {m: LoRALayer(A, B, alpha=rank / 2, scale=0.5) for m, (A, B) in layers.items()}
    return LoRAAdapter(components, format="test", source=f"random{seed}")


def _run(pipe, prompts, seeds):
    return pipe(
        prompt=prompts,
        negative_prompt=["blurry"] * len(prompts),
        num_inference_steps=2,
        guidance_scale=5.0,  # classifier-free guidance: the UNet sees cat([uncond, cond])
        generator=[torch.Generator().manual_seed(s) for s in seeds],
        output_type="np",
    ).images


def test_per_sample_adapters_through_cfg_equal_each_sample_alone():
    pipe = tiny_sd_pipeline()
    adapters = [_pipeline_adapter(pipe, seed) for seed in range(3)]
    prompts, seeds = ["a doctor", "a nurse", "a pilot", "a chef"], [0, 1, 2, 3]
    base = _run(pipe, prompts, seeds)
    handle = attach_adapters(pipe, adapters)
    assert set(handle.targets) == {"unet", "text_encoder"}
    rows = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 0]], dtype=torch.float32)  # one slot per sample
    handle.set_per_sample(rows)
    batched = _run(pipe, prompts, seeds)
    assert {layer._plan(8).kind for component, _, layer in handle.layers() if component == "unet"} == {"gather"}
    for i in range(len(prompts)):
        handle.set_combination(rows[i].tolist())
        alone = _run(pipe, prompts[i : i + 1], seeds[i : i + 1])
        np.testing.assert_allclose(batched[i], alone[0], rtol=0, atol=1e-4, err_msg=f"sample {i}")
        if rows[i].any():
            assert np.abs(batched[i] - base[i]).max() > 1e-3, f"sample {i}: its adapter changes nothing"
    np.testing.assert_array_equal(batched[3], base[3])  # a zero row is the base model


def test_merge_unmerge_detach_and_fuse_on_a_pipeline():
    pipe = tiny_sd_pipeline()
    originals = {n: p.detach().clone() for n, p in pipe.unet.named_parameters()}
    base = outputs(pipe)
    handle = attach_adapters(pipe, [_pipeline_adapter(pipe, 0), _pipeline_adapter(pipe, 1)])
    handle.set_combination([0.8, -0.4])
    unmerged = outputs(pipe)
    handle.merge()
    assert not any(isinstance(m, LoRASlots) for m in pipe.unet.modules())  # the original module graph
    merged = outputs(pipe)
    for name in unmerged:
        torch.testing.assert_close(merged[name], unmerged[name], rtol=1e-4, atol=1e-4)
        assert (merged[name] - base[name]).abs().max() > 1e-3
    with pytest.raises(FairdiffError, match="unmerge before setting per-sample adapters"):
        handle.set_per_sample(torch.eye(2))
    handle.unmerge()
    assert sum(isinstance(m, LoRASlots) for m in pipe.unet.modules()) == len(handle.targets["unet"])
    torch.testing.assert_close(outputs(pipe)["unet"], unmerged["unet"], rtol=0, atol=0)
    handle.set_per_sample(torch.eye(2))
    with pytest.raises(FairdiffError, match="per-sample adapters cannot be merged"):
        handle.merge()
    with pytest.raises(FairdiffError, match=r"per-sample rows must be \(batch, 2\), got \(2, 3\)"):
        handle.set_per_sample(torch.ones(2, 3))
    handle.detach()
    assert not any(isinstance(m, LoRASlots) for m in pipe.unet.modules())
    assert all(torch.equal(p, originals[n]) for n, p in pipe.unet.named_parameters())
    for name, value in outputs(pipe).items():
        torch.testing.assert_close(value, base[name], rtol=0, atol=0)

    handle = attach_adapters(pipe, [_pipeline_adapter(pipe, 0)])
    handle.set_combination([1.0])
    expected = outputs(pipe)
    handle.fuse()  # merged for good, slots gone: what `adapters merge` saves
    assert not any(isinstance(m, LoRASlots) for m in pipe.text_encoder.modules())
    for name, value in outputs(pipe).items():
        torch.testing.assert_close(value, expected[name], rtol=1e-4, atol=1e-4)


def test_a_peft_directory_goes_to_the_component_that_has_its_modules(tmp_path):
    from fairdiff.adapters import load_adapter, write_peft

    pipe = tiny_sd_pipeline()
    layers = random_lora(pipe.text_encoder, TEXT_ATTN, rank=2, seed=0)
    adapter = LoRAAdapter({"model": {m: LoRALayer(A, B, alpha=2, scale=1) for m, (A, B) in layers.items()}})
    handle = attach_adapters(pipe, [load_adapter(write_peft(adapter, tmp_path / "te"))])
    assert list(handle.targets) == ["text_encoder"]
    with pytest.raises(FairdiffError, match="targets component 'text_encoder_2', the pipeline has"):
        attach_adapters(tiny_sd_pipeline(), [LoRAAdapter({"text_encoder_2": adapter.layers}, source="x")])


def test_rows_tile_when_the_layer_batch_is_a_multiple():
    torch.manual_seed(0)
    layer = LoRASlots(nn.Linear(6, 4), num_slots=2, rank=2)
    for k in range(2):
        layer.set_slot(k, torch.randn(2, 6), torch.randn(4, 2), 0.5 + k)
    x = torch.randn(6, 3, 6)  # three samples per half, as under classifier-free guidance
    rows = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.3, -2.0]])
    layer.sample_weights = rows
    tiled = layer(x)
    layer.sample_weights = torch.cat([rows, rows])  # what tiling means: uncond half, then cond half
    torch.testing.assert_close(tiled, layer(x))
    layer.sample_weights = rows
    with pytest.raises(ValueError, match="has rows for 3 samples; the layer sees a batch of 4"):
        layer(torch.randn(4, 6))


def _lora(rank: int = 2, out: int = 4, inp: int = 4, seed: int = 0, key: str = "") -> LoRALayer:
    g = torch.Generator().manual_seed(seed)
    return LoRALayer(torch.randn(rank, inp, generator=g), torch.randn(out, rank, generator=g), rank, 1.0, key=key)


def _two_linears(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))


def test_a_failed_hot_swap_changes_nothing():
    model = _two_linears()
    first = LoRAAdapter({"model": {"0": _lora(seed=1), "1": _lora(seed=2)}}, source="first")
    handle = attach_adapters(model, [first])
    handle.set_combination([1.0])
    x = torch.randn(3, 4)
    before = model(x).detach()
    slots = [(layer.lora_A.detach().clone(), layer.lora_B.detach().clone()) for _, _, layer in handle.layers()]
    # layer "0" fits, layer "1" has rank 3 > the slots' rank 2: found only after "0" would have been written
    bad = LoRAAdapter({"model": {"0": _lora(seed=3), "1": _lora(rank=3, seed=4, key="1.lora_A")}}, source="bad")
    with pytest.raises(FairdiffError, match=r"adapter bad: '1' \(key '1.lora_A'\): adapter A \(3, 4\)"):
        handle.load(0, bad)
    assert handle.adapters[0].source == "first"
    for (A, B), (_, _, layer) in zip(slots, handle.layers(), strict=True):
        assert torch.equal(layer.lora_A, A) and torch.equal(layer.lora_B, B)
    assert torch.equal(model(x), before)


def test_moving_the_model_while_merged_then_unmerge_gives_the_moved_unmerged_model():
    adapter = LoRAAdapter({"model": {"0": _lora(seed=1)}})
    model, reference = _two_linears(), _two_linears()
    w0 = model[0].weight.detach().clone()
    handle = attach_adapters(model, [adapter])
    ref_handle = attach_adapters(reference, [adapter])
    for h in (handle, ref_handle):
        h.set_combination([1.0])
    handle.merge()
    model.to(torch.float64)  # the merged model holds the base layers: the slots and the kept W0 are not moved
    handle.unmerge()
    reference.to(torch.float64)  # the same move, unmerged
    assert torch.equal(model[0].base_layer.weight, w0.double())
    assert model[0].lora_A.dtype == model[0].lora_B.dtype == torch.float64
    x = torch.randn(2, 4, dtype=torch.float64)
    assert torch.equal(model(x), reference(x))


def test_a_second_handle_keeps_the_first_handles_layers():
    model = _two_linears()
    first = attach_adapters(model, [LoRAAdapter({"model": {"0": _lora(seed=1)}}, source="a")])
    first.set_combination([1.0])
    A_before = model[0].lora_A.detach().clone()
    x = torch.randn(2, 4)
    y_first = model(x).detach()
    second = attach_adapters(model, [LoRAAdapter({"model": {"1": _lora(seed=s)}}) for s in (2, 3)])  # 2 slots
    assert [name for _, name, _ in first.layers()] == ["0"] and [name for _, name, _ in second.layers()] == ["1"]
    assert torch.equal(model[0].lora_A, A_before)
    assert torch.equal(model(x), y_first)  # the second handle's slots start inactive
    with pytest.raises(FairdiffError, match=r"model '0' already carries LoRA slots"):
        attach_adapters(model, [LoRAAdapter({"model": {"0": _lora(seed=4)}})])
    first.merge()  # the first handle's layer is out of the model, but still the first handle's
    with pytest.raises(FairdiffError, match=r"model '0' already carries LoRA slots"):
        attach_adapters(model, [LoRAAdapter({"model": {"0": _lora(seed=4)}})])
    second.detach()
    assert isinstance(model[1], nn.Linear) and first.merged
    first.unmerge()
    assert isinstance(model[0], LoRASlots) and torch.equal(model(x), y_first)


class _TextEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Module()
        self.encoder.q = nn.Linear(4, 4)


class _Pipeline:
    def __init__(self) -> None:
        self.unet = _two_linears()
        self.text_encoder = _TextEncoder()


@pytest.mark.parametrize(
    ("components", "first", "second"),
    [
        (  # kohya keeps CLIP's `text_model.` prefix, newer diffusers files drop it: one module
            {"text_encoder": {"text_model.encoder.q": _lora(key="k1"), "encoder.q": _lora(key="k2")}},
            "k1",
            "k2",
        ),
        ({"model": {"0": _lora(key="k1")}, "unet": {"0": _lora(key="k2")}}, "k1", "k2"),  # PEFT dir + unet part
    ],
)
def test_two_parts_of_an_adapter_on_one_module_are_refused(components, first, second):
    pipe = _Pipeline()
    with pytest.raises(FairdiffError, match=rf"'{first}' and '{second}' both target the \w+ module"):
        attach_adapters(pipe, [LoRAAdapter(components, source="x")])
    assert not any(isinstance(m, LoRASlots) for part in (pipe.unet, pipe.text_encoder) for m in part.modules())


def test_a_failed_attach_leaves_the_model_unwrapped():
    model = _two_linears()
    flags = [p.requires_grad for p in model.parameters()]
    bad = LoRAAdapter({"model": {"0": _lora(seed=1), "1": _lora(inp=5, seed=2)}}, source="bad")  # wrong in-dim
    with pytest.raises(FairdiffError, match=r"adapter bad: '1'.*adapter A \(2, 5\)"):
        attach_adapters(model, [bad])
    assert [type(m) for m in model] == [nn.Linear, nn.Linear]
    assert [p.requires_grad for p in model.parameters()] == flags
    attach_adapters(model, [LoRAAdapter({"model": {"0": _lora(seed=1)}})])  # and it can be attached again


def test_set_combination_while_merged_is_refused():
    model = _two_linears()
    handle = attach_adapters(model, [LoRAAdapter({"model": {"0": _lora(seed=1)}})])
    handle.set_combination([1.0])
    handle.merge()
    with pytest.raises(FairdiffError, match="unmerge before changing the adapter combination"):
        handle.set_combination([0.0])
    handle.unmerge()
    handle.set_combination([0.0])
    x = torch.randn(2, 4)
    assert torch.equal(model[0](x), model[0].base_layer(x))


def test_per_sample_rows_are_copied_when_set():
    model = _two_linears()
    handle = attach_adapters(model, [LoRAAdapter({"model": {"0": _lora(seed=s)}}) for s in (1, 2)])
    x = torch.randn(2, 4)
    rows = torch.eye(2)
    with torch.no_grad():
        handle.set_per_sample(rows.clone())
        expected = model(x)
        handle.set_per_sample(rows)
        rows[:] = torch.tensor([[0.0, 1.0], [1.0, 0.0]])  # the caller reuses its tensor
        assert torch.equal(model(x), expected)


def test_detach_gives_the_base_layers_their_requires_grad_back():
    model = _two_linears()
    model[1].bias.requires_grad_(False)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    handle = attach_adapters(model, [LoRAAdapter({"model": {"0": _lora(seed=1), "1": _lora(seed=2)}})])
    assert not any(layer.base_layer.weight.requires_grad for _, _, layer in handle.layers())
    handle.detach()
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    handle = attach_adapters(model, [LoRAAdapter({"model": {"0": _lora(seed=1)}})])
    handle.set_combination([1.0])
    handle.fuse()
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
