"""Arm kinds: edit (registered on import of fairdiff.audit)."""

from __future__ import annotations
