"""Put adapter files into a model: wrap the layers they target with slots, copy each adapter into a slot."""

from __future__ import annotations

import re
from collections.abc import Sequence

from torch import nn

from fairdiff.adapters.formats import LoRAAdapter
from fairdiff.adapters.slots import LoRASlots, inject_slots, slotted_layers
from fairdiff.errors import FairdiffError


def load_into_slot(model: nn.Module, adapter: LoRAAdapter, slot: int) -> None:
    """Copy `adapter` into `slot` of the model's slotted layers (hot-swap: no re-wrapping).
    Every adapter module must exist and be slotted; shapes must fit; the slot is cleared in other layers."""
    layers = dict(slotted_layers(model))
    modules = dict(model.named_modules())
    for name, weights in adapter.layers.items():
        if name not in layers:
            what = "is not wrapped with LoRA slots" if name in modules else "does not exist in the model"
            raise FairdiffError(f"adapter {adapter.source}: target {name!r} {what}")
        try:
            layers[name].set_slot(slot, weights.A, weights.B, weights.scale)
        except ValueError as exc:
            raise FairdiffError(f"adapter {adapter.source}: {name!r}: {exc}") from None
    for name, layer in layers.items():
        if name not in adapter.layers:
            layer.clear_slot(slot)


def attach(model: nn.Module, adapters: Sequence[LoRAAdapter], num_slots: int | None = None) -> list[str]:
    """Wrap every layer any adapter targets (rank = the largest rank there), load adapter i into slot i.
    Returns the wrapped layer names. Slots start inactive: set `weights` (or use `set_combination`)."""
    if not adapters:
        raise FairdiffError("no adapters to attach")
    num_slots = num_slots or len(adapters)
    if num_slots < len(adapters):
        raise FairdiffError(f"{len(adapters)} adapters do not fit in {num_slots} slots")
    modules = dict(model.named_modules())
    targets: dict[str, int] = {}
    for adapter in adapters:
        for name, layer in adapter.layers.items():
            if name not in modules:
                raise FairdiffError(f"adapter {adapter.source}: target {name!r} does not exist in the model")
            targets[name] = max(targets.get(name, 0), layer.rank)
    for name, rank in targets.items():
        if not isinstance(modules[name], LoRASlots):
            inject_slots(model, [re.escape(name)], num_slots=num_slots, rank=rank)
    for slot, adapter in enumerate(adapters):
        load_into_slot(model, adapter, slot)
    return sorted(targets)


def set_combination(model: nn.Module, weights: Sequence[float]) -> None:
    """Set the active combination c_k of every slotted layer (the delta is sum_k c_k s_k B_k A_k)."""
    for _, layer in slotted_layers(model):
        if len(weights) != layer.num_slots:
            raise FairdiffError(f"{len(weights)} weights for {layer.num_slots} slots")
        layer.weights.copy_(layer.weights.new_tensor(list(weights)))
