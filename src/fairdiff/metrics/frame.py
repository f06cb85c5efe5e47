"""MetricFrame: attribute shares and bias metrics per prompt and per arm, each with a seeded bootstrap CI.

Like fairlearn's MetricFrame: a keyword-only constructor, everything computed once, results as DataFrames.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from fairdiff.errors import FairdiffError
from fairdiff.metrics.bootstrap import (
    BootstrapConfig,
    percentile_ci,
    prompt_mean_ci,
    resample_counts,
    stream,
    wilson_ci,
)
from fairdiff.metrics.formulas import SHARE_METRICS
from fairdiff.metrics.labels import (
    Block,
    add_intersections,
    blocks_from_counts,
    blocks_from_labels,
    resolve_targets,
)

Target = Mapping[str, Mapping[str, float]]


def _with_ci(name: str) -> list[str]:
    return [name, f"{name}_ci_low", f"{name}_ci_high"]


class MetricFrame:
    """Bias of attribute shares against a target mix, per (arm, prompt, attribute) and per (arm, attribute).

    `data` has one row per image: a `group_by` column (default "prompt"; None puts all images in one group),
    an optional "arm" column, and one column per attribute in `classes` holding the image's class label
    (missing = not labelled). A class with no images counts as share 0. `target` gives q per attribute
    (default uniform); `intersections` such as [("gender", "skin")] add the product attribute "gender×skin"
    (uniform over the product unless `target` names it).

    CIs: per prompt, percentile bootstrap over that prompt's images; suite means (`overall`), percentile
    bootstrap over prompts, each resampled prompt keeping its point estimate. A suite of one prompt reports
    that prompt's image CI. Same seed -> same CIs.
    """

    def __init__(
        self,
        *,
        data: pd.DataFrame,
        classes: Mapping[str, Sequence[str]],
        target: Target | None = None,
        intersections: Sequence[Sequence[str]] = (),
        group_by: str | None = "prompt",
        n_boot: int = 1000,
        confidence: float = 0.95,
        seed: int = 0,
    ) -> None:
        if not classes:
            raise FairdiffError("`classes` must name at least one attribute and its classes.")
        data, classes = add_intersections(data, classes, intersections)
        self._compute(blocks_from_labels(data, classes, group_by), classes, target, n_boot, confidence, seed)

    @classmethod
    def from_counts(
        cls,
        counts: pd.DataFrame,
        *,
        classes: Mapping[str, Sequence[str]] | None = None,
        target: Target | None = None,
        group_by: str | None = "prompt",
        count: str = "count",
        n_boot: int = 1000,
        confidence: float = 0.95,
        seed: int = 0,
    ) -> MetricFrame:
        """From per-group counts made by any tool: rows of [arm,] [prompt,] attribute, class, count.
        `classes` defaults to the target's classes where given, else the sorted class names in `counts`."""
        if classes is None:
            if "attribute" not in counts.columns or "class" not in counts.columns:
                raise FairdiffError(f"counts need columns 'attribute' and 'class'; columns are {list(counts.columns)}.")
            target = target or {}
            classes = {
                a: tuple(target[a]) if a in target else tuple(sorted(rows["class"].astype(str).unique()))
                for a, rows in counts.groupby(counts["attribute"].astype(str), sort=False)
            }
        classes = {a: tuple(map(str, c)) for a, c in classes.items()}
        frame = cls.__new__(cls)
        frame._compute(blocks_from_counts(counts, classes, group_by, count), classes, target, n_boot, confidence, seed)
        return frame

    def _compute(
        self,
        blocks: list[Block],
        classes: Mapping[str, Sequence[str]],
        target: Target | None,
        n_boot: int,
        confidence: float,
        seed: int,
    ) -> None:
        self.bootstrap = BootstrapConfig(n_boot, confidence, seed)
        self.bootstrap.check()
        self.classes = {a: tuple(c) for a, c in classes.items()}
        self.targets = resolve_targets(target, self.classes)
        if not blocks:
            raise FairdiffError("no labelled images: every attribute column is empty.")
        shares, by_prompt, overall = [], [], []
        for block in blocks:
            s, p, o = _assess_block(block, self.targets[block.attribute], self.bootstrap)
            shares.append(s)
            by_prompt.append(p)
            overall.append(o)
        self.shares = pd.concat(shares, ignore_index=True)
        self.by_prompt = pd.concat(by_prompt, ignore_index=True)
        self.overall = pd.DataFrame(overall)

    @property
    def metrics(self) -> tuple[str, ...]:
        return tuple(SHARE_METRICS)

    def to_dict(self) -> dict:
        """Plain, JSON-ready results (inf written as the string "inf")."""
        return {
            "bootstrap": vars(self.bootstrap),
            "classes": {a: list(c) for a, c in self.classes.items()},
            "target": {a: dict(zip(self.classes[a], q.tolist(), strict=True)) for a, q in self.targets.items()},
            "overall": records(self.overall),
            "by_prompt": records(self.by_prompt),
            "shares": records(self.shares),
        }

    def __repr__(self) -> str:
        arms, prompts = self.overall["arm"].nunique(), self.by_prompt["prompt"].nunique()
        return f"MetricFrame({arms} arm(s), {prompts} prompt(s), attributes {list(self.classes)})"


