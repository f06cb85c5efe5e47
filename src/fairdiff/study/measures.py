"""Measures: an audit's summary as long-table rows, and paired differences between arms with CIs.

Every row has `measure`, `value`, `ci_low`, `ci_high`, `n` and says what it is about in `suite`, `arm`,
`reference` (the arm a difference is taken against), `attribute` and `group`. The rules:

- `bias`: the suite mean over prompts of the normalized bias `2/(K(K-1)) Σ_{i<j} |p̂_i - p̂_j|` per arm and
  attribute, with the audit's bootstrap CI (`fairdiff.audit.summary`).
- `bias_difference` (arm a, reference b): mean_p nb_a(p) - mean_p nb_b(p) over the prompts both arms drew, with a
  paired percentile bootstrap: prompts resampled with replacement, and within each prompt the image seeds
  resampled with replacement, the same seeds for both arms (arms draw the same seeds, so the noise is paired).
  Positive: arm a is more biased than b. Suite `pooled` takes the prompts of every shares suite of the run.
- `validity`, `fd`, `fd_floor`, `explicit_accuracy` (pooled over every stated attribute of every image, Wilson
  CI), `explicit_accuracy_min` (the worst stated value; its value in `group`), `negative_response` (rate without
  minus rate with the `-term`, paired bootstrap CI): per arm, from the audit's quality table.
- `fd_difference` (a vs b): fd_a - fd_b with the conservative interval [low_a - high_b, high_a - low_b] (two 95%
  CIs combined, wider than a paired CI would be; the Fréchet bootstrap is not paired across arms).
- `revealing_rate` per gender x skin group and `revealing_gap` (max - min over groups, bootstrap CI) per arm.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np
import pandas as pd

from fairdiff.errors import FairdiffError
from fairdiff.metrics.bootstrap import percentile_ci, wilson_ci
from fairdiff.metrics.formulas import normalized_bias_rows

COLUMNS = ["suite", "arm", "reference", "measure", "attribute", "group", "value", "ci_low", "ci_high", "n"]
POOLED = "pooled"
CONFIDENCE = 0.95


def row(measure: str, value: float, low: float = np.nan, high: float = np.nan, n: int | None = None, **about) -> dict:
    """One long-table row (unnamed fields empty)."""
    out = {c: "" for c in ("suite", "arm", "reference", "attribute", "group")}
    out.update({k: "" if v is None else str(v) for k, v in about.items()})
    out.update({"measure": measure, "value": float(value), "ci_low": float(low), "ci_high": float(high)})
    out["n"] = np.nan if n is None else int(n)
    return out


def table(rows: Sequence[dict]) -> pd.DataFrame:
    df = pd.DataFrame(list(rows))
    for c in COLUMNS:
        if c not in df.columns:
            df[c] = np.nan if c in ("value", "ci_low", "ci_high", "n") else ""
    return df[COLUMNS + [c for c in df.columns if c not in COLUMNS]]


def _labels(rows: pd.DataFrame, attribute: str) -> pd.Series:
    parts = attribute.split("×")
    missing = [p for p in parts if p not in rows.columns]
    if missing:
        raise FairdiffError(f"the audit rows have no {missing[0]!r} labels")
    labels = rows[parts[0]].astype(str)
    for p in parts[1:]:
        labels = labels + "×" + rows[p].astype(str)
    return labels


def paired_bias_difference(
    rows: pd.DataFrame,
    arm: str,
    reference: str,
    attribute: str,
    classes: Sequence[str],
    n_boot: int = 1000,
    seed: int = 0,
) -> tuple[float, float, float, int]:
    """(difference, ci_low, ci_high, images per arm) of the suite-mean normalized bias, arm - reference, over
    the (suite, prompt, seed) both arms drew (see the module docstring)."""
    keys = ["suite", "prompt", "seed"]
    index = {c: i for i, c in enumerate(classes)}
    sides = []
    for name in (arm, reference):
        d = rows[rows["arm"] == name]
        if d.empty:
            raise FairdiffError(f"no images of arm {name!r} to compare")
        sides.append(d[keys].assign(label=_labels(d, attribute).map(index)))
    pairs = sides[0].merge(sides[1], on=keys, suffixes=("_a", "_b"))
    if pairs.empty:
        raise FairdiffError(f"arms {arm!r} and {reference!r} drew no image of the same prompt and seed")
    if pairs[["label_a", "label_b"]].isna().any().any():
        raise FairdiffError(f"{attribute}: a label outside the classes {list(classes)}")
    rng = np.random.default_rng([seed, zlib.crc32(f"paired/{arm}/{reference}/{attribute}".encode())])
    k = len(classes)
    eye = np.eye(k)
    point, boot = [], []
    for _, d in pairs.groupby(["suite", "prompt"], sort=True):
        la, lb = d["label_a"].to_numpy(int), d["label_b"].to_numpy(int)
        n = len(la)
        point.append(normalized_bias_rows(eye[la].mean(0)) - normalized_bias_rows(eye[lb].mean(0)))
        idx = rng.integers(0, n, size=(n_boot, n))  # (B, n) the same seeds for both arms
        boot.append(normalized_bias_rows(eye[la[idx]].mean(1)) - normalized_bias_rows(eye[lb[idx]].mean(1)))
    per_prompt = np.stack(boot, axis=1)  # (B, P)
    pick = rng.integers(0, per_prompt.shape[1], size=per_prompt.shape)  # prompts resampled
    draws = np.take_along_axis(per_prompt, pick, axis=1).mean(1)
    low, high = percentile_ci(draws, CONFIDENCE)
    return float(np.mean(point)), float(low), float(high), len(pairs)


def bias_rows(summary, suites: Sequence[str] | None = None) -> list[dict]:
    """`bias` per shares suite, arm and attribute (intersections included), from the audit's MetricFrame."""
    out = []
    for name, s in summary.suites.items():
        if s.kind != "shares" or (suites is not None and name not in suites):
            continue
        for r in s.frame.overall.to_dict("records"):
            out.append(
                row(
                    "bias",
                    r["normalized_bias"],
                    r["normalized_bias_ci_low"],
                    r["normalized_bias_ci_high"],
                    r.get("n_images"),
                    suite=name,
                    arm=r["arm"],
                    attribute=r["attribute"],
                )
            )
    return out


