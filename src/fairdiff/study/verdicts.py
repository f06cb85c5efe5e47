"""Verdicts: a claim is judged from confidence intervals by a rule stated in code, never typed by hand.

A claim has one or more parts; each part names a measured quantity (a row of a study's long table: its value and
95% CI) and a rule on that interval with a margin m:

- `AtMost(m)`   "q <= m":  supported when ci_high <= m, not supported when ci_low > m, mixed otherwise
- `AtLeast(m)`  "q >= m":  supported when ci_low >= m, not supported when ci_high < m, mixed otherwise
- `Above(m)`    "q > m":   supported when ci_low > m,  not supported when ci_high <= m, mixed otherwise
- `Below(m)`    "q < m":   supported when ci_high < m, not supported when ci_low >= m, mixed otherwise
- `Within(m)`   "|q| <= m" (equivalence): supported when -m <= ci_low and ci_high <= m, not supported when
  ci_low > m or ci_high < -m, mixed otherwise
- `BitExact()`  a yes/no measurement (value 1 = identical bit for bit, or what `holds` says): supported when
  1, not supported when 0

A claim "X is at most δ worse than Y" is `AtMost(δ)` on the difference worse(X) - worse(Y): supported when the
whole CI of the difference lies within the margin, not supported when it lies wholly outside, mixed when it
straddles it. A quantity with no number (not measured, NaN CI) gives "not measured".

Parts combine by `combine_all` (the claim needs every part: any part not supported -> not supported, all
supported -> supported, else mixed; a part not measured makes the claim mixed unless another part already
refutes it) or `combine_any` (the claim holds if any part does: any supported -> supported, all not
supported -> not supported, else mixed). When a part selects several rows (e.g. one per attribute), the rows
combine the same way as the part says (`each="all"` or `"any"`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from fairdiff.errors import FairdiffError

SUPPORTED = "supported"
NOT_SUPPORTED = "not supported"
MIXED = "mixed"
NOT_MEASURED = "not measured"
VERDICTS = (SUPPORTED, NOT_SUPPORTED, MIXED, NOT_MEASURED)


def _interval(low: float, high: float) -> tuple[float, float] | None:
    """(low, high) as floats, None when either is missing; a reversed interval is a caller's bug."""
    try:
        low, high = float(low), float(high)
    except (TypeError, ValueError):
        return None
    if math.isnan(low) or math.isnan(high):
        return None
    if low > high:
        raise FairdiffError(f"a confidence interval must have low <= high, got [{low}, {high}]")
    return low, high


def _margin(m: float) -> float:
    if isinstance(m, bool) or not isinstance(m, int | float) or not math.isfinite(m):
        raise FairdiffError(f"a verdict margin must be a finite number, got {m!r}")
    return float(m)


@dataclass(frozen=True)
class AtMost:
    """q <= margin (e.g. "at most 5% slower": a time ratio at most 1.05)."""

    margin: float

    def __post_init__(self) -> None:
        _margin(self.margin)

    def judge(self, low: float, high: float) -> str:
        ci = _interval(low, high)
        if ci is None:
            return NOT_MEASURED
        return SUPPORTED if ci[1] <= self.margin else NOT_SUPPORTED if ci[0] > self.margin else MIXED

    def describe(self, quantity: str) -> str:
        m = f"{self.margin:g}"
        return f"{quantity} <= {m}: supported if the 95% CI lies at or below {m}, not supported if wholly above"


@dataclass(frozen=True)
class AtLeast:
    """q >= margin (e.g. explicit-prompt accuracy at least 0.95)."""

    margin: float

    def __post_init__(self) -> None:
        _margin(self.margin)

    def judge(self, low: float, high: float) -> str:
        ci = _interval(low, high)
        if ci is None:
            return NOT_MEASURED
        return SUPPORTED if ci[0] >= self.margin else NOT_SUPPORTED if ci[1] < self.margin else MIXED

    def describe(self, quantity: str) -> str:
        m = f"{self.margin:g}"
        return f"{quantity} >= {m}: supported if the 95% CI lies at or above {m}, not supported if wholly below"


