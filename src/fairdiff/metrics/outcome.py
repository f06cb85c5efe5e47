"""OutcomeFrame: the rate of an outcome (e.g. a sexualized depiction) per group, and parity between groups.

r_g = share of group g's images with the outcome; parity is max_g r_g / min_g r_g and max_g r_g - min_g r_g,
each with a percentile bootstrap CI from resampling images within each group (seeded).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from fairdiff.errors import FairdiffError
from fairdiff.metrics.bootstrap import BootstrapConfig, percentile_ci, resample_positives, stream, wilson_ci
from fairdiff.metrics.formulas import parity_difference_rows, parity_ratio_rows
from fairdiff.metrics.frame import records
from fairdiff.metrics.labels import (
    ARM,
    DEFAULT_ARM,
    add_intersections,
    infer_classes,
    product_name,
    require_columns,
)

logger = logging.getLogger(__name__)

GroupSpec = str | Sequence[str]  # "gender", or ("gender", "skin") for the intersection "gender×skin"


def outcome_flags(column: pd.Series, positive: str | None) -> pd.Series:
    """The outcome as floats 1/0 (NaN where missing): a boolean or 0/1 column, or `column == positive`."""
    name = column.name
    present = column.dropna()
    if positive is not None:
        values = present.astype(str)
        if str(positive) not in set(values):
            seen = sorted(values.unique())[:10]
            raise FairdiffError(f"positive class {positive!r} never occurs in column {name!r} (values: {seen}).")
        return (column.astype(str) == str(positive)).astype(float).where(column.notna())
    if present.dtype == bool or set(present.unique()) <= {0, 1}:  # True == 1, False == 0
        return column.astype(float)
    seen = sorted(present.astype(str).unique())[:10]
    raise FairdiffError(
        f"outcome column {name!r} holds labels {seen}, not booleans; name the positive class (e.g. {name}=VALUE)."
    )


class OutcomeFrame:
    """Outcome rates per group, overall, and parity between groups, per arm.

    `data` has one row per image with the `outcome` column (boolean or 0/1, or labels with `positive` naming
    the positive class), an optional "arm" column, and one label column per attribute in `groups`. A group
    item may be a tuple of attributes for their intersection. `classes` fixes each attribute's groups (a
    group with no images gets rate NaN and is left out of parity); by default the sorted labels.
    """

    def __init__(
        self,
        *,
        data: pd.DataFrame,
        outcome: str,
        groups: Sequence[GroupSpec],
        positive: str | None = None,
        classes: Mapping[str, Sequence[str]] | None = None,
        n_boot: int = 1000,
        confidence: float = 0.95,
        seed: int = 0,
    ) -> None:
        if not groups:
            raise FairdiffError("`groups` must name at least one attribute.")
        require_columns(data, [outcome], "`outcome`")
        singles = [g for g in groups if isinstance(g, str)]
        tuples = [tuple(g) for g in groups if not isinstance(g, str)]
        parts = list(dict.fromkeys([*singles, *(a for t in tuples for a in t)]))
        classes = {**infer_classes(data, parts), **(classes or {})}
        data, classes = add_intersections(data, classes, tuples)
        attributes = [*singles, *(product_name(t) for t in tuples)]
        flags = outcome_flags(data[outcome], positive)
        arms = data[ARM].astype(str) if ARM in data.columns else pd.Series(DEFAULT_ARM, index=data.index)
        rows = []
        for attribute in attributes:
            labels = data[attribute].astype(str).where(data[attribute].notna())
            unknown = sorted(set(labels.dropna()) - set(classes[attribute]))
            if unknown:
                raise FairdiffError(f"column {attribute!r} has label(s) {unknown[:5]} not among {classes[attribute]}.")
            keep = labels.notna() & flags.notna()
            table = pd.DataFrame({"arm": arms[keep], "group": labels[keep], "flag": flags[keep]})
            stats = table.groupby(["arm", "group"], sort=False)["flag"].agg(["size", "sum"])
            for arm in pd.unique(arms):
                for group in classes[attribute]:
                    n, pos = stats.loc[(arm, group)] if (arm, group) in stats.index else (0, 0)
                    rows.append((arm, attribute, group, int(n), int(pos)))
        table = pd.DataFrame(rows, columns=["arm", "attribute", "group", "n", "positives"])
        known = flags.notna()
        totals = flags[known].groupby(arms[known], sort=False).agg(["size", "sum"])
        totals = pd.DataFrame(
            {"arm": totals.index, "n": totals["size"].to_numpy(), "positives": totals["sum"].to_numpy()}
        )
        self._compute(table, totals, n_boot, confidence, seed)

    @classmethod
    def from_counts(
        cls,
        counts: pd.DataFrame,
        *,
        positives: str = "positives",
        count: str = "count",
        n_boot: int = 1000,
        confidence: float = 0.95,
        seed: int = 0,
    ) -> OutcomeFrame:
        """From per-group counts: rows of [arm,] attribute, class, count (images), positives (images with the
        outcome). Rows repeated for the same group (e.g. one per prompt) add up."""
        require_columns(counts, ["attribute", "class", count, positives], "outcome counts")
        n = pd.to_numeric(counts[count], errors="coerce")
        pos = pd.to_numeric(counts[positives], errors="coerce")
        finite = np.isfinite(n) & np.isfinite(pos)
        if n.isna().any() or pos.isna().any() or not finite.all() or (pos < 0).any() or (pos > n).any():
            raise FairdiffError(f"columns {count!r} and {positives!r} must be counts with 0 <= {positives} <= {count}.")
        table = pd.DataFrame(
            {
                "arm": counts[ARM].astype(str) if ARM in counts.columns else DEFAULT_ARM,
                "attribute": counts["attribute"].astype(str),
                "group": counts["class"].astype(str),
                "n": n.astype(np.int64),
                "positives": pos.astype(np.int64),
            }
        )
        if table.empty:
            raise FairdiffError("outcome counts have no rows.")
        table = table.groupby(["arm", "attribute", "group"], sort=False, as_index=False)[["n", "positives"]].sum()
        # the groups of one attribute partition the images, so the first attribute's rows give the totals
        first = table[table["attribute"] == table["attribute"].iloc[0]]
        totals = first.groupby("arm", sort=False, as_index=False)[["n", "positives"]].sum()
        frame = cls.__new__(cls)
        frame._compute(table, totals, n_boot, confidence, seed)
        return frame

    def _compute(self, table: pd.DataFrame, totals: pd.DataFrame, n_boot: int, confidence: float, seed: int) -> None:
        self.bootstrap = BootstrapConfig(n_boot, confidence, seed)
        self.bootstrap.check()
        by_group, difference, ratio = [], [], []
        for (arm, attribute), rows in table.groupby(["arm", "attribute"], sort=False):
            g, d, r = _assess_groups(arm, attribute, rows, self.bootstrap)
            by_group.append(g)
            difference.append(d)
            ratio.append(r)
        self.by_group = pd.concat(by_group, ignore_index=True)
        self._difference, self._ratio = pd.DataFrame(difference), pd.DataFrame(ratio)
        overall = []
        for arm, n, pos in totals[["arm", "n", "positives"]].itertuples(index=False):
            n, pos = int(n), int(pos)
            if n == 0:
                continue
            low, high = wilson_ci(pos, n, self.bootstrap.confidence)
            rate = {"rate": pos / n, "ci_low": float(low), "ci_high": float(high)}
            overall.append({"arm": arm, "n": n, "positives": pos, **rate})
        self.overall = pd.DataFrame(overall)

    def difference(self) -> pd.DataFrame:
        """max_g r_g - min_g r_g per (arm, attribute), with its CI and the groups at the max and the min."""
        return self._difference.copy()

    def ratio(self) -> pd.DataFrame:
        """max_g r_g / min_g r_g per (arm, attribute) (inf when the min is 0 < max; 1 when all are 0), with CI."""
        return self._ratio.copy()

    def to_dict(self) -> dict:
        return {
            "bootstrap": vars(self.bootstrap),
            "overall": records(self.overall),
            "by_group": records(self.by_group),
            "difference": records(self._difference),
            "ratio": records(self._ratio),
        }


def _assess_groups(
    arm: str, attribute: str, rows: pd.DataFrame, cfg: BootstrapConfig
) -> tuple[pd.DataFrame, dict, dict]:
    rng = stream(cfg.seed, arm, attribute)
    n, pos = rows["n"].to_numpy(), rows["positives"].to_numpy()
    seen = n > 0  # groups with no images have no rate
    rate = np.full(n.shape, np.nan)
    rate[seen] = pos[seen] / n[seen]
    draws = np.full((cfg.n_boot, n.size), np.nan)
    draws[:, seen] = resample_positives(n[seen], pos[seen], cfg.n_boot, rng) / n[seen]  # (B, G_seen)
    low, high = np.full(n.shape, np.nan), np.full(n.shape, np.nan)
    if seen.any():
        low[seen], high[seen] = wilson_ci(pos[seen], n[seen], cfg.confidence)
    groups = rows["group"].to_numpy()
    by_group = pd.DataFrame(
        {"arm": arm, "attribute": attribute, "group": groups, "n": n, "positives": pos}
        | {"rate": rate, "ci_low": low, "ci_high": high}
    )
    base = {"arm": arm, "attribute": attribute}
    if seen.sum() < 2:
        logger.warning("arm %s, %s: fewer than 2 groups with images; no parity", arm, attribute)
        empty = {"ci_low": np.nan, "ci_high": np.nan, "max_group": None, "min_group": None}
        return by_group, base | {"difference": np.nan} | empty, base | {"ratio": np.nan} | empty
    r_seen, g_seen = rate[seen], groups[seen]
    extremes = {"max_group": g_seen[np.argmax(r_seen)], "min_group": g_seen[np.argmin(r_seen)]}
    out = []
    for name, formula in (("difference", parity_difference_rows), ("ratio", parity_ratio_rows)):
        low_, high_ = percentile_ci(formula(draws[:, seen]), cfg.confidence)
        out.append(base | {name: float(formula(r_seen)), "ci_low": float(low_), "ci_high": float(high_)} | extremes)
    return by_group, out[0], out[1]