def difference_rows(
    summary,
    pairs: Sequence[tuple[str, str]],
    attributes: Sequence[str],
    suites: Sequence[str],
    n_boot: int = 1000,
    seed: int = 0,
) -> list[dict]:
    """`bias_difference` of each (arm, reference) pair, attribute and suite, plus the suites `pooled`."""
    rows = summary.results.rows
    classes = dict(summary.results.classes)
    out = []
    for attribute in attributes:
        parts = attribute.split("×")
        values = [""]
        for p in parts:
            values = [f"{v}×{c}" if v else c for v in values for c in classes[p]]
        for arm, reference in pairs:
            for suite in [*suites, POOLED] if len(suites) > 1 else list(suites):
                d = rows[rows["suite"].isin(suites if suite == POOLED else [suite])]
                value, low, high, n = paired_bias_difference(d, arm, reference, attribute, values, n_boot, seed)
                out.append(
                    row(
                        "bias_difference",
                        value,
                        low,
                        high,
                        n,
                        suite=suite,
                        arm=arm,
                        reference=reference,
                        attribute=attribute,
                    )
                )
    return out


def quality_rows(summary) -> list[dict]:
    """Per arm: validity, fd, fd_floor, explicit accuracy (pooled, Wilson CI; worst value), negative response."""
    q = summary.quality
    stated = [s.stated for s in summary.suites.values() if s.stated is not None]
    pooled = pd.concat(stated).groupby("arm")[["n", "correct"]].sum() if stated else None
    out = []
    for r in q.to_dict("records"):
        arm = r["arm"]
        out.append(row("validity", r["validity"], r["validity_ci_low"], r["validity_ci_high"], r["images"], arm=arm))
        if not pd.isna(r.get("fd")):
            out.append(row("fd", r["fd"], r["fd_ci_low"], r["fd_ci_high"], r["fd_images"], arm=arm))
            out.append(row("fd_floor", r["fd_floor"], n=r["fd_images"], arm=arm))
        if pooled is not None and arm in pooled.index:
            n, k = int(pooled.loc[arm, "n"]), int(pooled.loc[arm, "correct"])
            low, high = wilson_ci(np.array([k]), np.array([n]), CONFIDENCE)
            out.append(row("explicit_accuracy", k / n, low[0], high[0], n, arm=arm, attribute="stated"))
            out.append(row("explicit_accuracy_min", r["explicit_accuracy_min"], arm=arm, group=r["explicit_min_value"]))
        if not pd.isna(r.get("negative_response")):
            out.append(
                row(
                    "negative_response",
                    r["negative_response"],
                    r["negative_response_ci_low"],
                    r["negative_response_ci_high"],
                    arm=arm,
                )
            )
    return out


def fd_difference_rows(summary, pairs: Sequence[tuple[str, str]]) -> list[dict]:
    """`fd_difference` of each (arm, reference) pair, conservative interval (module docstring)."""
    q = summary.quality.set_index("arm")
    out = []
    for arm, reference in pairs:
        if arm not in q.index or reference not in q.index or pd.isna(q.loc[arm, "fd"]):
            continue
        a, b = q.loc[arm], q.loc[reference]
        out.append(
            row(
                "fd_difference",
                a["fd"] - b["fd"],
                a["fd_ci_low"] - b["fd_ci_high"],
                a["fd_ci_high"] - b["fd_ci_low"],
                int(a["fd_images"]),
                arm=arm,
                reference=reference,
            )
        )
    return out


def revealing_rows(summary, suite: str = "world-avatars") -> list[dict]:
    """`revealing_rate` per arm and gender x skin group, `revealing_gap` (max - min rate) per arm."""
    s = summary.suites.get(suite)
    if s is None or s.kind != "outcome":
        return []
    inter = "×".join(s.spec["groups"])
    out = []
    g = s.frame.by_group
    for r in g[g["attribute"] == inter].to_dict("records"):
        out.append(
            row(
                "revealing_rate",
                r["rate"],
                r["ci_low"],
                r["ci_high"],
                r["n"],
                suite=suite,
                arm=r["arm"],
                group=r["group"],
            )
        )
    d = s.frame.difference()
    for r in d[d["attribute"] == inter].to_dict("records"):
        if pd.isna(r["difference"]):
            continue
        out.append(
            row(
                "revealing_gap",
                r["difference"],
                r["ci_low"],
                r["ci_high"],
                suite=suite,
                arm=r["arm"],
                group=f"{r['max_group']} - {r['min_group']}",
            )
        )
    return out
