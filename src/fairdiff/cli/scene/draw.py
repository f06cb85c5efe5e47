"""`fairdiff scene draw`: draw a layout (or plan a prompt first) with the regional sampler and verify it."""

from __future__ import annotations
