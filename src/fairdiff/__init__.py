"""fairdiff: assess and mitigate demographic bias in text-to-image diffusion models and LoRA adapters."""

from __future__ import annotations

__version__ = "0.1.0"
