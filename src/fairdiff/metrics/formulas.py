"""Bias formulas over attribute shares (docs/metrics.md). p = shares of the K classes, q = the target mix.

Each public function checks its input and wraps a vectorized twin (`*_rows`) that works on the last axis of an
array of shares, so one call scores every bootstrap draw: shares (..., K), target (K,) -> (...,).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fairdiff.errors import FairdiffError

SUM_TOLERANCE = 1e-6  # shares come from counts or float probabilities; anything looser is a bug upstream


def check_shares(shares: Sequence[float], name: str = "shares") -> np.ndarray:
    """Return `shares` as a float array; raise if it is not a distribution over at least 2 classes."""
    p = np.asarray(shares, dtype=float)
    if p.ndim != 1:
        raise FairdiffError(f"`{name}` must be a 1-D sequence of class shares, got shape {p.shape}.")
    if p.size < 2:
        raise FairdiffError(f"`{name}` needs at least 2 classes, got {p.size}.")
    if np.isnan(p).any():
        raise FairdiffError(f"`{name}` contains NaN, got {p.tolist()}.")
    if (p < 0).any():
        raise FairdiffError(f"`{name}` must be non-negative, got {p.tolist()}.")
    if abs(p.sum() - 1.0) > SUM_TOLERANCE:
        raise FairdiffError(f"`{name}` must sum to 1 (within {SUM_TOLERANCE:g}), got {p.tolist()} (sum {p.sum():.6g}).")
    return p


def check_target(target: Sequence[float] | None, k: int, name: str = "target") -> np.ndarray:
    """Return the target mix q for K classes: uniform when None, else checked like shares and of length K."""
    if target is None:
        return np.full(k, 1.0 / k)
    q = np.asarray(target, dtype=float)
    if q.ndim != 1 or q.size != k:
        raise FairdiffError(f"`{name}` must give one value per class ({k}), got {q.tolist()}.")
    return check_shares(q, name)


def normalized_bias(shares: Sequence[float]) -> float:
    """Shen et al. 2024: 2/(K(K-1)) * sum_{i<j} |p_i - p_j|; 0 at parity, 1 when one of 2 classes takes all.
    For K=2 it equals |p_1 - 0.5| / 0.5. It compares classes with each other, so it has no target."""
    return float(normalized_bias_rows(check_shares(shares)))


def deviation_ratio(shares: Sequence[float], target: Sequence[float] | None = None) -> float:
    """max_k |p_k - q_k| / (1 - min_k q_k): 0 on target, 1 when the least-targeted class takes all."""
    p = check_shares(shares)
    return float(deviation_ratio_rows(p, check_target(target, p.size)))


def kl_to_target(shares: Sequence[float], target: Sequence[float] | None = None) -> float:
    """sum_k p_k log(p_k / q_k) in nats, with 0 log 0 = 0. Infinite when some p_k > 0 where q_k = 0."""
    p = check_shares(shares)
    return float(kl_to_target_rows(p, check_target(target, p.size)))


def discrepancy(shares: Sequence[float], target: Sequence[float] | None = None) -> float:
    """Fairness discrepancy ||p - q||_2."""
    p = check_shares(shares)
    return float(discrepancy_rows(p, check_target(target, p.size)))


def mad(shares: Sequence[float], target: Sequence[float] | None = None) -> float:
    """Mean absolute deviation (1/K) sum_k |p_k - q_k|."""
    p = check_shares(shares)
    return float(mad_rows(p, check_target(target, p.size)))


def check_rates(rates: Sequence[float], name: str = "rates") -> np.ndarray:
    """Return outcome rates per group as a float array; raise unless there are >= 2 rates in [0, 1]."""
    r = np.asarray(rates, dtype=float)
    if r.ndim != 1 or r.size < 2:
        raise FairdiffError(f"`{name}` needs one rate per group for at least 2 groups, got {r.tolist()}.")
    if np.isnan(r).any() or (r < 0).any() or (r > 1).any():
        raise FairdiffError(f"`{name}` must be rates in [0, 1], got {r.tolist()}.")
    return r


def parity_ratio(rates: Sequence[float]) -> float:
    """max_g r_g / min_g r_g: 1 at parity. Infinite when the lowest rate is 0 and another is not; 1 when all are 0."""
    return float(parity_ratio_rows(check_rates(rates)))


def parity_difference(rates: Sequence[float]) -> float:
    """max_g r_g - min_g r_g: 0 at parity."""
    return float(parity_difference_rows(check_rates(rates)))


# vectorized twins: p (..., K), q (K,) -> (...,); no checks, callers pass valid shares


def normalized_bias_rows(p: np.ndarray) -> np.ndarray:
    # sum_{i<j} |p_i - p_j| = sum_i (2i - K + 1) p_(i) over the shares sorted ascending: O(K) memory per row
    k = p.shape[-1]
    pairwise = (np.sort(p, axis=-1) * (2 * np.arange(k) - k + 1)).sum(axis=-1)
    return 2.0 * pairwise / (k * (k - 1))


def deviation_ratio_rows(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    return np.abs(p - q).max(axis=-1) / (1.0 - q.min())


def kl_to_target_rows(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p / q), 0.0)  # q_k = 0 < p_k -> log(inf) = inf
    return terms.sum(axis=-1)


def discrepancy_rows(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    return np.sqrt(((p - q) ** 2).sum(axis=-1))


def mad_rows(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    return np.abs(p - q).mean(axis=-1)


def parity_ratio_rows(r: np.ndarray) -> np.ndarray:
    hi, lo = r.max(axis=-1), r.min(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(hi == 0, 1.0, hi / lo)  # lo = 0 < hi -> inf


def parity_difference_rows(r: np.ndarray) -> np.ndarray:
    return r.max(axis=-1) - r.min(axis=-1)


# name -> vectorized formula (shares (..., K), target (K,)); the order is the column order of every result table
SHARE_METRICS = {
    "normalized_bias": lambda p, q: normalized_bias_rows(p),
    "deviation_ratio": deviation_ratio_rows,
    "kl_to_target": kl_to_target_rows,
    "discrepancy": discrepancy_rows,
    "mad": mad_rows,
}
