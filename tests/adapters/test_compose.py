from __future__ import annotations

import math

import pytest
import torch

from fairdiff.adapters.compose import compose, dare, low_rank, ties
from fairdiff.adapters.formats import LoRAAdapter, LoRALayer, read_peft, write_peft
from fairdiff.errors import FairdiffError

# three 2x2 task vectors, numbers chosen so that every trim, vote and mean below is visible by hand
T1 = [[4.0, -1.0], [0.5, 2.0]]
T2 = [[-3.0, 2.0], [1.0, -0.2]]
T3 = [[1.0, -5.0], [-0.1, 3.0]]


def _full_rank(delta) -> LoRAAdapter:
    """An adapter whose only layer has exactly `delta` as s B A (A = I, B = delta, s = 1)."""
    delta = torch.tensor(delta)
    return LoRAAdapter({"unet": {"m": LoRALayer(A=torch.eye(2), B=delta, alpha=2.0, scale=1.0)}})


def _delta(adapter: LoRAAdapter, component="unet", module="m") -> torch.Tensor:
    return adapter.components[component][module].delta().double()


@pytest.mark.parametrize(
    ("weights", "expected"),
    [
        # density 0.5 keeps 2 of 4 entries: T1 -> [[4, 0], [0, 2]], T2 -> [[-3, 2], [0, 0]], T3 -> [[0, -5], [0, 3]]
        # votes: 4-3 > 0 -> +, mean(4); 2-5 < 0 -> -, mean(-5); all 0 -> 0; 2+3 > 0 -> +, mean(2, 3)
        ([1.0, 1.0, 1.0], [[4.0, -5.0], [0.0, 2.5]]),
        # weight -1 flips T2's vote: [[3, -2], [.., ..]]: + mean(4, 3); - mean(-2, -5); 0; + mean(2, 3)
        ([1.0, -1.0, 1.0], [[3.5, -3.5], [0.0, 2.5]]),
    ],
)
def test_ties_by_hand(weights, expected):
    deltas = torch.tensor([T1, T2, T3], dtype=torch.float64)
    got = ties(deltas, torch.tensor(weights, dtype=torch.float64), density=0.5)
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64))
    composed = compose([_full_rank(t) for t in (T1, T2, T3)], weights, method="ties", density=0.5, rank=2)
    torch.testing.assert_close(_delta(composed.adapter), torch.tensor(expected, dtype=torch.float64), atol=1e-6, rtol=0)
    assert composed.max_error < 1e-6  # rank 2 of a 2x2 delta: exact


def test_ties_equals_peft_for_equal_positive_weights():
    from peft.utils.merge_utils import ties as peft_ties

    g = torch.Generator().manual_seed(0)
    deltas = torch.randn(3, 8, 6, generator=g, dtype=torch.float64)
    weights = torch.full((3,), 0.7, dtype=torch.float64)
    torch.testing.assert_close(ties(deltas, weights, 0.3), peft_ties(list(deltas), weights, 0.3))


def test_linear_is_the_exact_sum_of_scaled_deltas_with_different_ranks_and_a_conv():
    g = torch.Generator().manual_seed(0)

    def layer(r, conv=False, scale=0.5):
        A = torch.randn(r, 3, 3, 3, generator=g) if conv else torch.randn(r, 5, generator=g)
        B = torch.randn(4, r, 1, 1, generator=g) if conv else torch.randn(4, r, generator=g)
        return LoRALayer(A=A, B=B, alpha=scale * r, scale=scale)

    a = LoRAAdapter({"unet": {"lin": layer(2), "conv": layer(3, conv=True)}, "text_encoder": {"q": layer(1)}})
    b = LoRAAdapter({"unet": {"lin": layer(4, scale=2.0), "conv": layer(1, conv=True, scale=1.0)}})
    weights = [0.7, -1.3]  # negative weights included
    composed = compose([a, b], weights)
    assert composed.errors == {}  # nothing re-ranked
    out = composed.adapter
    for component, module, new in out.items():
        expected = sum(
            w * x.components[component][module].delta().double()
            for x, w in zip((a, b), weights, strict=True)
            if module in x.components.get(component, {})
        )
        torch.testing.assert_close(new.delta().double(), expected, atol=1e-5, rtol=1e-5)
    assert out.components["unet"]["lin"].rank == 6 and out.components["unet"]["conv"].A.shape == (4, 3, 3, 3)
    assert out.components["text_encoder"]["q"].rank == 1  # only in `a`


