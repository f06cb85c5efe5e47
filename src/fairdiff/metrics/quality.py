"""Detector-based quality: an image is *valid* (a confident, well-formed portrait) when every detector head gives
its top class at least `VALIDITY_CONFIDENCE`. One threshold for the world gates, audits and the report."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

VALIDITY_CONFIDENCE = 0.9


def valid_images(probs: Mapping[str, np.ndarray]) -> np.ndarray:
    """{attribute: probabilities (N, K)} -> bool (N,): every head's top probability >= VALIDITY_CONFIDENCE."""
    heads = [np.asarray(p).reshape(-1, np.shape(p)[-1]).max(1) >= VALIDITY_CONFIDENCE for p in probs.values()]
    return np.all(heads, axis=0)
