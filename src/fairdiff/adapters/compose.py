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
layer) by truncated SVD. Each re-ranked layer reports its relative Frobenius error ||dW - BA|| / ||dW||. The
linear delta is already a product of factors, so `svd` re-ranks it exactly from a QR of each side and the SVD
of a small (sum r_k) x (sum r_k) matrix, never forming dW.

The result is a `LoRAAdapter` (scale 1: alpha = rank) that `write_peft` writes and `attach_adapters` loads.
Conv layers are handled as their (out, in * kh * kw) matrices; the new A keeps the kernel shape.

Layers are matched by component and module name. CLIP's `text_model.` prefix (kept by kohya files, dropped by
newer diffusers files) does not make two layers: the composed layer is spelled as the first adapter that has
it spells it. A one-model PEFT adapter (component `model`) and a pipeline adapter that name the same module
are refused: which component `model` is becomes known only when it is attached.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from fairdiff.adapters.formats import MODEL, LoRAAdapter, LoRALayer
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


#: Dense deltas whose smaller side is at most this are re-ranked by a full SVD; larger ones by a randomized
#: SVD of the top `rank + 16` directions (4 power iterations), which on CPU is minutes faster for SD-sized
#: layers. Either way the reported error is the exact residual ||dW - BA|| / ||dW||.
EXACT_SVD_MAX = 512


def _split(U: torch.Tensor, S: torch.Tensor, Vh: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    root = S[:r].sqrt()  # singular values split evenly between the two factors
    return U[:, :r] * root, root[:, None] * Vh[:r]  # B (out, r), A (r, in)


def low_rank(delta: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Rank-`rank` factors of a dense (out, in) delta: B (out, r), A (r, in) with B A its best rank-r
    approximation (truncated SVD), and the relative Frobenius error ||dW - BA|| / ||dW||."""
    d = delta.double()
    small = min(d.shape)
    if rank >= small:  # full rank fits: exact, no SVD
        eye = torch.eye(small, dtype=d.dtype)
        B, A = (d, eye) if d.shape[1] == small else (eye, d)
        return B.float(), A.float(), 0.0
    if small <= EXACT_SVD_MAX:
        U, S, Vh = torch.linalg.svd(d, full_matrices=False)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # svd_lowrank draws its random test matrix from the global generator
            U, S, V = torch.svd_lowrank(d, q=min(rank + 16, small), niter=4)
        Vh = V.T
    B, A = _split(U, S, Vh, rank)
    norm = float(torch.linalg.matrix_norm(d))
    error = float(torch.linalg.matrix_norm(d - B @ A)) / norm if norm > 0 else 0.0
    return B.float(), A.float(), error


def low_rank_factored(B: torch.Tensor, A: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """`low_rank` of dW = B A given as factors B (out, R), A (R, in), exactly and cheaply: QR of both sides,
    then the SVD of an R x R matrix."""
    Qb, Rb = torch.linalg.qr(B.double())  # (out, R), (R, R)
    Qa, Ra = torch.linalg.qr(A.double().T)  # (in, R), (R, R)
    U, S, Vh = torch.linalg.svd(Rb @ Ra.T)  # (R, R) each
    r = min(rank, S.numel())
    B_new, A_new = _split(Qb @ U, S, Vh @ Qa.T, r)
    total = float(S.square().sum())
    error = (float(S[r:].square().sum()) / total) ** 0.5 if total > 0 else 0.0
    return B_new.float(), A_new.float(), error


def _aligned_layers(adapters: Sequence[LoRAAdapter]) -> list[dict[tuple[str, str], LoRALayer]]:
    """Each adapter's layers as {(component, module): layer}, one spelling per layer across the adapters
    (see the module doc); errors name two keys that are one layer."""
    spelling: dict[tuple[str, str], str] = {}  # (component, module without `text_model.`) -> the spelling used
    aligned = []
    for adapter in adapters:
        layers: dict[tuple[str, str], LoRALayer] = {}
        for component, module, layer in adapter.items():
            name = spelling.setdefault((component, module.removeprefix("text_model.")), module)
            if (component, name) in layers:
                raise FairdiffError(
                    f"adapter {adapter.source}: {component} {module!r} and {name!r} are one layer spelled twice"
                )
            layers[component, name] = layer
        aligned.append(layers)
    bare: dict[str, tuple[str, str]] = {}  # module without `text_model.` -> (component, module) of a pipeline part
    for (component, module), name in spelling.items():
        if component != MODEL:
            bare.setdefault(module, (component, name))
    for (component, module), name in spelling.items():
        if component == MODEL and module in bare:
            other, other_name = bare[module]
            raise FairdiffError(
                f"'{MODEL}' {name!r} (a one-model PEFT adapter) and {other} {other_name!r} may be one layer; compose "
                f"cannot tell which component '{MODEL}' adapts: attach them as separate adapters instead"
            )
    return aligned


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
    aligned = _aligned_layers(adapters)
    keys = sorted({key for layers in aligned for key in layers})
    components: dict[str, dict[str, LoRALayer]] = {}
    errors: dict[str, float] = {}
    for component, module in keys:
        present = [(layers.get((component, module)), w) for layers, w in zip(aligned, weights, strict=True)]
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
        target = rank if rank is not None else sum(layer.rank for layer, _ in present)
        if method in ("linear", "svd"):  # dW = sum_k w_k s_k B_k A_k is already factored: re-rank exactly
            A_cat = torch.cat([layer.A.reshape(layer.rank, -1).float() for layer, _ in present])  # (R, in)
            B_cat = torch.cat([w * layer.scale * layer.B.reshape(out, -1).float() for layer, w in present], dim=1)
            B, A, error = low_rank_factored(B_cat, A_cat, target)
        else:
            deltas = torch.stack([layer.delta().double() for layer, _ in present])  # (K', out, in)
            w = torch.tensor([w for _, w in present], dtype=torch.float64)
            delta = ties(deltas, w, density) if method == "ties" else dare(deltas, w, density, generator)
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


compose_adapters = compose  # the package's name for it (`fairdiff.adapters.compose` is this module)
