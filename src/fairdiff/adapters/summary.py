"""What `fairdiff adapters inspect` reports about an adapter: format, ranks, alphas, targets per component,
size on disk, parameter count, and the Frobenius norm of every layer's delta s B A (summarized)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fairdiff.adapters.formats import LoRAAdapter, LoRALayer


def delta_norm(layer: LoRALayer) -> float:
    """||s B A||_F without forming the (out, in) matrix: s^2 ||BA||^2 = s^2 trace((B^T B)(A A^T))."""
    A = layer.A.reshape(layer.rank, -1).double()  # (r, in)
    B = layer.B.reshape(layer.B.shape[0], -1).double()  # (out, r)
    return abs(layer.scale) * float(torch.sum((B.T @ B) * (A @ A.T)).clamp(min=0).sqrt())


@dataclass
class ComponentSummary:
    targets: int
    ranks: list[int]
    alphas: list[float]
    scales: list[float]
    kinds: dict[str, int]  # "linear" / "conv" -> count


@dataclass
class AdapterSummary:
    format: str
    source: str
    size_bytes: int
    parameters: int
    dtypes: list[str]
    components: dict[str, ComponentSummary]
    norms: dict[str, float] = field(default_factory=dict)  # "component/module" -> ||dW||_F

    def norm_stats(self) -> dict[str, float]:
        values = list(self.norms.values())
        if not values:
            return {}
        return {
            "min": min(values),
            "median": statistics.median(values),
            "max": max(values),
            "total": sum(v * v for v in values) ** 0.5,
        }

    def largest(self, n: int = 5) -> list[tuple[str, float]]:
        return sorted(self.norms.items(), key=lambda kv: -kv[1])[:n]

    def as_dict(self) -> dict:
        return {
            "format": self.format,
            "source": self.source,
            "size_bytes": self.size_bytes,
            "parameters": self.parameters,
            "dtypes": self.dtypes,
            "components": {c: vars(s) for c, s in self.components.items()},
            "delta_norms": self.norm_stats(),
            "largest_deltas": dict(self.largest()),
        }


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size if path.exists() else 0


def summarize(adapter: LoRAAdapter, path: str | Path | None = None) -> AdapterSummary:
    """Summary of `adapter` (read from `path`, whose size on disk is reported)."""
    components = {}
    norms = {}
    dtypes = set()
    for component, layers in adapter.components.items():
        kinds = {"linear": 0, "conv": 0}
        for module, layer in layers.items():
            kinds["conv" if layer.A.dim() == 4 else "linear"] += 1
            norms[f"{component}/{module}"] = delta_norm(layer)
            dtypes.add(str(layer.A.dtype).removeprefix("torch."))
        components[component] = ComponentSummary(
            targets=len(layers),
            ranks=sorted({layer.rank for layer in layers.values()}),
            alphas=sorted({layer.alpha for layer in layers.values()}),
            scales=sorted({round(layer.scale, 6) for layer in layers.values()}),
            kinds=kinds,
        )
    return AdapterSummary(
        format=adapter.format,
        source=adapter.source,
        size_bytes=_size(Path(path if path is not None else adapter.source)),
        parameters=adapter.num_parameters(),
        dtypes=sorted(dtypes),
        components=components,
        norms=norms,
    )
