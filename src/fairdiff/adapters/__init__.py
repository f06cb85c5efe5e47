"""LoRA engine: slotted layers (K adapters per layer), exact merge/restore, exact composition, per-sample
adapters in one batch; PEFT, diffusers and kohya files. See docs/adapters.md.

Names are imported on first use, so `fairdiff --help` does not import torch.
The composition function is exported as `compose_adapters`: `fairdiff.adapters.compose` is its module (a
package attribute named like a submodule turns into that module once the submodule is imported).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Composition": "compose",
    "compose_adapters": "compose",
    "AdapterHandle": "engine",
    "AdapterSpec": "engine",
    "attach_adapters": "engine",
    "parse_adapter_spec": "engine",
    "LoRAAdapter": "formats",
    "LoRALayer": "formats",
    "load_adapter": "loading",
    "read_peft": "formats",
    "write_peft": "formats",
    "LoRASlots": "slots",
    "inject_slots": "slots",
    "merge_all": "slots",
    "remove_slots": "slots",
    "slotted_layers": "slots",
    "unmerge_all": "slots",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"fairdiff.adapters.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'fairdiff.adapters' has no attribute {name!r}")
