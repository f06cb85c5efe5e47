"""Sampling defaults shared by the library and the CLI (this module imports nothing, so `fairdiff --help` can show
them without loading torch or numpy)."""

from __future__ import annotations

#: Denoising steps of every command unless given (DPM-Solver++ on the bundled model; a hub pipeline's own scheduler).
DEFAULT_STEPS = 25

#: bf16 autocast modes (`fairdiff.models.precision`): "auto" = bf16 on a CPU with native bf16 and fp32 weights only.
AUTOCAST_MODES = ("auto", "on", "off")
DEFAULT_AUTOCAST = "auto"
