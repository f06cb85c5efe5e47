"""`fairdiff scene ...`: layouts, planning and region-conditioned drawing of group scenes. `app.py` holds the
command group; each module adds its commands."""

from __future__ import annotations

from fairdiff.cli.scene import draw, plan  # noqa: F401  (each registers its commands)
from fairdiff.cli.scene.app import scene_app

__all__ = ["scene_app"]
