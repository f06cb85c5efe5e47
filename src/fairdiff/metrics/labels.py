"""Per-image labels and per-group counts -> class counts per (arm, attribute): one (P, K) matrix over prompts.

Both result frames start from these blocks, so metrics made from fairdiff's own runs, from a CSV of labels or
from counts made by any other tool go through one code path.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import product

import numpy as np
import pandas as pd

from fairdiff.errors import FairdiffError
from fairdiff.metrics.formulas import check_target

logger = logging.getLogger(__name__)

ARM = "arm"
DEFAULT_ARM = "default"  # the arm name when the data has no arm column
SINGLE_GROUP = "all"  # the prompt name when group_by is None: every image in one group
PRODUCT = "×"  # "gender×skin" is the product attribute of gender and skin; its classes read "man×light"


@dataclass(frozen=True)
class Block:
    """Class counts of one (arm, attribute): counts[i, k] images of prompts[i] assigned classes[k]."""

    arm: str
    attribute: str
    classes: tuple[str, ...]
    prompts: tuple[str, ...]
    counts: np.ndarray  # (P, K) int, every row total > 0


def require_columns(df: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise FairdiffError(f"{what}: no column {', '.join(map(repr, missing))}; columns are {list(df.columns)}.")


def product_name(attributes: Sequence[str]) -> str:
    return PRODUCT.join(attributes)


def add_intersections(
    data: pd.DataFrame, classes: Mapping[str, Sequence[str]], intersections: Sequence[Sequence[str]]
) -> tuple[pd.DataFrame, dict[str, tuple[str, ...]]]:
    """Add one label column per intersection ("gender×skin": "man×light"; missing if any part is missing).
    Its classes are the product of the parts' classes, in order (K = K_gender * K_skin)."""
    classes = {a: tuple(map(str, c)) for a, c in classes.items()}
    if not intersections:
        return data, classes
    data = data.copy()
    for parts in intersections:
        parts = tuple(parts)
        if len(parts) < 2:
            raise FairdiffError(f"an intersection needs at least 2 attributes, got {parts}.")
        unknown = [a for a in parts if a not in classes]
        if unknown:
            raise FairdiffError(
                f"intersection {parts}: unknown attribute(s) {unknown}; attributes are {list(classes)}."
            )
        name = product_name(parts)
        labels = data[list(parts)]
        joined = labels.fillna("").astype(str).agg(PRODUCT.join, axis=1)
        data[name] = joined.where(labels.notna().all(axis=1))
        classes[name] = tuple(PRODUCT.join(c) for c in product(*(classes[a] for a in parts)))
    return data, classes


def infer_classes(
    data: pd.DataFrame, attributes: Sequence[str], target: Mapping[str, Mapping[str, float]] | None = None
) -> dict[str, tuple[str, ...]]:
    """Classes per attribute: the target's classes in its order where a target is given, else the sorted labels."""
    target = target or {}
    require_columns(data, attributes, "attributes")
    return {
        a: tuple(map(str, target[a])) if a in target else tuple(sorted(data[a].dropna().astype(str).unique()))
        for a in attributes
    }


def resolve_targets(
    target: Mapping[str, Mapping[str, float]] | None, classes: Mapping[str, Sequence[str]]
) -> dict[str, np.ndarray]:
    """q per attribute as an array in class order; uniform where no target is given. Checks every given mix."""
    target = dict(target or {})
    unknown = [a for a in target if a not in classes]
    if unknown:
        raise FairdiffError(f"`target` names unknown attribute(s) {unknown}; attributes are {list(classes)}.")
    out = {}
    for a, cls in classes.items():
        if a not in target:
            out[a] = check_target(None, len(cls))
            continue
        mix = {str(c): v for c, v in target[a].items()}
        extra, missing = sorted(set(mix) - set(cls)), [c for c in cls if c not in mix]
        if extra or missing:
            raise FairdiffError(
                f"`target[{a!r}]` must give a share for each class {list(cls)}; "
                f"unknown {extra}, missing {missing} (got {mix})."
            )
        out[a] = check_target([mix[c] for c in cls], len(cls), name=f"target[{a!r}]")
    return out


def _text_column(df: pd.DataFrame, name: str) -> pd.Series:
    """A column of names (arm, prompt), as text; an empty cell is one error naming the column and first row."""
    missing = df[name].isna().to_numpy()
    if missing.any():
        raise FairdiffError(
            f"column {name!r} is empty in {int(missing.sum())} row(s) (first: data row {int(missing.argmax()) + 1}); "
            "every row needs a value there"
        )
    return df[name].astype(str)


