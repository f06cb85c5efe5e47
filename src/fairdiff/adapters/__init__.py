"""LoRA engine: slotted layers (K adapters per layer), exact merge/restore, exact composition, per-sample
adapters in one batch; PEFT, diffusers and kohya files. See docs/adapters.md and DESIGN.md (Adapters)."""

from fairdiff.adapters.compose import Composition, compose
from fairdiff.adapters.engine import AdapterHandle, AdapterSpec, attach_adapters, parse_adapter_spec
from fairdiff.adapters.formats import LoRAAdapter, LoRALayer, load_adapter, read_peft, write_peft
from fairdiff.adapters.slots import LoRASlots, inject_slots, merge_all, remove_slots, slotted_layers, unmerge_all

__all__ = [
    "AdapterHandle",
    "AdapterSpec",
    "Composition",
    "LoRAAdapter",
    "LoRALayer",
    "LoRASlots",
    "attach_adapters",
    "compose",
    "inject_slots",
    "load_adapter",
    "merge_all",
    "parse_adapter_spec",
    "read_peft",
    "remove_slots",
    "slotted_layers",
    "unmerge_all",
    "write_peft",
]