def test_svd_rerank_reports_the_relative_frobenius_error():
    # delta = U diag(3, 2, 1) V^T with orthonormal U, V: the best rank-2 error is 1 / sqrt(9 + 4 + 1)
    g = torch.Generator().manual_seed(0)
    U = torch.linalg.qr(torch.randn(6, 3, generator=g, dtype=torch.float64))[0]
    V = torch.linalg.qr(torch.randn(5, 3, generator=g, dtype=torch.float64))[0]
    S = torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64)
    B, A, error = low_rank(U @ torch.diag(S) @ V.T, 2)
    assert error == pytest.approx(1 / math.sqrt(14), rel=1e-9)
    torch.testing.assert_close((B @ A).double(), U[:, :2] @ torch.diag(S[:2]) @ V[:, :2].T, atol=1e-6, rtol=0)

    adapter = LoRAAdapter({"unet": {"m": LoRALayer(A=(torch.diag(S) @ V.T).float(), B=U.float(), alpha=3, scale=1)}})
    composed = compose([adapter], [1.0], method="svd", rank=2)
    assert composed.errors == {"unet/m": pytest.approx(1 / math.sqrt(14), rel=1e-6)}
    assert composed.adapter.components["unet"]["m"].rank == 2


def test_dare_drops_and_rescales_reproducibly():
    delta = torch.randn(1, 40, 50, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    one = torch.ones(1, dtype=torch.float64)
    out = dare(delta, one, 0.25, torch.Generator().manual_seed(7))
    kept = out != 0
    torch.testing.assert_close(out[kept], delta[0][kept] / 0.25)  # survivors rescaled by 1 / density
    assert 0.2 < kept.double().mean() < 0.3
    torch.testing.assert_close(out, dare(delta, one, 0.25, torch.Generator().manual_seed(7)))  # seeded
    mean = sum(dare(delta, one, 0.5, torch.Generator().manual_seed(s)) for s in range(400)) / 400
    assert (mean - delta[0]).abs().mean() < 0.1 * delta.abs().mean()  # unbiased: E = linear
    # density 1 keeps everything: DARE is linear
    composed = compose([_full_rank(T1), _full_rank(T2)], [2.0, -1.0], method="dare", density=1.0, rank=2)
    expected = 2 * torch.tensor(T1, dtype=torch.float64) - torch.tensor(T2, dtype=torch.float64)
    torch.testing.assert_close(_delta(composed.adapter), expected, atol=1e-5, rtol=0)


def test_composed_pipeline_adapter_round_trips_through_peft(tmp_path):
    composed = compose([_full_rank(T1), _full_rank(T3)], [0.5, 0.5], method="ties", density=0.5).adapter
    composed.components["text_encoder"] = {"q": LoRALayer(torch.randn(2, 3), torch.randn(4, 2), alpha=4, scale=2)}
    back = read_peft(write_peft(composed, tmp_path / "out"))
    assert (tmp_path / "out" / "unet" / "adapter_config.json").is_file()
    for component, module, layer in composed.items():
        torch.testing.assert_close(back.components[component][module].delta(), layer.delta())


def test_compose_errors():
    a = _full_rank(T1)
    with pytest.raises(FairdiffError, match="unknown --method 'mean'"):
        compose([a], [1.0], method="mean")
    with pytest.raises(FairdiffError, match="one weight per adapter"):
        compose([a, a], [1.0])
    with pytest.raises(FairdiffError, match="--density must be in"):
        compose([a], [1.0], method="ties", density=0.0)
    with pytest.raises(FairdiffError, match="--method svd needs --rank"):
        compose([a], [1.0], method="svd")
    odd = LoRAAdapter({"unet": {"m": LoRALayer(A=torch.eye(3), B=torch.ones(2, 3), alpha=3, scale=1)}})
    with pytest.raises(FairdiffError, match="disagree on its shape"):
        compose([a, odd], [1.0, 1.0])


def test_factored_and_randomized_reranks_match_the_exact_svd(monkeypatch):
    import fairdiff.adapters.compose as compose_module
    from fairdiff.adapters.compose import low_rank_factored

    g = torch.Generator().manual_seed(0)
    B, A = torch.randn(20, 6, generator=g, dtype=torch.float64), torch.randn(6, 30, generator=g, dtype=torch.float64)
    S = torch.linalg.svdvals(B @ A)
    exact = (S[3:].square().sum() / S.square().sum()).sqrt().item()
    Bf, Af, error = low_rank_factored(B, A, 3)
    assert error == pytest.approx(exact, rel=1e-6)
    Bd, Ad, error_dense = low_rank(B @ A, 3)
    assert error_dense == pytest.approx(exact, rel=1e-6)
    torch.testing.assert_close(Bf @ Af, Bd @ Ad, atol=1e-4, rtol=1e-4)

    monkeypatch.setattr(compose_module, "EXACT_SVD_MAX", 8)  # force the randomized path on a 20 x 30 delta
    noisy = B @ A + 1e-3 * torch.randn(20, 30, generator=g, dtype=torch.float64)
    S = torch.linalg.svdvals(noisy)
    _, _, error_random = low_rank(noisy, 3)
    assert error_random == pytest.approx((S[3:].square().sum() / S.square().sum()).sqrt().item(), rel=1e-2)


def test_compose_joins_one_layer_spelled_with_and_without_text_model():
    def layer(seed):
        g = torch.Generator().manual_seed(seed)
        return LoRALayer(torch.randn(2, 4, generator=g), torch.randn(4, 2, generator=g), alpha=2.0, scale=0.5)

    kohya = LoRAAdapter({"text_encoder": {"text_model.encoder.q": layer(0)}}, source="kohya")
    diffusers = LoRAAdapter({"text_encoder": {"encoder.q": layer(1)}}, source="diffusers")
    composed = compose([kohya, diffusers], [1.0, -2.0]).adapter
    assert list(composed.components["text_encoder"]) == ["text_model.encoder.q"]  # the first adapter's spelling
    expected = _delta(kohya, "text_encoder", "text_model.encoder.q") - 2 * _delta(
        diffusers, "text_encoder", "encoder.q"
    )
    torch.testing.assert_close(_delta(composed, "text_encoder", "text_model.encoder.q"), expected)

    both = LoRAAdapter({"text_encoder": {"text_model.encoder.q": layer(0), "encoder.q": layer(1)}}, source="both")
    with pytest.raises(
        FairdiffError, match="adapter both: text_encoder 'text_model.encoder.q' and 'encoder.q' are one"
    ):
        compose([both], [1.0])
    peft = LoRAAdapter({"model": {"mid.q": layer(0)}}, source="peft")
    unet = LoRAAdapter({"unet": {"mid.q": layer(1)}}, source="unet")
    with pytest.raises(FairdiffError, match="'model' 'mid.q' .* and unet 'mid.q' may be one layer"):
        compose([peft, unet], [1.0, 1.0])


def test_the_package_exports_compose_adapters_and_compose_is_always_the_module():
    import importlib

    import fairdiff.adapters as package

    function = package.compose_adapters
    module = importlib.import_module("fairdiff.adapters.compose")
    assert function is module.compose and package.compose is module
