"""Sampling defaults shared by the library and the CLI (this module imports only `fairdiff.errors`, so `fairdiff
--help` can show them without loading torch or numpy)."""

from __future__ import annotations

from fairdiff.errors import FairdiffError

#: Denoising steps of every command unless given (DPM-Solver++ on the bundled model; a hub pipeline's own scheduler).
DEFAULT_STEPS = 25

#: bf16 autocast modes (`fairdiff.models.precision`): "auto" = bf16 on a CPU with native bf16 and fp32 weights only.
AUTOCAST_MODES = ("auto", "on", "off")
DEFAULT_AUTOCAST = "auto"


def check_autocast(mode: object, option: str = "--autocast") -> None:
    """The one check of an autocast mode (CLI options, configs, sampling requests)."""
    if mode not in AUTOCAST_MODES:
        raise FairdiffError(f"unknown autocast mode {mode!r} for {option}; choose one of {', '.join(AUTOCAST_MODES)}")
