"""`fairdiff scene schema` and `fairdiff scene plan`: the layout JSON Schema and the planners."""

from __future__ import annotations
