"""Bias metrics over attribute shares (DESIGN.md, Metrics). p = shares of the K classes (sums to 1)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def normalized_bias(shares: Sequence[float]) -> float:
    """Shen et al. 2024: 2/(K(K-1)) * sum_{i<j} |p_i - p_j|; 0 at parity, 1 when one class takes all.
    For K=2 it equals |p_1 - 0.5| / 0.5."""
    p = np.asarray(shares, dtype=float)
    k = p.size
    if k < 2:
        raise ValueError(f"`shares` needs at least 2 classes, got {k}.")
    pairwise = np.abs(p[:, None] - p[None, :])[np.triu_indices(k, 1)].sum()
    return float(2.0 / (k * (k - 1)) * pairwise)