def _assess_block(
    block: Block, q: np.ndarray, cfg: BootstrapConfig
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, object]]:
    rng = stream(cfg.seed, block.arm, block.attribute)
    n = block.counts.sum(axis=1)  # (P,)
    p_hat = block.counts / n[:, None]  # (P, K)
    # draws are made in the prompts' sorted order, so CIs do not depend on the order rows came in (a sharded or
    # resumed run, a shuffled CSV)
    order = np.argsort(np.asarray(block.prompts, dtype=object), kind="stable")
    draws = np.empty((cfg.n_boot, *p_hat.shape))
    draws[:, order] = resample_counts(block.counts[order], cfg.n_boot, rng) / n[order, None]  # (B, P, K)
    share_low, share_high = wilson_ci(block.counts, n[:, None], cfg.confidence)  # (P, K) each
    n_prompts, k = p_hat.shape
    shares = pd.DataFrame(
        {
            "arm": block.arm,
            "prompt": np.repeat(block.prompts, k),
            "attribute": block.attribute,
            "class": np.tile(block.classes, n_prompts),
            "share": p_hat.ravel(),
            "ci_low": share_low.ravel(),
            "ci_high": share_high.ravel(),
            "n": np.repeat(n, k),
        }
    )
    by_prompt = {"arm": block.arm, "prompt": list(block.prompts), "attribute": block.attribute, "n": n}
    overall: dict[str, object] = {
        "arm": block.arm,
        "attribute": block.attribute,
        "n_prompts": n_prompts,
        "n_images": int(n.sum()),
    }
    for name, formula in SHARE_METRICS.items():
        point = formula(p_hat, q)  # (P,)
        low, high = percentile_ci(formula(draws, q), cfg.confidence)  # (P,) each
        by_prompt.update(zip(_with_ci(name), (point, low, high), strict=True))
        if n_prompts == 1:  # no spread of prompts to resample: the one prompt's image CI
            summary = (float(point[0]), float(low[0]), float(high[0]))
        else:
            summary = prompt_mean_ci(point[order], cfg.n_boot, cfg.confidence, rng)
        overall.update(zip(_with_ci(name), summary, strict=True))
    return shares, pd.DataFrame(by_prompt), overall


def plain(v):
    """One value made strict JSON: numpy scalars to Python, inf/-inf to "inf"/"-inf", NaN to None, recursively
    through dicts and lists (`json.dumps` would write bare Infinity and NaN, which JSON parsers reject)."""
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not np.isfinite(v):
        return None if np.isnan(v) else ("inf" if v > 0 else "-inf")
    return v


def records(df: pd.DataFrame) -> list[dict]:
    """DataFrame rows as plain dicts for JSON (values as `plain` makes them)."""
    return [{k: plain(v) for k, v in row.items()} for row in df.to_dict(orient="records")]
