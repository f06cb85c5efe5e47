"""The mitigations shipped with the package, trained or solved on the bundled world model (each with its card).

- `lora-balanced/`: the fairness LoRA (`fairdiff mitigate lora --method balanced`), a PEFT adapter + card.json
- `edit-uce.safetensors`: the closed-form UCE edit of the six training occupations (`fairdiff mitigate edit`)

How each was made, and its held-out numbers, are in docs/mitigate.md and docs/results/mitigations/.
"""

from __future__ import annotations

from pathlib import Path

MITIGATIONS = Path(__file__).resolve().parent / "assets" / "mitigations"
LORA_BALANCED = MITIGATIONS / "lora-balanced"
EDIT_UCE = MITIGATIONS / "edit-uce.safetensors"


def shipped_arms() -> list[dict]:
    """Audit arm specs of the shipped mitigations at the model's default guidance, plus the exact-quota arm."""
    return [
        {"kind": "adapter", "name": "lora-balanced", "adapters": [str(LORA_BALANCED)]},
        {"kind": "edit", "name": "edit-uce", "edit": str(EDIT_UCE)},
        {"kind": "quota", "name": "quota", "mix": ["gender=uniform", "skin=uniform"]},
    ]
