"""Compose K adapters into one new adapter, layer by layer, on the dense deltas dW_k = s_k B_k A_k.

- linear: dW = sum_k w_k dW_k, exactly, as a LoRA of rank sum_k r_k (A = [A_1; ...; A_K],
  B = [w_1 s_1 B_1, ..., w_K s_K B_K]): no A of one adapter is ever multiplied by the B of another
- svd: the linear dW, re-ranked to `rank` by truncated SVD
- ties (Yadav et al., 2023): on the weighted task vectors t_k = w_k dW_k: trim each t_k to its largest
  `density` fraction of entries by magnitude; elect a sign per entry, sign(sum_k t_k) (0 counts as +);
  disjoint mean: the mean of the trimmed t_k whose sign agrees with the elected one (entries where none
  agrees are 0). PEFT's `ties` elects the sign on the unweighted trimmed deltas; the two agree when all
  weights are equal and positive; electing on w_k dW_k lets a negative weight flip an adapter's vote.
- dare (Yu et al., 2024, "DARE linear"): drop each entry of each dW_k with probability 1 - density, rescale
  the survivors by 1 / density (unbiased: E[result] = linear), then sum_k w_k; seeded, reproducible
TIES and DARE results are dense, so they are re-ranked to `rank` (default: the sum of the input ranks at the
layer, at most min(out, in)). Each re-ranked layer reports its relative Frobenius error ||dW - BA|| / ||dW||.

The result is a `LoRAAdapter` (scale 1: alpha = rank) that `write_peft` writes and `attach_adapters` loads.
Conv layers are handled as their (out, in * kh * kw) matrices; the new A keeps the kernel shape.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from fairdiff.adapters.formats import LoRAAdapter, LoRALayer
from fairdiff.errors import FairdiffError

METHODS = ("linear", "svd", "ties", "dare")


@dataclass
class Composition:
    """The composed adapter and, per re-ranked layer ("component/module"), its relative Frobenius error."""

    adapter: LoRAAdapter
    errors: dict[str, float] = field(default_factory=dict)

    @property
    def max_error(self) -> float:
        return max(self.errors.values(), default=0.0)


def ties(deltas: torch.Tensor, weights: torch.Tensor, density: float) -> torch.Tensor:
    """TIES on stacked deltas (K, ...) with weights (K,): trim, elect sign, disjoint mean (see module doc)."""
    tau = deltas * weights.reshape(-1, *([1] * (deltas.dim() - 1)))  # (K, ...) weighted task vectors
    flat = tau.reshape(tau.shape[0], -1)  # (K, n)
    keep = int(density * flat.shape[1])
    mask = torch.zeros_like(flat, dtype=torch.bool)
    if keep > 0:
        mask.scatter_(1, flat.abs().topk(keep, dim=1).indices, True)
    trimmed = (flat * mask).reshape(tau.shape)
    elected = torch.where(trimmed.sum(0) >= 0, 1.0, -1.0).to(tau.dtype)  # (...)
    agree = (trimmed.sign() == elected).to(tau.dtype)  # zero entries never agree
    return (trimmed * agree).sum(0) / agree.sum(0).clamp(min=1)


def dare(deltas: torch.Tensor, weights: torch.Tensor, density: float, generator: torch.Generator) -> torch.Tensor:
    """DARE linear on stacked deltas (K, ...): keep each entry with probability `density`, divide by it, sum w_k."""
    keep = torch.rand(deltas.shape, generator=generator, dtype=torch.float64) < density  # (K, ...)
    dropped = deltas * keep.to(deltas.dtype) / density
    return (dropped * weights.reshape(-1, *([1] * (deltas.dim() - 1)))).sum(0)


def low_rank(delta: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Truncated SVD of an (out, in) delta: B (out, r), A (r, in) with B A the best rank-r approximation
    (singular values split evenly, sqrt(S) each side), and the relative Frobenius error of B A."""
    U, S, Vh = torch.linalg.svd(delta.double(), full_matrices=False)
    r = max(1, min(rank, S.numel()))
    root = S[:r].sqrt()
    B = U[:, :r] * root  # (out, r)
    A = root[:, None] * Vh[:r]  # (r, in)
    total = float(S.square().sum())
    error = math.sqrt(float(S[r:].square().sum()) / total) if total > 0 else 0.0
    return B.float(), A.float(), error


