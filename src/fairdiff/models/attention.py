"""Attention seam: the cross-attention layers of a UNet, and temporary processors or weight edits on them.

Works on any diffusers `UNet2DConditionModel` fairdiff supports (the bundled tiny model, SD 1.x, SDXL): they
all build their attention from `diffusers.models.attention_processor.Attention`, and the bundled model keeps
SD's module names (`down_blocks.2.attentions.0.transformer_blocks.0.attn2`).

- `attention_layers(unet)` / `cross_attention_layers(unet)`: every `Attention` module (resp. those attending to
  the text, `attn2` in SD's blocks) as `AttentionLayer(name, query_dim, cross_dim, heads, head_dim, module)`,
  in `named_modules()` order. `name` is the module path, the same one `unet.attn_processors` uses without its
  `.processor` suffix.
- `edit_attention(unet, processors=..., weights=..., deltas=...)`: a context manager that installs attention
  processors (one for every attention layer, or a dict by layer name) and replaces projection weights
  (`weights`: new tensors; `deltas`: added to the current weight, summed in float32), and on exit, also on an
  exception, puts back the very processor objects and weight tensors that were there: bit-exact, with no copy
  of the weights kept (the original tensor is swapped out, not overwritten). Keys of `weights`/`deltas` name a
  projection: `<layer name>.to_k`, `.to_v`, `.to_q` or `.to_out.0` (`.to_out` is accepted for `.to_out.0`).
  Everything is checked before anything changes: an unknown name or a wrong shape is a `FairdiffError` and the
  UNet is left as it was. A projection wrapped by fairdiff's adapter slots (`LoRASlots`) is edited in its
  `base_layer`; do not merge or unmerge adapters inside the context (merging would fold into the edited weight).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from fairdiff.errors import FairdiffError

PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")


@dataclass(frozen=True)
class AttentionLayer:
    """One `Attention` module of a UNet. `cross_dim` is the width of what it attends to (the text embeddings for
    cross-attention, its own `query_dim` for self-attention)."""

    name: str
    query_dim: int
    cross_dim: int
    heads: int
    head_dim: int
    is_cross: bool
    module: nn.Module = field(repr=False, compare=False)


def _attention_class():
    from diffusers.models.attention_processor import Attention

    return Attention


def attention_layers(unet: nn.Module) -> list[AttentionLayer]:
    """Every attention module of `unet` (self- and cross-attention), in module order."""
    attention = _attention_class()
    layers = []
    for name, module in unet.named_modules():
        if isinstance(module, attention):
            heads = int(module.heads)
            layers.append(
                AttentionLayer(
                    name=name,
                    query_dim=int(module.query_dim),
                    cross_dim=int(module.cross_attention_dim),
                    heads=heads,
                    head_dim=int(module.inner_dim) // heads,
                    is_cross=bool(module.is_cross_attention),
                    module=module,
                )
            )
    return layers


def cross_attention_layers(unet: nn.Module) -> list[AttentionLayer]:
    """The attention modules that attend to the encoder hidden states (SD's `attn2`), in module order."""
    return [layer for layer in attention_layers(unet) if layer.is_cross]


def _layer_name(key: str) -> str:
    return key.removesuffix(".processor")


def _linear(module: nn.Module) -> nn.Linear | None:
    """The Linear of a projection, seeing through adapter slots (which keep it as `base_layer`)."""
    if isinstance(module, nn.Linear):
        return module
    base = getattr(module, "base_layer", None)
    return base if isinstance(base, nn.Linear) else None


def _projection(layers: dict[str, AttentionLayer], key: str) -> nn.Linear:
    key = key + ".0" if key.endswith(".to_out") else key
    layer_name, _, proj = key.rpartition(".to_")
    proj = "to_" + proj
    if layer_name not in layers or proj not in PROJECTIONS:
        raise FairdiffError(
            f"attention weight {key!r}: not '<attention layer>.{{{','.join(PROJECTIONS)}}}' of this UNet "
            f"(its layers: {', '.join(list(layers)[:3])}{', ...' if len(layers) > 3 else ''})"
        )
    module: nn.Module = layers[layer_name].module
    for part in proj.split("."):
        module = getattr(module, part)
    linear = _linear(module)
    if linear is None:
        raise FairdiffError(f"attention weight {key!r}: {type(module).__name__} is not a Linear layer")
    return linear


def _check_processors(processors, layers: dict[str, AttentionLayer]) -> dict[str, object]:
    if processors is None:
        return {}
    if not isinstance(processors, Mapping):
        return {name: processors for name in layers}
    plan = {}
    for key, processor in processors.items():
        name = _layer_name(key)
        if name not in layers:
            raise FairdiffError(f"attention processor for {key!r}: no attention layer of that name in this UNet")
        plan[name] = processor
    return plan


def _new_weight(key: str, linear: nn.Linear, weight: torch.Tensor | None, delta: torch.Tensor | None) -> torch.Tensor:
    current = linear.weight
    given = weight if weight is not None else delta
    if not isinstance(given, torch.Tensor) or tuple(given.shape) != tuple(current.shape):
        shape = tuple(given.shape) if isinstance(given, torch.Tensor) else type(given).__name__
        raise FairdiffError(f"attention weight {key!r}: expected a tensor of shape {tuple(current.shape)}, got {shape}")
    if not torch.isfinite(given).all():
        raise FairdiffError(f"attention weight {key!r}: the new weight has NaN/Inf entries")
    if weight is not None:
        return weight.detach().to(device=current.device, dtype=current.dtype).clone()
    summed = current.detach().float() + delta.detach().to(device=current.device, dtype=torch.float32)
    return summed.to(current.dtype)


@contextmanager
def edit_attention(
    unet: nn.Module,
    processors: object | Mapping[str, object] | None = None,
    weights: Mapping[str, torch.Tensor] | None = None,
    deltas: Mapping[str, torch.Tensor] | None = None,
) -> Iterator[list[AttentionLayer]]:
    """Install attention `processors` (one object for every attention layer, or {layer name: processor}; names
    as in `attention_layers` or `unet.attn_processors`) and projection `weights`/`deltas`
    ({"<layer>.to_k": tensor}) for the duration of the block; yields the UNet's attention layers. On exit the
    original processor objects and weight tensors are back, bit-exact, also after an exception."""
    layers = {layer.name: layer for layer in attention_layers(unet)}
    plan = _check_processors(processors, layers)
    weights, deltas = dict(weights or {}), dict(deltas or {})
    both = sorted(set(weights) & set(deltas))
    if both:
        raise FairdiffError(f"attention weight {both[0]!r}: given both as a new weight and as a delta")
    new: list[tuple[nn.Linear, torch.Tensor]] = []
    for key in [*weights, *deltas]:
        linear = _projection(layers, key)
        new.append((linear, _new_weight(key, linear, weights.get(key), deltas.get(key))))
    if len({id(linear) for linear, _ in new}) != len(new):
        raise FairdiffError("attention weights: the same projection is named twice (e.g. '.to_out' and '.to_out.0')")

    old_processors = {name: layers[name].module.processor for name in plan}
    old_weights: list[tuple[nn.Linear, torch.Tensor]] = []
    try:
        for name, processor in plan.items():
            layers[name].module.set_processor(processor)
        for linear, tensor in new:
            old_weights.append((linear, linear.weight.data))
            linear.weight.data = tensor
        yield list(layers.values())
    finally:
        for linear, tensor in reversed(old_weights):
            linear.weight.data = tensor
        for name, processor in old_processors.items():
            layers[name].module.set_processor(processor)
