"""Read an audit run dir back: per-image rows as a DataFrame, metrics per suite and arm, exports.

Labels are the detector's argmax per attribute (the metrics count images assigned to each class); each row
keeps the full probabilities too. Metrics are recomputed from the stored probabilities on every read, so a
report of a resumed or merged run always matches its store.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from fairdiff.audit.runner import CONFIG_NAME
from fairdiff.audit.store import SCHEMA_VERSION, read_rows
from fairdiff.errors import FairdiffError
from fairdiff.metrics.quality import valid_images

logger = logging.getLogger(__name__)


@dataclass
class RunResults:
    run_dir: Path
    record: dict  # audit.json
    rows: pd.DataFrame  # one row per image
    suites: dict[str, dict] = field(default_factory=dict)  # suite name -> its spec in the record

    @property
    def arms(self) -> list[str]:
        return [a["name"] for a in self.record["arms"]]

    @property
    def classes(self) -> dict[str, list[str]]:
        return self.record["detector"]["classes"]


def load_run(run_dir: str | Path) -> RunResults:
    """Rows and record of an audit run dir (all rank shards unioned)."""
    run_dir = Path(run_dir)
    config = run_dir / CONFIG_NAME
    if not config.is_file():
        raise FairdiffError(f"{run_dir}: not an audit run dir (no {CONFIG_NAME})")
    try:
        record = json.loads(config.read_text())
    except json.JSONDecodeError as exc:
        raise FairdiffError(f"{config}: unreadable ({exc})") from None
    if record.get("store_schema") != SCHEMA_VERSION:
        raise FairdiffError(
            f"{run_dir} was written by fairdiff {record.get('versions', {}).get('fairdiff', '?')} (store schema "
            f"{record.get('store_schema')}); this fairdiff reads schema {SCHEMA_VERSION}"
        )
    suites = {s["name"]: s for s in record["suites"]}
    rows = rows_frame(read_rows(run_dir), record, suites)
    return RunResults(run_dir, record, rows, suites)


def rows_frame(rows, record: dict, suites: dict[str, dict]) -> pd.DataFrame:
    """One row per image: ids, prompt fields, label + confidence per attribute, outcomes, probabilities."""
    classes = record["detector"]["classes"]
    outcomes = record["detector"].get("outcomes", {"revealing": "attire=revealing"})
    fields = {(s, p["id"]): p["fields"] for s, spec in suites.items() for p in spec["prompts"]}
    out = []
    for r in rows:
        d = {
            "suite": r.suite,
            "arm": r.arm,
            "prompt": r.prompt_id,
            "text": r.prompt,
            "negative": r.negative,
            "seed": r.seed,
            "image": r.image,
            "sha256": r.sha256,
        }
        for k, v in fields.get((r.suite, r.prompt_id), {}).items():
            d[f"field_{k}"] = v
        for attr, probs in r.probs.items():
            p = np.asarray(probs)
            d[attr] = classes[attr][int(p.argmax())]
            d[f"conf_{attr}"] = float(p.max())
            for cls, x in zip(classes[attr], probs, strict=True):
                d[f"prob_{attr}_{cls}"] = x
        d["valid"] = bool(valid_images({a: np.asarray(p)[None] for a, p in r.probs.items()})[0])
        for name, rule in outcomes.items():
            attr, cls = rule.split("=")
            if attr in d:
                d[name] = d[attr] == cls
        out.append(d)
    return pd.DataFrame(out)
