"""`fairdiff mitigate edit`: the closed-form cross-attention edit (UCE)."""

from __future__ import annotations
