"""Stages: the cached, resumable steps a study is made of.

A study is an ordered list of `Stage`s. Each stage has a name, a JSON config (everything its result depends on)
and a `run(ctx)` that returns a long table (a DataFrame with at least `measure` and `value` columns). Its
fingerprint is sha256 of (name, `STAGE_FORMAT`, config, the fingerprints of the stages it `needs`), so a
changed config, or a changed upstream stage, reruns it. On disk, `OUT/<stage>/` holds:

- `stage.json`: the fingerprint and config, written when the stage starts;
- `table.parquet`, `table.csv`: the result, written atomically when it ends;
- `done.json`: the done marker (fingerprint, rows, seconds), written last.

Running a stage whose `done.json` has the same fingerprint reads its table and runs nothing. A stage killed
midway (a `stage.json` of the same fingerprint, no `done.json`) runs again in the same folder, so its audits
(`run_audit(..., resume=True)`), training checkpoints and files it already wrote are reused. A stage whose
`stage.json` or `done.json` has another fingerprint is emptied first and run from scratch.

The reusable pieces are an arm set (`ArmSet`: arm specs; a path written `@stage/rel` is the file `rel` of an
earlier stage's folder), a prompt set (`PromptSet`: suites, images per prompt, seed) and a measure (a function
from the audit's `RunSummary` to long-table rows); `audit_stage` makes one stage of the three, drawn through
`fairdiff.audit.runner.run_audit`. A study refuses to run under `torchrun` (WORLD_SIZE > 1): see docs/study.md,
Sharding.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from fairdiff.errors import FairdiffError
from fairdiff.files import write_atomic, write_json_atomic

logger = logging.getLogger(__name__)

STAGE_FORMAT = "fairdiff-stage-1"
STARTED, DONE, TABLE, MARKER = "stage.json", "done.json", "table", "study.json"
REQUIRED_COLUMNS = ("measure", "value")

Progress = Callable[[int, int], None]


@dataclass
class StageContext:
    """What a running stage sees: its folder, the tables and folders of earlier stages, a progress callback and
    a resource cache shared by the stages of one study run (a loaded pipeline, a detector)."""

    dir: Path
    out: Path
    tables: dict[str, pd.DataFrame]
    progress: Progress
    resources: dict[str, Any] = field(default_factory=dict)

    def stage_dir(self, name: str) -> Path:
        return self.out / name

    def resource(self, key: str, make: Callable[[], Any]) -> Any:
        """The shared object `key`, made once per study run."""
        if key not in self.resources:
            self.resources[key] = make()
        return self.resources[key]

    def resolve(self, value: Any) -> Any:
        """`@stage/rel` strings (anywhere in lists and dicts) -> the path of `rel` in that stage's folder."""
        if isinstance(value, str) and value.startswith("@"):
            return str(self.out / value[1:])
        if isinstance(value, list):
            return [self.resolve(v) for v in value]
        if isinstance(value, dict):
            return {k: self.resolve(v) for k, v in value.items()}
        return value


