"""LoRA engine: slotted layers (K adapters per layer), exact merge/restore, exact composition, per-sample
adapters in one batch. File formats (PEFT, diffusers, kohya) build on this; see DESIGN.md (Adapters)."""

from fairdiff.adapters.slots import LoRASlots, inject_slots, merge_all, slotted_layers, unmerge_all

__all__ = ["LoRASlots", "inject_slots", "merge_all", "slotted_layers", "unmerge_all"]