def _arm_column(df: pd.DataFrame) -> pd.Series:
    return _text_column(df, ARM) if ARM in df.columns else pd.Series(DEFAULT_ARM, index=df.index)


def _group_column(df: pd.DataFrame, group_by: str | None) -> pd.Series:
    if group_by is None:
        return pd.Series(SINGLE_GROUP, index=df.index)
    require_columns(df, [group_by], "`group_by`")
    return _text_column(df, group_by)


def _check_labels(labels: pd.Series, attribute: str, classes: Sequence[str]) -> None:
    unknown = sorted(set(labels.unique()) - set(classes))
    if unknown:
        raise FairdiffError(
            f"column {attribute!r} has label(s) {unknown[:5]} that are not among its classes {list(classes)}."
        )


def blocks_from_labels(data: pd.DataFrame, classes: Mapping[str, Sequence[str]], group_by: str | None) -> list[Block]:
    """Count per-image labels: one Block per (arm, attribute). Images without a label for an attribute are left
    out of that attribute; a prompt with no labelled image for it is dropped from it (and logged)."""
    require_columns(data, list(classes), "`classes`")
    arms, groups = _arm_column(data), _group_column(data, group_by)
    blocks = []
    for attribute, cls in classes.items():
        labelled = data[attribute].notna()
        labels = data.loc[labelled, attribute].astype(str)
        _check_labels(labels, attribute, cls)
        codes = pd.Categorical(labels, categories=list(cls)).codes
        frame = pd.DataFrame({"arm": arms[labelled], "prompt": groups[labelled], "code": codes})
        for arm in pd.unique(arms):
            rows = frame[frame["arm"] == arm]
            prompts = tuple(pd.unique(rows["prompt"]))
            dropped = set(pd.unique(groups[arms == arm])) - set(prompts)
            if dropped:
                logger.warning("arm %s: no %s label in prompt(s) %s; left out", arm, attribute, sorted(dropped))
            if not prompts:
                continue
            index = pd.Categorical(rows["prompt"], categories=list(prompts)).codes
            counts = np.zeros((len(prompts), len(cls)), dtype=np.int64)
            np.add.at(counts, (index, rows["code"].to_numpy()), 1)
            blocks.append(Block(arm, attribute, tuple(cls), prompts, counts))
    return blocks


def blocks_from_counts(
    counts: pd.DataFrame, classes: Mapping[str, Sequence[str]], group_by: str | None, count: str = "count"
) -> list[Block]:
    """Per-group counts (rows: [arm,] [prompt,] attribute, class, count) -> one Block per (arm, attribute).
    A class with no row counts 0; repeated rows add up."""
    require_columns(counts, ["attribute", "class", count], "counts")
    values = pd.to_numeric(counts[count], errors="coerce")
    bad = values.isna() | ~np.isfinite(values) | (values < 0) | (values != values.round())
    if bad.any():
        raise FairdiffError(
            f"column {count!r} must hold non-negative whole numbers, got {counts[count][bad].iloc[0]!r}."
        )
    table = pd.DataFrame(
        {
            "arm": _arm_column(counts),
            "prompt": _group_column(counts, group_by),
            "attribute": counts["attribute"].astype(str),
            "class": counts["class"].astype(str),
            "count": values.astype(np.int64),
        }
    )
    unknown = sorted(set(table["attribute"]) - set(classes))
    if unknown:
        raise FairdiffError(f"counts name attribute(s) {unknown} without classes; attributes are {list(classes)}.")
    blocks = []
    for (arm, attribute), rows in table.groupby(["arm", "attribute"], sort=False):
        cls = tuple(classes[attribute])
        _check_labels(rows["class"], attribute, cls)
        wide = rows.pivot_table(index="prompt", columns="class", values="count", aggfunc="sum", sort=False)
        wide = wide.reindex(columns=list(cls)).fillna(0).astype(np.int64)
        empty = wide.sum(axis=1) == 0
        if empty.any():
            logger.warning("arm %s: prompt(s) %s have no %s counts; left out", arm, list(wide.index[empty]), attribute)
            wide = wide[~empty]
        if len(wide):
            blocks.append(Block(arm, attribute, cls, tuple(map(str, wide.index)), wide.to_numpy()))
    return blocks