@dataclass(frozen=True)
class Stage:
    """One step of a study (see the module docstring). `run(ctx)` returns the stage's long table."""

    name: str
    config: dict[str, Any]
    run: Callable[[StageContext], pd.DataFrame]
    needs: tuple[str, ...] = ()

    def fingerprint(self, upstream: dict[str, str]) -> str:
        missing = [n for n in self.needs if n not in upstream]
        if missing:
            raise FairdiffError(f"stage {self.name} needs stage {missing[0]!r}, which does not run before it")
        keep = {
            "format": STAGE_FORMAT,
            "stage": self.name,
            "config": self.config,
            "needs": {n: upstream[n] for n in self.needs},
        }
        try:
            text = json.dumps(keep, sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise FairdiffError(f"stage {self.name}: its config is not plain JSON ({exc})") from None
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class StageResult:
    name: str
    table: pd.DataFrame
    fingerprint: str
    skipped: bool  # True: read from a finished stage with the same fingerprint
    seconds: float  # of the run that made the table (the recorded one when skipped)


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _check_table(name: str, table: Any) -> pd.DataFrame:
    if not isinstance(table, pd.DataFrame):
        raise FairdiffError(f"stage {name} returned {type(table).__name__}, not a table")
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise FairdiffError(f"stage {name}: its table has no {missing[0]!r} column")
    return table.reset_index(drop=True)


def write_table(table: pd.DataFrame, folder: Path, stem: str = TABLE) -> list[Path]:
    """`stem.parquet` and `stem.csv` in `folder`, each written atomically."""
    from fairdiff.report.export import _parquet_bytes

    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{stem}.parquet", folder / f"{stem}.csv"]
    write_atomic(paths[0], _parquet_bytes(table))
    write_atomic(paths[1], table.to_csv(index=False).encode())
    return paths


def _empty(folder: Path) -> None:
    for child in folder.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def prepare_study_dir(out: Path) -> Path:
    """Check `out` is a new or empty folder, or one a study wrote (it holds `MARKER`), and mark it."""
    from fairdiff.checks import check_output_dir

    check_output_dir(out)
    if out.exists() and not out.is_dir():
        raise FairdiffError(f"--out {out}: a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and _read_json(out / MARKER) is None:
        raise FairdiffError(f"--out {out}: holds files that no study wrote (no {MARKER}); give a new or empty folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        if not (out / MARKER).is_file():
            write_json_atomic(out / MARKER, {"format": STAGE_FORMAT})
    except OSError as exc:
        raise FairdiffError(f"--out {out}: cannot write the study folder ({exc.strerror or exc})") from None
    return out


def run_stages(
    stages: Sequence[Stage],
    out: Path,
    progress_for: Callable[[Stage], Progress] | None = None,
    resources: dict[str, Any] | None = None,
) -> dict[str, StageResult]:
    """Run (or reuse) each stage in order into `out/<stage>/`; returns every stage's result by name.
    `progress_for(stage)` gives the progress callback of a stage (one bar per stage in the CLI)."""
    names = [s.name for s in stages]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise FairdiffError(f"stage names must be unique, {dup[0]!r} appears twice")
    from fairdiff.audit.runner import dist_rank

    if dist_rank()[1] > 1:
        raise FairdiffError(
            "fairdiff study does not run under torchrun/accelerate (WORLD_SIZE > 1): its training stages would run "
            "on every rank; see docs/study.md, Sharding"
        )
    out = prepare_study_dir(Path(out))
    fingerprints: dict[str, str] = {}
    results: dict[str, StageResult] = {}
    resources = {} if resources is None else resources
    for stage in stages:
        fp = stage.fingerprint(fingerprints)
        fingerprints[stage.name] = fp
        folder = out / stage.name
        progress = progress_for(stage) if progress_for else (lambda done, total: None)
        done = _read_json(folder / DONE)
        table_file = folder / f"{TABLE}.parquet"
        if done is not None and done.get("fingerprint") == fp and table_file.is_file():
            table = pd.read_parquet(table_file)
            progress(1, 1)
            results[stage.name] = StageResult(stage.name, table, fp, True, float(done.get("seconds", 0.0)))
            logger.info("stage %s: done with this config, reused", stage.name)
            continue
        started = _read_json(folder / STARTED)
        if folder.is_dir() and any(folder.iterdir()) and (started is None or started.get("fingerprint") != fp):
            logger.info("stage %s: its config changed, running it again from scratch", stage.name)
            _empty(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / DONE).unlink(missing_ok=True)
        write_json_atomic(folder / STARTED, {"fingerprint": fp, "stage": stage.name, "config": stage.config})
        ctx = StageContext(
            dir=folder, out=out, tables={n: r.table for n, r in results.items()}, progress=progress, resources=resources
        )
        t0 = time.perf_counter()
        table = _check_table(stage.name, stage.run(ctx))
        seconds = time.perf_counter() - t0
        write_table(table, folder)
        write_json_atomic(folder / DONE, {"fingerprint": fp, "rows": len(table), "seconds": round(seconds, 3)})
        results[stage.name] = StageResult(stage.name, table, fp, False, seconds)
    return results


# -- the reusable pieces: an arm set, a prompt set, a measure ------------------------------------------------


@dataclass(frozen=True)
class ArmSet:
    """Arm specs as `fairdiff audit --arms` takes them; `@stage/rel` paths point into earlier stages."""

    arms: tuple[dict[str, Any], ...]

    def config(self) -> list[dict[str, Any]]:
        return [dict(a) for a in self.arms]


@dataclass(frozen=True)
class PromptSet:
    """Suites and how many of their prompts and images an audit draws (None: the suite's own)."""

    suites: tuple[str, ...]
    images_per_prompt: int | None = None
    max_prompts: int | None = None
    seed: int = 0

    def config(self) -> dict[str, Any]:
        return {
            "suites": list(self.suites),
            "images_per_prompt": self.images_per_prompt,
            "max_prompts": self.max_prompts,
            "seed": self.seed,
        }


Measure = Callable[[Any, StageContext], pd.DataFrame]  # (RunSummary, ctx) -> long table


def audit_stage(
    name: str,
    arms: ArmSet,
    prompts: PromptSet,
    measure: Measure,
    *,
    steps: int,
    batch_size: int,
    model: str = "tiny",
    needs: tuple[str, ...] = (),
    extra: dict[str, Any] | None = None,
    n_boot: int = 1000,
) -> Stage:
    """A stage that audits `arms` on `prompts` into `OUT/<name>/audit` (resumable) and measures the summary.
    `extra` joins the fingerprint (e.g. a measure's own settings)."""
    config = {
        "kind": "audit",
        "model": model,
        "arms": arms.config(),
        "prompts": prompts.config(),
        "steps": steps,
        "batch_size": batch_size,
        "n_boot": n_boot,
        "measure": getattr(measure, "__name__", str(measure)),
        **(extra or {}),
    }

    def run(ctx: StageContext) -> pd.DataFrame:
        from fairdiff.audit.results import load_run
        from fairdiff.audit.runner import AuditConfig, run_audit
        from fairdiff.audit.summary import summarize
        from fairdiff.report.export import export_run

        cfg = AuditConfig(
            model=model,
            suites=list(prompts.suites),
            arms=ctx.resolve(arms.config()),
            images_per_prompt=prompts.images_per_prompt,
            max_prompts=prompts.max_prompts,
            seed=prompts.seed,
            steps=steps,
            batch_size=batch_size,
        )
        audit_dir = ctx.dir / "audit"
        from fairdiff.models.loading import load_pipeline

        loaded = detector = None
        if model == "tiny":  # one pipeline and one world detector for every stage of a study run
            from fairdiff.detect import build_detector

            loaded = ctx.resource("pipeline", lambda: load_pipeline(model))
            detector = ctx.resource("world-detector", lambda: build_detector("world"))
        run_audit(cfg, audit_dir, resume=True, on_progress=ctx.progress, loaded=loaded, detector=detector)
        summary = summarize(load_run(audit_dir), n_boot=n_boot, seed=prompts.seed)
        export_run(summary, audit_dir)
        return measure(summary, ctx)

    return Stage(name, config, run, needs)
