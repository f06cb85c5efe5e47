"""`fairdiff mitigate ...`: build the fixes (fairness LoRA, fine-tuned W, closed-form edit) that audits run as
arms. `app.py` holds the command group; each module adds its commands."""

from __future__ import annotations

from fairdiff.cli.mitigate import edit, train  # noqa: F401  (each registers its commands)
from fairdiff.cli.mitigate.app import mitigate_app

__all__ = ["mitigate_app"]