def compose(
    adapters: Sequence[LoRAAdapter],
    weights: Sequence[float],
    method: str = "linear",
    density: float = 0.5,
    rank: int | None = None,
    seed: int = 0,
) -> Composition:
    """One adapter from `adapters` with `weights` by `method` (linear, svd, ties, dare); see the module doc."""
    if method not in METHODS:
        raise FairdiffError(f"unknown --method {method!r}; choose one of {', '.join(METHODS)}")
    if not adapters or len(adapters) != len(weights):
        raise FairdiffError(f"compose needs one weight per adapter, got {len(adapters)} and {len(weights)}")
    if not all(math.isfinite(w) for w in weights):
        raise FairdiffError(f"weights must be finite, got {list(weights)}")
    if method in ("ties", "dare") and not 0 < density <= 1:
        raise FairdiffError(f"--density must be in (0, 1], got {density}")
    if method == "svd" and rank is None:
        raise FairdiffError("--method svd needs --rank")
    if rank is not None and rank < 1:
        raise FairdiffError(f"--rank must be >= 1, got {rank}")
    generator = torch.Generator().manual_seed(seed)
    keys = sorted({(c, m) for a in adapters for c, m, _ in a.items()})
    components: dict[str, dict[str, LoRALayer]] = {}
    errors: dict[str, float] = {}
    for component, module in keys:
        present = [(a.components.get(component, {}).get(module), w) for a, w in zip(adapters, weights, strict=True)]
        present = [(layer, w) for layer, w in present if layer is not None]
        shapes = {(tuple(layer.A.shape[1:]), layer.B.shape[0]) for layer, _ in present}
        if len(shapes) > 1:
            raise FairdiffError(f"{component} {module!r}: the adapters disagree on its shape ({sorted(shapes)})")
        a_shape, out = shapes.pop()
        if method == "linear" and rank is None:
            A = torch.cat([layer.A.float() for layer, _ in present])  # (sum r, in[, kh, kw])
            B = torch.cat([w * layer.scale * layer.B.float() for layer, w in present], dim=1)  # (out, sum r[, 1, 1])
            components.setdefault(component, {})[module] = LoRALayer(A, B, alpha=float(A.shape[0]), scale=1.0)
            continue
        deltas = torch.stack([layer.delta().double() for layer, _ in present])  # (K', out, in)
        w = torch.tensor([w for _, w in present], dtype=torch.float64)
        if method in ("linear", "svd"):
            delta = (deltas * w[:, None, None]).sum(0)
        elif method == "ties":
            delta = ties(deltas, w, density)
        else:
            delta = dare(deltas, w, density, generator)
        target = rank if rank is not None else sum(layer.rank for layer, _ in present)
        target = min(target, *delta.shape)
        B, A, error = low_rank(delta, target)
        A = A.reshape(A.shape[0], *a_shape)
        B = B.reshape(out, A.shape[0], *([1, 1] if len(a_shape) == 3 else []))
        components.setdefault(component, {})[module] = LoRALayer(A, B, alpha=float(A.shape[0]), scale=1.0)
        errors[f"{component}/{module}"] = error
    config = {
        "method": method,
        "weights": list(map(float, weights)),
        "density": density if method in ("ties", "dare") else None,
        "rank": rank,
        "seed": seed if method == "dare" else None,
        "sources": [a.source for a in adapters],
    }
    adapter = LoRAAdapter(components, format="composed", source=f"compose({method})", config=config)
    return Composition(adapter, errors)
