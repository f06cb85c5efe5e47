from __future__ import annotations

import pytest
import torch
from torch import nn

from fairdiff.adapters import LoRASlots, inject_slots, merge_all, remove_slots, slotted_layers, unmerge_all


def _linear(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return nn.Linear(12, 10).to(dtype)


def _conv(seed=0):
    torch.manual_seed(seed)
    return nn.Conv2d(5, 7, 3, padding=1)


def _adapters(layer, ranks, seed=1):
    """Random non-zero adapters (A, B, scale) for `layer`, one per rank."""
    g = torch.Generator().manual_seed(seed)
    w = layer.weight
    in_shape = w.shape[1:]
    return [
        (torch.randn(r, *in_shape, generator=g), torch.randn(w.shape[0], r, generator=g), 0.5 + i)
        for i, r in enumerate(ranks)
    ]


def _dense(layer, adapters, coefs):
    """Reference: a copy of the layer with W0 + sum c_k s_k B_k A_k computed densely in float64."""
    w = layer.weight.detach().double().reshape(layer.weight.shape[0], -1)
    for (A, B, s), c in zip(adapters, coefs, strict=True):
        w = w + c * s * (B.double() @ A.double().reshape(A.shape[0], -1))
    return w.reshape(layer.weight.shape)


def _apply(layer, weight, x):
    if isinstance(layer, nn.Conv2d):
        return nn.functional.conv2d(x.double(), weight, layer.bias.double(), layer.stride, layer.padding)
    return nn.functional.linear(x.double(), weight, layer.bias.double())


@pytest.mark.parametrize("make", [_linear, _conv])
def test_fresh_slots_change_nothing(make):
    base = make()
    layer = LoRASlots(make(), num_slots=3, rank=4)
    x = torch.randn(2, 5, 6, 6) if isinstance(base, nn.Conv2d) else torch.randn(2, 3, 12)
    layer.weights.fill_(1.0)
    torch.testing.assert_close(layer(x), base(x))


@pytest.mark.parametrize("make", [_linear, _conv])
def test_weighted_composition_is_the_exact_sum_of_deltas(make):
    layer = LoRASlots(make(), num_slots=3, rank=4)
    adapters = _adapters(layer.base_layer, ranks=[4, 2, 3])  # different ranks in one layer
    for k, (A, B, s) in enumerate(adapters):
        layer.set_slot(k, A, B, s)
    coefs = [0.7, -1.3, 0.5]  # negative weights included
    layer.weights.copy_(torch.tensor(coefs))
    x = torch.randn(2, 5, 6, 6) if isinstance(layer.base_layer, nn.Conv2d) else torch.randn(2, 3, 12)
    expected = _apply(layer.base_layer, _dense(layer.base_layer, adapters, coefs), x)
    torch.testing.assert_close(layer(x).double(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        layer.delta_weight().double(),
        _dense(layer.base_layer, adapters, coefs) - layer.base_layer.weight.double(),
        rtol=1e-5,
        atol=1e-5,
    )


@pytest.mark.parametrize("make", [_linear, _conv])
@pytest.mark.parametrize(
    ("rows", "kind"),
    [
        ([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1], [0, 0, 0, 0], [0, 0, 1, 0]], "gather"),  # one slot each
        ([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1], [0, 0, 0, 0], [0.5, 0, -1, 0]], "stacked"),  # a mixture
        ([[0.5, 0, -1, 0]] * 5, "shared"),  # all the same
    ],
)
def test_per_sample_adapters_in_one_batch_equal_each_sample_alone(make, rows, kind):
    layer = LoRASlots(make(), num_slots=4, rank=3)
    for k, (A, B, s) in enumerate(_adapters(layer.base_layer, ranks=[3, 3, 1, 2])):
        layer.set_slot(k, A, B, s)
    conv = isinstance(layer.base_layer, nn.Conv2d)
    x = torch.randn(5, 5, 6, 6) if conv else torch.randn(5, 3, 12)
    rows = torch.tensor(rows, dtype=torch.float)
    layer.sample_weights = rows
    batched = layer(x)
    assert layer._plan(5).kind == ("stacked" if conv and kind == "gather" else kind)  # convs never gather
    layer.sample_weights = None
    for i in range(5):
        layer.weights.copy_(rows[i])
        torch.testing.assert_close(batched[i : i + 1], layer(x[i : i + 1]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_merge_unmerge_1000_cycles_is_bit_exact(dtype):
    layer = LoRASlots(_linear(dtype=dtype), num_slots=2, rank=4)
    for k, (A, B, s) in enumerate(_adapters(layer.base_layer, ranks=[4, 4])):
        layer.set_slot(k, A, B, s)
    layer.weights.copy_(torch.tensor([0.8, -0.3]))
    original = layer.base_layer.weight.detach().clone()
    x = torch.randn(3, 12, dtype=dtype)
    unmerged_out = layer(x)
    for _ in range(1000):
        layer.merge()
        layer.unmerge()
    assert torch.equal(layer.base_layer.weight, original)
    layer.merge()
    assert not torch.equal(layer.base_layer.weight, original)
    torch.testing.assert_close(layer(x), unmerged_out, rtol=2e-2, atol=2e-2)  # merged in fp32, stored in dtype
    layer.unmerge()
    assert torch.equal(layer.base_layer.weight, original)


def test_inject_into_the_tiny_unet_and_train_only_a_and_b():
    from fairdiff.models.tiny import build_tiny_unet

    unet = build_tiny_unet().requires_grad_(False)
    names = inject_slots(unet, [r".*attn2\.to_[kv]", r".*attn2\.to_out\.0"], num_slots=2, rank=4)
    assert len(names) == 4 * 3 and all("attn2" in n for n in names)  # 4 transformer blocks x (k, v, out)
    trainable = {n for n, p in unet.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith(("lora_A", "lora_B")) for n in trainable)
    assert len(list(slotted_layers(unet))) == 12
    merge_all(unet)
    assert all(layer.merged for _, layer in slotted_layers(unet))
    unmerge_all(unet)


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="wraps Linear, Conv2d; got LayerNorm"):
        LoRASlots(nn.LayerNorm(4), 1, 1)
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    with pytest.raises(ValueError, match="no module name matches"):
        inject_slots(model, ["nothing"], 1, 1)
    with pytest.raises(ValueError, match="module '1' is a LayerNorm"):
        inject_slots(model, ["1"], 1, 1)
    layer = LoRASlots(_linear(), 2, 2)
    with pytest.raises(ValueError, match=r"adapter A \(3, 12\) / B \(10, 3\) does not fit slots of rank <= 2"):
        layer.set_slot(0, torch.randn(3, 12), torch.randn(10, 3), 1.0)
    layer.sample_weights = torch.ones(3, 2)
    with pytest.raises(ValueError, match="has rows for 3 samples; the layer sees a batch of 2"):
        layer(torch.randn(2, 12))
    with pytest.raises(ValueError, match=r"`sample_weights` must be \(batch, slots=2\), got \(3, 3\)"):
        layer.sample_weights = torch.ones(3, 3)


def test_cached_factors_follow_changes_and_training_gets_gradients():
    layer = LoRASlots(_linear(), num_slots=2, rank=2)
    (A, B, s), (A2, B2, s2) = _adapters(layer.base_layer, ranks=[2, 2])
    layer.set_slot(0, A, B, s)
    layer.weights.copy_(torch.tensor([1.0, 0.0]))
    x = torch.randn(3, 12)
    with torch.no_grad():
        before = layer(x)  # factors cached with the plan
        layer.lora_B.mul_(2.0)  # an optimizer-style in-place step
        torch.testing.assert_close(layer(x) - layer.base_layer(x), 2 * (before - layer.base_layer(x)))
        layer.set_slot(0, A2, B2, s2)  # hot-swap
        expected = _apply(layer.base_layer, _dense(layer.base_layer, [(A2, B2, s2)], [1.0]), x)
        torch.testing.assert_close(layer(x).double(), expected, rtol=1e-5, atol=1e-5)
    layer(x).square().sum().backward()  # with gradients: fresh factors, grads reach only slot 0's A and B
    assert layer.lora_A.grad[0].abs().sum() > 0 and layer.lora_B.grad[0].abs().sum() > 0
    assert layer.lora_A.grad[1].abs().sum() == 0 and layer.base_layer.weight.grad is None


def test_moving_a_merged_layer_moves_the_kept_original():
    from fairdiff.adapters.slots import LoRASlots

    torch.manual_seed(0)
    layer = LoRASlots(torch.nn.Linear(6, 5), num_slots=1, rank=2)
    w0 = layer.base_layer.weight.detach().clone()
    layer.set_slot(0, torch.randn(2, 6), torch.randn(5, 2), 1.0)
    layer.weights.fill_(1.0)
    layer.merge()
    layer.to(torch.float64)  # moved while merged
    layer.unmerge()
    assert layer.base_layer.weight.dtype == torch.float64
    assert torch.equal(layer.base_layer.weight, w0.double())
    assert "_original" not in layer.state_dict()


@pytest.mark.parametrize(
    ("rows", "kind"),
    [(None, "shared"), ([[1.0, 0.0], [0.0, 1.0]], "gather"), ([[1.0, 0.5], [0.0, 1.0]], "stacked")],
)
def test_no_grad_under_autocast_equals_the_grad_path(rows, kind):
    layer = LoRASlots(_linear(), num_slots=2, rank=2)  # fp32 slots, bf16 activations under autocast
    for k, (A, B, s) in enumerate(_adapters(layer.base_layer, ranks=[2, 2])):
        layer.set_slot(k, A, B, s)
    layer.weights.copy_(torch.tensor([1.0, -0.5]))
    layer.sample_weights = None if rows is None else torch.tensor(rows)
    x = torch.randn(2, 3, 12)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = layer(x)  # with gradients: the out-of-place path
        with torch.no_grad():
            got = layer(x)  # the fused in-place add would mix bf16 and fp32
    assert layer._plan(2).kind == kind and got.dtype == torch.bfloat16
    torch.testing.assert_close(got, expected.detach(), rtol=0, atol=0)


@pytest.mark.parametrize("padding_mode", ["reflect", "replicate", "circular"])
def test_conv_padding_modes_pad_the_slots_like_the_base(padding_mode):
    torch.manual_seed(0)
    base = nn.Conv2d(3, 4, 3, padding=1, padding_mode=padding_mode)
    layer = LoRASlots(base, num_slots=1, rank=2)
    ((A, B, s),) = _adapters(base, ranks=[2])
    layer.set_slot(0, A, B.reshape(4, 2, 1, 1), s)
    layer.weights.fill_(1.0)
    x = torch.randn(2, 3, 6, 6)
    dense = _dense(base, [(A, B, s)], [1.0]).float()  # W0 + s B A, padded by the conv itself
    expected = base._conv_forward(x, dense, base.bias)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
        layer.merge()
        torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


def test_conv_kernel_shape_is_checked():
    layer = LoRASlots(nn.Conv2d(4, 4, 3, padding=1), num_slots=1, rank=2)
    with pytest.raises(ValueError, match=r"A \(2, 36, 1, 1\) .*base weight \(4, 4, 3, 3\): A must be \(r, 4, 3, 3\)"):
        layer.set_slot(0, torch.randn(2, 36, 1, 1), torch.randn(4, 2, 1, 1), 1.0)  # 36 = 4 * 3 * 3, wrong kernel
    with pytest.raises(ValueError, match=r"A \(2, 4\) .*A must be \(r, 4, 3, 3\)"):
        layer.set_slot(0, torch.randn(2, 4), torch.randn(4, 2), 1.0)  # a 2-D A on a 3x3 kernel
    layer.set_slot(0, torch.randn(2, 4, 3, 3), torch.randn(4, 2, 1, 1), 1.0)
    pointwise = LoRASlots(nn.Conv2d(4, 4, 1), num_slots=1, rank=2)
    pointwise.set_slot(0, torch.randn(2, 4), torch.randn(4, 2), 1.0)  # a 2-D A fits a 1x1 kernel
    pointwise.set_slot(0, torch.randn(2, 4, 1, 1), torch.randn(4, 2, 1, 1), 1.0)


def test_a_failed_inject_changes_nothing():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Conv2d(2, 2, 3, groups=2))
    with pytest.raises(ValueError, match="module '1' is a ReLU"):
        inject_slots(model, [r"\d"], 1, 2)
    with pytest.raises(ValueError, match="groups=2"):
        inject_slots(model, ["0", "2"], 1, 2)  # the Linear comes first and fits; the grouped conv does not
    assert [type(m) for m in model] == [nn.Linear, nn.ReLU, nn.Conv2d]
    assert all(p.requires_grad for p in model.parameters())


def test_sample_weights_are_copied_and_remove_slots_restores_requires_grad():
    model = nn.Sequential(_linear(), _linear(1))
    model[1].weight.requires_grad_(False)
    inject_slots(model, ["0", "1"], num_slots=2, rank=2)
    layer = model[0]
    rows = torch.eye(2)
    layer.sample_weights = rows
    rows[0, 0] = 5.0
    assert torch.equal(layer.sample_weights, torch.eye(2))
    assert remove_slots(model) == ["0", "1"]
    assert [p.requires_grad for p in model.parameters()] == [True, True, False, True]
