"""CSV input for `fairdiff metrics`: per-image labels or per-group counts made by any tool, and option parsing.

Three shapes, told apart by their columns:
- counts: columns attribute, class, count (+ prompt, + arm); one row per (prompt, attribute, class)
- wide counts: a `count` column beside one column per attribute (`prompt,gender,count`, the way published tables
  are often saved); each row counts `count` images with those labels (read as counts per attribute)
- labels: one row per image; one column per attribute holding the class label (+ prompt, + arm)

Counts must be non-negative whole numbers; a fractional one is an error naming its row. A numeric column that is
not read is named in a note, never dropped silently.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from fairdiff.errors import FairdiffError
from fairdiff.metrics.frame import MetricFrame
from fairdiff.metrics.labels import ARM, PRODUCT, infer_classes
from fairdiff.metrics.outcome import OutcomeFrame

COUNT_COLUMNS = ("attribute", "class", "count")
COUNT = "count"
# per-image columns that identify an image rather than label it; never taken as attributes (with fairdiff's own
# rows.csv: suite, the prompt's text and negative, the image hash, and the fields a prompt asked for)
ID_COLUMNS = frozenset(
    {"image", "path", "file", "filename", "id", "image_id", "seed", "key", "job", "job_key"}
    | {"suite", "text", "negative", "sha256"}
)
ID_PREFIXES = ("field_", "conf_", "prob_")
MAX_NUMERIC_CLASSES = 12  # a skipped numeric column with this few whole values may be a label (a Monk tone 1-10)


@dataclass
class CsvMetrics:
    shape: str  # "labels" or "counts"
    group_by: str | None
    frame: MetricFrame
    outcome: OutcomeFrame | None
    notes: list[str] = field(default_factory=list)  # what was assumed about the file, for the user to check


def read_table(path: Path) -> pd.DataFrame:
    """Read a CSV; every read problem becomes a FairdiffError naming the file."""
    if not path.is_file():
        raise FairdiffError(f"no such file: {path}")
    try:
        df = pd.read_csv(path, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise FairdiffError(f"{path} is not a readable CSV: {str(exc).strip().splitlines()[0]}") from None
    df.columns = [str(c).strip() for c in df.columns]
    if df.empty:
        raise FairdiffError(f"{path} has a header but no rows.")
    return df


def parse_target(specs: Sequence[str]) -> dict[str, dict[str, float]]:
    """["gender=man:0.5,woman:0.5", ...] -> {"gender": {"man": 0.5, "woman": 0.5}} (sums are checked later)."""
    target: dict[str, dict[str, float]] = {}
    for spec in specs:
        attribute, sep, body = spec.partition("=")
        attribute = attribute.strip()
        if not sep or not attribute or not body.strip():
            raise FairdiffError(f"--target must look like 'gender=man:0.5,woman:0.5', got {spec!r}.")
        mix = {}
        for item in body.split(","):
            name, sep, value = item.rpartition(":")
            try:
                share = float(value)
            except ValueError:
                share = None
            if not sep or not name.strip() or share is None:
                raise FairdiffError(f"--target {attribute}: entries must look like 'class:share', got {item!r}.")
            mix[name.strip()] = share
        target[attribute] = mix
    return target


def parse_attributes(spec: str) -> tuple[str, ...]:
    """'gender*skin', 'gender×skin' or 'gender,skin' -> ("gender", "skin")."""
    parts = tuple(p.strip() for p in spec.replace(PRODUCT, "*").replace(",", "*").split("*") if p.strip())
    if not parts:
        raise FairdiffError(f"expected attribute names such as 'gender*skin', got {spec!r}.")
    return parts


def parse_outcome(spec: str) -> tuple[str, str | None]:
    """'attire=revealing' -> ("attire", "revealing"); 'nsfw' -> ("nsfw", None) for a boolean column."""
    column, sep, positive = spec.partition("=")
    if not column.strip() or (sep and not positive.strip()):
        raise FairdiffError(f"--outcome must look like COLUMN or COLUMN=POSITIVE, got {spec!r}.")
    return column.strip(), positive.strip() if sep else None


def label_columns(df: pd.DataFrame, exclude: Sequence[str]) -> list[str]:
    """Attribute columns of a per-image table: text columns that are not the group, arm, outcome or an id."""
    return [c for c in _candidates(df, exclude) if not pd.api.types.is_numeric_dtype(df[c])]


def _candidates(df: pd.DataFrame, exclude: Sequence[str]) -> list[str]:
    skip = {*exclude, ARM, *ID_COLUMNS}
    return [c for c in df.columns if c not in skip and not c.startswith(ID_PREFIXES)]


def _whole_numbers(column: pd.Series) -> bool:
    values = column.dropna()
    return (
        pd.api.types.is_numeric_dtype(column)
        and not pd.api.types.is_bool_dtype(column)
        and len(values) > 0
        and bool((values == values.round()).all())
    )


def as_labels(column: pd.Series) -> pd.Series:
    """A label column as text: whole numbers read as floats because a cell is empty (1.0, NaN) become "1"."""
    if _whole_numbers(column):
        return column.map(lambda v: v if pd.isna(v) else str(int(v)))
    return column


def assess_csv(
    path: Path,
    *,
    target: Sequence[str] = (),
    group_by: str | None = None,
    attributes: Sequence[str] | None = None,
    intersections: Sequence[str] = (),
    outcome: str | None = None,
    groups: Sequence[str] = (),
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> CsvMetrics:
    """Read `path`, detect its shape and build the frames. `group_by` None: "prompt" if present, else one group."""
    df = read_table(path)
    mix = parse_target(target)
    if group_by is None:
        group_by = "prompt" if "prompt" in df.columns else None
    elif group_by not in df.columns:
        raise FairdiffError(f"--group-by {group_by!r}: {path} has no such column; columns are {list(df.columns)}.")
    boot = {"n_boot": n_boot, "confidence": confidence, "seed": seed}
    out_column, positive = parse_outcome(outcome) if outcome else (None, None)
    if groups and not outcome:
        raise FairdiffError("--groups needs --outcome (the rate compared between groups).")

    shape, notes = "counts", []  # wide counts are read as counts (a note says so)
    if COUNT in df.columns and not {"attribute", "class"} <= set(df.columns):
        if {"attribute", "class"} & set(df.columns):
            have = "attribute" if "attribute" in df.columns else "class"
            raise FairdiffError(
                f"{path}: has columns {COUNT!r} and {have!r} but not both 'attribute' and 'class'; give counts as "
                f"{','.join(COUNT_COLUMNS)} or as one column per attribute beside {COUNT!r} (prompt,gender,count)"
            )
        df, notes = _wide_counts(path, df, group_by, out_column, attributes, intersections)
        attributes, intersections = None, ()
    if all(c in df.columns for c in COUNT_COLUMNS):
        if intersections:
            raise FairdiffError("intersections need per-image labels; give counts for the product attribute instead.")
        _check_counts(path, df, [c for c in (COUNT, out_column) if c and c in df.columns])
        present = list(pd.unique(df["attribute"].astype(str)))
        if attributes:
            unknown = [a for a in attributes if a not in present]
            if unknown:
                raise FairdiffError(f"--attributes: {path} has no counts for {unknown}; its attributes are {present}.")
            df = df[df["attribute"].astype(str).isin(attributes)]
        observed = {
            a: sorted(rows["class"].astype(str).unique())
            for a, rows in df.groupby(df["attribute"].astype(str), sort=False)
        }
        for a, classes in observed.items():
            if a not in mix and len(classes) < 2:
                raise FairdiffError(
                    f"{path}: attribute {a!r} has counts for one class only ({', '.join(classes)}); name every class"
                    f" with --target {a}=CLASS:SHARE,... (e.g. {a}=man:0.5,woman:0.5)"
                )
        frame = MetricFrame.from_counts(df, target=mix, group_by=group_by, **boot)
        outcome_frame = None
        if out_column:
            if positive is not None:
                raise FairdiffError(f"in a counts file --outcome names a column of positive counts, got {outcome!r}.")
            rows = df[df["attribute"].astype(str).isin(groups)] if groups else df
            outcome_frame = OutcomeFrame.from_counts(rows, positives=out_column, **boot)
        notes += _inferred_note({a: c for a, c in observed.items() if a not in mix})
        return CsvMetrics(shape, group_by, frame, outcome_frame, notes)

    exclude = [c for c in (group_by, out_column) if c]
    names = list(attributes) if attributes else label_columns(df, exclude)
    numeric = [] if attributes else [c for c in _candidates(df, exclude) if c not in names]
    skipped = (
        f"numeric column(s) {numeric} not taken as attributes; name them with --attributes to measure them"
        f" (a column of image counts per row must be called {COUNT!r})"
    )
    if not names:
        raise FairdiffError(
            f"{path}: no attribute columns found (columns {list(df.columns)}). Give per-image labels, one text "
            f"column per attribute, or counts with columns {', '.join(COUNT_COLUMNS)}."
            + (f" The {skipped}." if numeric else "")
        )
    notes = [skipped] if numeric else []
    for c in names:
        if c in df.columns:
            df[c] = as_labels(df[c])
    if out_column and positive is not None and out_column in df.columns:
        df[out_column] = as_labels(df[out_column])
    classes = infer_classes(df, names, mix)
    notes += _inferred_note({a: c for a, c in classes.items() if a not in mix and len(c) >= 2})
    single = [a for a, c in classes.items() if len(c) < 2]
    if single:
        a = single[0]
        raise FairdiffError(
            f"{path}: column {a!r} holds one class only ({', '.join(classes[a]) or 'none'}); name every class with "
            f"--target {a}=CLASS:SHARE,... (e.g. {a}=man:0.5,woman:0.5)"
        )
    products = [parse_attributes(s) for s in intersections]
    frame = MetricFrame(data=df, classes=classes, target=mix, intersections=products, group_by=group_by, **boot)
    outcome_frame = None
    if out_column:
        specs = [p[0] if len(p) == 1 else p for p in map(parse_attributes, groups)] if groups else names
        outcome_frame = OutcomeFrame(
            data=df, outcome=out_column, positive=positive, groups=specs, classes=classes, **boot
        )
    return CsvMetrics("labels", group_by, frame, outcome_frame, notes)


def _inferred_note(classes: dict[str, Sequence[str]]) -> list[str]:
    """A class that no image has is not counted (K shrinks): say which classes were read from the data."""
    if not classes:
        return []
    listed = "; ".join(f"{a}: {', '.join(c)}" for a, c in classes.items())
    return [f"classes read from the data ({listed}); a class no image has is left out, --target names them all"]


def _row(df: pd.DataFrame, index) -> str:
    """A data row for an error message: its number in the file (1 = the first row under the header) and values."""
    values = ", ".join(f"{c}={v}" for c, v in df.loc[index].items())
    return f"row {df.index.get_loc(index) + 1} ({values})"


def _check_counts(path: Path, df: pd.DataFrame, columns: Sequence[str]) -> None:
    """Every count is a finite, non-negative whole number; else one error naming the first bad row."""
    for column in columns:
        values = pd.to_numeric(df[column], errors="coerce").astype(float)
        bad = values.isna() | ~np.isfinite(values.fillna(0)) | (values < 0) | (values != values.round())
        if bad.any():
            index = bad[bad].index[0]
            raise FairdiffError(
                f"{path}: {_row(df, index)}: {column} is {df.loc[index, column]}, not a count "
                "(a non-negative whole number of images)"
            )


def _wide_counts(
    path: Path,
    df: pd.DataFrame,
    group_by: str | None,
    out_column: str | None,
    attributes: Sequence[str] | None,
    intersections: Sequence[str],
) -> tuple[pd.DataFrame, list[str]]:
    """A `count` column beside one column per attribute -> the long counts shape (attribute, class, count), one
    block of rows per attribute and per `--intersection`; returns it and notes on what was assumed."""
    exclude = [c for c in (group_by, out_column, COUNT) if c]
    if out_column and out_column not in df.columns:
        raise FairdiffError(f"--outcome {out_column!r}: {path} has no such column; columns are {list(df.columns)}.")
    counted = [COUNT, *([out_column] if out_column else [])]
    _check_counts(path, df, counted)
    if attributes:
        unknown = [a for a in attributes if a not in df.columns]
        if unknown:
            raise FairdiffError(f"--attributes: {path} has no column(s) {unknown}; columns are {list(df.columns)}.")
        names = list(attributes)
    else:
        names = label_columns(df, exclude)
    products = [parse_attributes(spec) for spec in intersections]
    unknown = sorted({a for p in products for a in p} - set(df.columns))
    if unknown:
        raise FairdiffError(f"--intersection: {path} has no column(s) {unknown}; columns are {list(df.columns)}.")
    numeric = [c for c in _candidates(df, exclude) if c not in names]
    if not names:
        raise FairdiffError(
            f"{path}: a {COUNT!r} column but no attribute columns beside it (columns {list(df.columns)}); give text "
            f"columns of class labels (prompt,gender,count) or counts as {','.join(COUNT_COLUMNS)}"
            + (f"; numeric column(s) {numeric} can be named with --attributes" if numeric else "")
        )
    notes = [
        f"read as counts: each row is {COUNT!r} images with the labels in {names}"
        + (f" (intersections {[PRODUCT.join(p) for p in products]})" if products else "")
    ]
    if numeric:
        notes.append(
            f"numeric column(s) {numeric} not taken as attributes; name them with --attributes to measure them"
        )
    keys = [c for c in (ARM, group_by) if c and c in df.columns]
    parts, missing = [], {}
    for attribute, columns in [(a, (a,)) for a in names] + [(PRODUCT.join(p), p) for p in products]:
        labels = [as_labels(df[c]) for c in columns]
        known = pd.concat([lab.notna() for lab in labels], axis=1).all(axis=1)
        if not known.all():
            missing[attribute] = int(pd.to_numeric(df.loc[~known, COUNT]).sum())
        classes = labels[0].astype(str)
        for lab in labels[1:]:
            classes = classes + PRODUCT + lab.astype(str)
        part = df.loc[known, keys + counted].copy()
        part.insert(len(keys), "attribute", attribute)
        part.insert(len(keys) + 1, "class", classes[known])
        parts.append(part)
    if missing:
        notes.append(f"images without a label, left out of that attribute: {missing}")
    long = pd.concat(parts, ignore_index=True)
    long[counted] = long[counted].apply(pd.to_numeric).astype("int64")
    return long, notes
