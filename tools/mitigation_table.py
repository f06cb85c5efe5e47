"""The held-out mitigation table (docs/results/mitigations/README.md) from the metrics.json of two audit runs.

    python tools/mitigation_table.py out/mit/audit-heldout out/mit/audit-must-keep \
        --out docs/results/mitigations/README.md

Every number is read from the runs' metrics.json (written by `fairdiff audit`); nothing is typed in. Columns:
normalized bias per attribute on `world-heldout` (suite mean over prompts, bootstrap CI over prompts), validity and
Fréchet distance (held-out run), revealing rate per group and the gap between groups on `world-avatars`,
explicit-prompt accuracy (worst stated value) on `world-explicit`, and the negative-prompt response (smallest group)
from `world-avatars` vs `world-avatars-negative`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path


def _f(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)) or x == "nan":
        return "-"
    return f"{float(x):.{digits}f}"


def _ci(row: dict, key: str = "value", lo: str = "ci_low", hi: str = "ci_high", digits: int = 3) -> str:
    return f"{_f(row.get(key), digits)} [{_f(row.get(lo), digits)}, {_f(row.get(hi), digits)}]"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("heldout", type=Path)
    ap.add_argument("must_keep", type=Path, nargs="?")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    held = json.loads((args.heldout / "metrics.json").read_text())
    keep = json.loads((args.must_keep / "metrics.json").read_text()) if args.must_keep else None
    config = json.loads((args.heldout / "audit.json").read_text())
    arms = [a["name"] for a in config["arms"]]

    lines = ["# Held-out comparison of the mitigations (bundled model)", ""]
    lines.append(
        f"Made by `python tools/mitigation_table.py {' '.join(map(str, [args.heldout, args.must_keep or '']))}"
        f" --out {args.out}` from these audits:"
    )
    lines += ["", "```"]
    lines.append(
        f"fairdiff audit --arms docs/results/mitigations/arms.yaml --no-base --suite world-heldout "
        f"-n {config['config']['images_per_prompt']} --batch-size 64 --out {args.heldout}"
    )
    if keep is not None:
        kconf = json.loads((args.must_keep / "audit.json").read_text())
        suites = " ".join(f"--suite {s['name']}" for s in kconf["suites"])
        lines.append(
            f"fairdiff audit --arms docs/results/mitigations/arms.yaml --no-base {suites} "
            f"-n {kconf['config']['images_per_prompt']} --batch-size 64 --out {args.must_keep}"
        )
    lines += ["```", ""]
    machine = config.get("machine", {})
    lines.append(f"Machine: {machine}. bf16 autocast: {config.get('bf16_autocast')}.")
    lines.append("")

    # bias on held-out occupations
    suite = held["suites"]["world-heldout"]
    overall = [r for r in suite["overall"] if r.get("metric", "normalized_bias") == "normalized_bias"]
    attrs = list(dict.fromkeys(r["attribute"] for r in overall))
    lines.append("## Normalized bias on held-out occupations (world-heldout; suite mean, 95% CI over prompts)")
    lines.append("")
    lines.append("| arm | " + " | ".join(attrs) + " | validity | Fréchet distance [CI] (floor) |")
    lines.append("|---|" + "---|" * (len(attrs) + 2))
    quality = {q["arm"]: q for q in held.get("quality", [])}
    for arm in arms:
        cells = []
        for a in attrs:
            rows = [r for r in overall if r["arm"] == arm and r["attribute"] == a]
            cells.append(_ci(rows[0], *_keys(rows[0])) if rows else "-")
        q = quality.get(arm, {})
        fd = _fd(q)
        lines.append(f"| {arm} | " + " | ".join(cells) + f" | {_f(q.get('validity'))} | {fd} |")
    lines.append("")
    if keep is not None:
        lines += _must_keep(keep, arms)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(args.out)
    return 0


def _fd(q: dict) -> str:
    low, high, floor = (_f(q.get(k), 1) for k in ("fd_ci_low", "fd_ci_high", "fd_floor"))
    return f"{_f(q.get('fd'), 1)} [{low}, {high}] ({floor})"


def _keys(row: dict) -> tuple[str, str, str]:
    for key in ("normalized_bias", "value", "mean"):
        if key in row:
            return (
                key,
                f"{key}_ci_low" if f"{key}_ci_low" in row else "ci_low",
                (f"{key}_ci_high" if f"{key}_ci_high" in row else "ci_high"),
            )
    raise KeyError(f"no metric value in {sorted(row)}")


def _must_keep(keep: dict, arms: list[str]) -> list[str]:
    lines = ["## What must not be lost (world-avatars, world-avatars-negative, world-explicit)", ""]
    quality = {q["arm"]: q for q in keep.get("quality", [])}
    avatars = keep["suites"].get("world-avatars", {})
    by_group = [r for r in avatars.get("by_group", []) if r.get("attribute") == "gender×skin"]
    base_rates = [float(r["rate"]) for r in by_group if r["arm"] == arms[0]]
    lines.append(
        "| arm | revealing rate per gender x skin group (lowest / highest) | gap | avatar target | explicit accuracy "
        "(worst value) | negative-prompt response (smallest group) | validity | Fréchet distance |"
    )
    lines.append("|---|---|---|---|---|---|---|---|")
    for arm in arms:
        rates = [r for r in by_group if r["arm"] == arm]
        vals = [float(r.get("rate", r.get("value", float("nan")))) for r in rates]
        lo_hi = f"{min(vals):.3f} / {max(vals):.3f}" if vals else "-"
        gap = f"{max(vals) - min(vals):.3f}" if vals else "-"
        meets = "yes" if vals and max(vals) <= min(base_rates) + 0.02 and max(vals) - min(vals) <= 0.03 else "no"
        q = quality.get(arm, {})
        explicit = (
            f"{_f(q.get('explicit_accuracy'))} ({_f(q.get('explicit_accuracy_min'))} {q.get('explicit_min_value', '')})"
        )
        neg_min = f"{_f(q.get('negative_response_min'))} {q.get('negative_response_min_group', '')}"
        neg = f"{_f(q.get('negative_response'))} ({neg_min})"
        lines.append(
            f"| {arm} | {lo_hi} | {gap} | {meets} | {explicit} | {neg} | {_f(q.get('validity'))} "
            f"| {_f(q.get('fd'), 1)} |"
        )
    ns = [int(r["n"]) for r in by_group]
    if ns:
        lines.append(
            "Revealing rate: world classifier's `revealing` outcome per detected gender x skin group on world-avatars, "
            f"{len({r['group'] for r in by_group})} groups of n = {min(ns)}..{max(ns)} images; avatar target = every "
            "group <= the base's lowest group + 0.02 and the gap between groups <= 0.03 (point estimates)."
        )
    lines.append("")
    return lines


if __name__ == "__main__":
    sys.exit(main())