@dataclass(frozen=True)
class Above:
    """q > margin, strictly (e.g. "W is fairer": a bias reduction above 0)."""

    margin: float

    def __post_init__(self) -> None:
        _margin(self.margin)

    def judge(self, low: float, high: float) -> str:
        ci = _interval(low, high)
        if ci is None:
            return NOT_MEASURED
        return SUPPORTED if ci[0] > self.margin else NOT_SUPPORTED if ci[1] <= self.margin else MIXED

    def describe(self, quantity: str) -> str:
        m = f"{self.margin:g}"
        return f"{quantity} > {m}: supported if the 95% CI lies wholly above {m}, not supported if at or below it"


@dataclass(frozen=True)
class Below:
    """q < margin, strictly (e.g. "the LoRA lowers bias": a bias difference below 0)."""

    margin: float

    def __post_init__(self) -> None:
        _margin(self.margin)

    def judge(self, low: float, high: float) -> str:
        ci = _interval(low, high)
        if ci is None:
            return NOT_MEASURED
        return SUPPORTED if ci[1] < self.margin else NOT_SUPPORTED if ci[0] >= self.margin else MIXED

    def describe(self, quantity: str) -> str:
        m = f"{self.margin:g}"
        return f"{quantity} < {m}: supported if the 95% CI lies wholly below {m}, not supported if at or above it"


@dataclass(frozen=True)
class Within:
    """|q| <= margin: an equivalence (e.g. stacked and joint changes within 0.05 of each other)."""

    margin: float

    def __post_init__(self) -> None:
        if _margin(self.margin) < 0:
            raise FairdiffError(f"an equivalence margin must be >= 0, got {self.margin}")

    def judge(self, low: float, high: float) -> str:
        ci = _interval(low, high)
        if ci is None:
            return NOT_MEASURED
        m = self.margin
        if -m <= ci[0] and ci[1] <= m:
            return SUPPORTED
        return NOT_SUPPORTED if ci[0] > m or ci[1] < -m else MIXED

    def describe(self, quantity: str) -> str:
        m = f"{self.margin:g}"
        return f"|{quantity}| <= {m}: supported if the 95% CI lies within [-{m}, {m}], not supported if wholly outside"


@dataclass(frozen=True)
class BitExact:
    """A yes/no measurement (its CI is the value itself): 1 = `holds` (default: identical bit for bit)."""

    holds: str = "identical bit for bit"

    def judge(self, low: float, high: float) -> str:
        ci = _interval(low, high)
        if ci is None:
            return NOT_MEASURED
        if ci not in ((1.0, 1.0), (0.0, 0.0)):
            raise FairdiffError(f"a bit-for-bit check is 0 or 1, got [{ci[0]}, {ci[1]}]")
        return SUPPORTED if ci[0] == 1.0 else NOT_SUPPORTED

    def describe(self, quantity: str) -> str:
        return f"{quantity}: supported if {self.holds} (1), not supported otherwise (0)"


Rule = AtMost | AtLeast | Above | Below | Within | BitExact


def combine_all(verdicts: Sequence[str]) -> str:
    """Every part must hold: any not supported -> not supported; all supported -> supported; else mixed."""
    _check(verdicts)
    if not verdicts:
        return NOT_MEASURED
    if NOT_SUPPORTED in verdicts:
        return NOT_SUPPORTED
    if all(v == SUPPORTED for v in verdicts):
        return SUPPORTED
    if all(v == NOT_MEASURED for v in verdicts):
        return NOT_MEASURED
    return MIXED


def combine_any(verdicts: Sequence[str]) -> str:
    """One part suffices: any supported -> supported; all not supported -> not supported; else mixed."""
    _check(verdicts)
    if not verdicts:
        return NOT_MEASURED
    if SUPPORTED in verdicts:
        return SUPPORTED
    if all(v == NOT_SUPPORTED for v in verdicts):
        return NOT_SUPPORTED
    if all(v == NOT_MEASURED for v in verdicts):
        return NOT_MEASURED
    return MIXED


COMBINE = {"all": combine_all, "any": combine_any}


def _check(verdicts: Sequence[str]) -> None:
    bad = [v for v in verdicts if v not in VERDICTS]
    if bad:
        raise FairdiffError(f"unknown verdict {bad[0]!r}; verdicts are {', '.join(VERDICTS)}")
