"""The one error type fairdiff raises for expected problems (bad input, missing files).

The CLI prints such an error as one red line and exits with code 1; anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations


class FairdiffError(ValueError):
    """An expected failure whose message names the problem (argument, file, key) and the bad value."""
