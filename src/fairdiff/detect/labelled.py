"""Accuracy of a detector on labelled image files (real-model detectors: accuracy is measured, never assumed)."""

from __future__ import annotations

import csv
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from fairdiff.errors import FairdiffError


def read_labelled_csv(csv_path: str | Path, attributes: Sequence[str]) -> tuple[list[Path], dict[str, list[str]]]:
    """A CSV with a `path` column (relative to the CSV's folder or absolute) and one column per attribute
    (class names; empty = unlabelled) -> (paths, {attribute: labels}) for the attributes it has."""
    csv_path = Path(csv_path).expanduser()
    if not csv_path.is_file():
        raise FairdiffError(f"accuracy CSV {str(csv_path)!r} not found")
    with csv_path.open(newline="", encoding="utf-8-sig") as f:  # utf-8-sig: a CSV saved by Excel
        rows = list(csv.DictReader(f))
    columns = set(rows[0]) if rows else set()
    if "path" not in columns:
        raise FairdiffError(f"accuracy CSV {str(csv_path)!r}: needs a 'path' column, has {sorted(columns)}")
    present = [a for a in attributes if a in columns]
    if not present:
        raise FairdiffError(
            f"accuracy CSV {str(csv_path)!r}: no label column; expected one of {list(attributes)},"
            f" has {sorted(columns)}"
        )
    missing = [i + 2 for i, row in enumerate(rows) if not (row.get("path") or "").strip()]  # line 1: header
    if missing:
        raise FairdiffError(f"accuracy CSV {str(csv_path)!r}: line {missing[0]} has no path")
    paths = [p if (p := Path(row["path"]).expanduser()).is_absolute() else csv_path.parent / p for row in rows]
    return paths, {a: [(row[a] or "").strip() for row in rows] for a in present}


def labelled_accuracy(
    predict_list: Callable[[list[np.ndarray]], dict[str, np.ndarray]],
    classes: Mapping[str, Sequence[str]],
    paths: Sequence[str | Path],
    labels: Mapping[str, Sequence[str | None]],
    on: str,
    batch_size: int = 32,
) -> dict[str, dict]:
    """Top-1 accuracy per attribute of `predict_list` (a list of RGB uint8 images of any sizes -> probabilities)
    on labelled image files; empty or None labels are skipped. Returns {attribute: {accuracy, n, on}}."""
    from PIL import Image

    for attribute, column in labels.items():
        if attribute not in classes:
            raise FairdiffError(f"labels for unknown attribute {attribute!r}; this detector has {list(classes)}")
        if len(column) != len(paths):
            raise FairdiffError(f"labels for {attribute!r}: {len(column)} labels for {len(paths)} images")
        for i, label in enumerate(column):
            if label and label not in classes[attribute]:
                raise FairdiffError(
                    f"labels for {attribute!r}, image {str(paths[i])!r}: {label!r} is not one of {classes[attribute]}"
                )
    keep = [i for i in range(len(paths)) if any(labels[a][i] for a in labels)]
    correct = {a: 0 for a in labels}
    counted = {a: 0 for a in labels}
    for start in range(0, len(keep), batch_size):
        rows = keep[start : start + batch_size]
        images = []
        for i in rows:
            try:
                with Image.open(paths[i]) as im:
                    images.append(np.asarray(im.convert("RGB")))
            except OSError as exc:
                raise FairdiffError(f"labelled image {str(paths[i])!r} could not be read: {exc}") from None
        probs = predict_list(images)
        for attribute, column in labels.items():
            for j, i in enumerate(rows):
                if column[i]:
                    counted[attribute] += 1
                    correct[attribute] += int(classes[attribute][int(probs[attribute][j].argmax())] == column[i])
    return {a: {"accuracy": correct[a] / counted[a], "n": counted[a], "on": on} for a in labels if counted[a]}


class LabelledAccuracy:
    """Mixin for detectors with `_predict_list(images of any size)`, `classes`, `accuracy` and `batch_size`."""

    def measure_accuracy(self, paths: Sequence[str | Path], labels: Mapping[str, Sequence[str | None]]) -> dict:
        """Top-1 accuracy per attribute on labelled image files ({attribute: [class or "" per path]}); stored in
        `accuracy` (reports print it beside every number that uses this detector) and returned."""
        measured = labelled_accuracy(
            self._predict_list, self.classes, paths, labels, f"{len(paths)} labelled images", self.batch_size
        )
        self.accuracy.update(measured)
        return measured

    def measure_accuracy_csv(self, csv_path: str | Path) -> dict:
        """`measure_accuracy` on a CSV of `path` plus one column per attribute (see `read_labelled_csv`)."""
        paths, labels = read_labelled_csv(csv_path, list(self.classes))
        measured = labelled_accuracy(self._predict_list, self.classes, paths, labels, str(csv_path), self.batch_size)
        self.accuracy.update(measured)
        return measured
