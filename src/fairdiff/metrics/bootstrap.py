"""Seeded percentile bootstrap: resample images within a prompt (or group), and prompts for suite means.

With hard labels, resampling a prompt's n images with replacement is the same as one multinomial draw of n on
its class shares, so a whole suite is resampled with one vectorized `multinomial` call.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from fairdiff.checks import MAX_N_BOOT, check_seed
from fairdiff.errors import FairdiffError


@dataclass(frozen=True)
class BootstrapConfig:
    n_boot: int = 1000  # percentile CIs at 95% settle to ~0.01 of their width by 1000 resamples
    confidence: float = 0.95
    seed: int = 0

    def check(self) -> None:
        if not isinstance(self.n_boot, int | np.integer) or not 1 <= self.n_boot <= MAX_N_BOOT:
            raise FairdiffError(f"`n_boot` must be an integer in [1, {MAX_N_BOOT}], got {self.n_boot!r}.")
        check_seed(int(self.seed) if isinstance(self.seed, np.integer) else self.seed, "`seed`")
        if not 0 < self.confidence < 1:
            raise FairdiffError(f"`confidence` must be in (0, 1), got {self.confidence!r}.")


def stream(seed: int, *names: str) -> np.random.Generator:
    """A generator for one (arm, attribute) block: its CIs do not change when other blocks are added."""
    return np.random.default_rng([seed, *(zlib.crc32(name.encode()) for name in names)])


def percentile_ci(draws: np.ndarray, confidence: float, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The (1-confidence)/2 and (1+confidence)/2 quantiles of `draws` along `axis` (inf draws stay inf)."""
    alpha = (1.0 - confidence) / 2
    levels = [alpha, 1.0 - alpha]
    with np.errstate(invalid="ignore"):
        low_high = np.quantile(draws, levels, axis=axis)
    if np.isnan(low_high).any():  # linear interpolation next to an inf draw gives nan; take the upper order stat
        low_high = np.where(np.isnan(low_high), np.quantile(draws, levels, axis=axis, method="higher"), low_high)
    return low_high[0], low_high[1]


def wilson_ci(k: np.ndarray, n: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of a share k/n (elementwise; n > 0).

    Used for the CI of a single share or rate instead of the percentile bootstrap: with hard labels the
    bootstrap of k/n collapses to the point [0, 0] when k = 0 (and [1, 1] when k = n), so a class drawn rarely
    (5% of doctors dark-skinned, 0 of 24 images) would get a CI that excludes any true share above 0. Wilson's
    interval keeps near-nominal coverage at small n and extreme shares (Brown, Cai & DasGupta 2001)."""
    from statistics import NormalDist

    k, n = np.asarray(k, dtype=float), np.asarray(n, dtype=float)
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return np.clip(centre - half, 0.0, 1.0), np.clip(centre + half, 0.0, 1.0)


def resample_counts(counts: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap class counts of P prompts: (P, K) with every row total > 0 -> (n_boot, P, K)."""
    n = counts.sum(axis=-1)  # (P,)
    return rng.multinomial(n, counts / n[:, None], size=(n_boot, counts.shape[0]))


def resample_positives(n: np.ndarray, positives: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap positive counts of G groups of n_g > 0 images each: (G,) -> (n_boot, G)."""
    return rng.binomial(n, positives / n, size=(n_boot, n.shape[0]))


def prompt_mean_ci(
    values: np.ndarray, n_boot: int, confidence: float, rng: np.random.Generator
) -> tuple[float, float, float]:
    """Mean of per-prompt point estimates and its CI from resampling prompts with replacement.

    A resampled prompt keeps its point estimate (its images are not resampled again): the CI is about which
    prompts a suite holds, the per-prompt CIs are about the images drawn for each prompt."""
    values = np.asarray(values, dtype=float)  # (P,)
    idx = rng.integers(0, values.size, size=(n_boot, values.size))
    low, high = percentile_ci(values[idx].mean(axis=1), confidence)
    return float(values.mean()), float(low), float(high)
