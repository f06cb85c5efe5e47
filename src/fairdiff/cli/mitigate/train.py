"""`fairdiff mitigate lora` and `fairdiff mitigate finetune`: the fairness LoRA and the same recipe on W."""

from __future__ import annotations
