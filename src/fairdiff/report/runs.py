"""The run dirs a report shows: each read back and summarized once, labelled, with its detector's accuracy.

With one run dir an arm is labelled by its name; with several, `run/arm` (run = the dir's name, made unique),
so that arms of different runs never merge in a table or a chart.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fairdiff.audit.results import RunResults, load_run
from fairdiff.audit.summary import RunSummary, SuiteSummary, summarize
from fairdiff.errors import FairdiffError
from fairdiff.report.charts import number

logger = logging.getLogger(__name__)

INTERSECTION = "×"  # how metrics name a product attribute: "gender×skin"


@dataclass
class ReportRun:
    label: str  # unique among the report's runs
    run_dir: Path
    results: RunResults
    summary: RunSummary
    labelled: bool  # several runs: arms are shown as run/arm

    @property
    def record(self) -> dict:
        return self.results.record

    def arm_label(self, arm: str) -> str:
        return f"{self.label}/{arm}" if self.labelled else arm

    def arm_labels(self) -> list[str]:
        return [self.arm_label(a) for a in self.results.arms]

    def suite(self, name: str) -> SuiteSummary | None:
        return self.summary.suites.get(name)


def run_labels(run_dirs: Sequence[Path]) -> list[str]:
    """Each dir's name; where names repeat, the parent's name too, then a counter."""
    names = [p.resolve().name or str(p) for p in run_dirs]
    if len(set(names)) < len(names):
        names = [f"{p.resolve().parent.name}/{p.resolve().name}" for p in run_dirs]
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return out


def load_runs(run_dirs: Sequence[str | Path], n_boot: int = 1000, seed: int = 0) -> list[ReportRun]:
    """Read and summarize every run dir (bootstrap CIs with `n_boot` draws, seeded by `seed`)."""
    if isinstance(run_dirs, (str, Path)):
        run_dirs = [run_dirs]
    paths = [Path(p) for p in run_dirs]
    if not paths:
        raise FairdiffError("a report needs at least one audit run dir")
    if n_boot < 1:
        raise FairdiffError(f"`n_boot` must be >= 1, got {n_boot}")
    runs = []
    labels = run_labels(paths)
    for path, label in zip(paths, labels, strict=True):
        results = load_run(path)
        logger.info("summarizing %s (%d images)", path, len(results.rows))
        summary = summarize(results, n_boot=n_boot, seed=seed)
        runs.append(ReportRun(label, path, results, summary, labelled=len(paths) > 1))
    return runs


def summarized_run(run_dir: str | Path, summary: RunSummary) -> list[ReportRun]:
    """A run dir summarized already (as `fairdiff demo` has, to print its headline) as a report's one run: the
    report then shows the same bootstrap CIs as the printout, without drawing them a second time."""
    run_dir = Path(run_dir)
    return [ReportRun(run_labels([run_dir])[0], run_dir, summary.results, summary, labelled=False)]


def outcome_attribute(record: dict, outcome: str) -> str | None:
    """The detector attribute an outcome is read from ("revealing" -> "attire", by the record's outcome rule)."""
    rules = record.get("detector", {}).get("outcomes") or {"revealing": "attire=revealing"}
    rule = rules.get(outcome)
    return rule.split("=")[0] if rule else None


def detector_accuracy(record: dict, attributes: Sequence[str] | None = None) -> str:
    """One line: `world detector accuracy on world renders: gender 1.000 (n=2000), …`, or `… not measured`.

    `attributes` limits the line to those the numbers beside it depend on (a product attribute "gender×skin"
    stands for its parts)."""
    detector = record.get("detector", {})
    name = detector.get("name", "detector")
    accuracy = detector.get("accuracy") or {}
    wanted = list(attributes) if attributes is not None else list(detector.get("classes", {}))
    wanted = list(dict.fromkeys(part for a in wanted for part in a.split(INTERSECTION)))
    measured = [a for a in wanted if a in accuracy]
    if not measured:
        return f"{name} detector accuracy: not measured"
    by_where: dict[str, list[str]] = {}
    for a in measured:
        acc = accuracy[a]
        by_where.setdefault(str(acc.get("on", "labelled images")), []).append(
            f"{a} {number(acc.get('accuracy'), 3)} (n={acc.get('n', '?')})"
        )
    missing = [f"{a} not measured" for a in wanted if a not in accuracy]
    groups = [f"on {where}: {', '.join(parts)}" for where, parts in by_where.items()]
    return f"{name} detector accuracy " + "; ".join(groups) + (f"; {', '.join(missing)}" if missing else "")


def accuracy_cell(record: dict, attribute: str) -> str:
    """Short accuracy for a table cell: `1.000`, `0.950 / 1.000` for a product attribute, or `not measured`."""
    accuracy = record.get("detector", {}).get("accuracy") or {}
    parts = attribute.split(INTERSECTION)
    if not any(p in accuracy for p in parts):
        return "not measured"
    return " / ".join(number(accuracy[p].get("accuracy"), 3) if p in accuracy else "not measured" for p in parts)
