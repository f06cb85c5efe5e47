"""Benchmark: how long `fairdiff --help` takes, and which heavy libraries it imports (target <= 0.3 s, none of
torch, pandas, diffusers).

Each variant runs `python -c "<import the app, print --help>"` in a fresh process N times; the table gives the
minimum and median wall time (the minimum is the least disturbed by other work on the machine). With `--baseline
REV`, the same is measured side by side, in the same rounds, on another commit checked out into a temporary git
worktree (e.g. the commit before the CLI became one package). Writes bench/results/cli_startup.md.

    python bench/cli_startup.py [--runs 15] [--baseline 1fe3044]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fairdiff.provenance import machine_line

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "pandas", "numpy", "diffusers", "transformers", "pyarrow")
PROBE = (
    "import sys, io, contextlib\n"
    "from fairdiff.cli import app\n"
    "buf = io.StringIO()\n"
    "with contextlib.redirect_stdout(buf):\n"
    "    try:\n"
    "        app(['--help'], prog_name='fairdiff')\n"
    "    except SystemExit:\n"
    "        pass\n"
    "assert 'Usage' in buf.getvalue(), buf.getvalue()[:200]\n"
    "print(','.join(m for m in {heavy!r} if m in sys.modules))\n"
)


def run_once(src: Path) -> tuple[float, str]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(heavy=HEAVY)], env=env, check=True, capture_output=True, text=True
    )
    return time.perf_counter() - t0, out.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--baseline", default=None, help="Also measure this git revision (a temporary worktree).")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "cli_startup.md")
    args = parser.parse_args()

    variants = {"this checkout": ROOT / "src"}
    tmp = None
    if args.baseline:
        tmp = Path(tempfile.mkdtemp(prefix="fairdiff-baseline-"))
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tmp), args.baseline], check=True)
        variants[f"baseline {args.baseline}"] = tmp / "src"
    try:
        times: dict[str, list[float]] = {k: [] for k in variants}
        heavy: dict[str, str] = {}
        for src in variants.values():
            run_once(src)  # warm the bytecode cache
        for _ in range(args.runs):  # interleaved rounds: the same disturbances hit every variant
            for name, src in variants.items():
                t, loaded = run_once(src)
                times[name].append(t)
                heavy[name] = loaded
    finally:
        if tmp is not None:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tmp)], check=False)

    command = "python bench/cli_startup.py " + " ".join(sys.argv[1:])
    lines = [
        "# `fairdiff --help` start-up time",
        "",
        f"command: `{command.strip()}`",
        f"machine: {machine_line()}",
        f"python {sys.version.split()[0]}; {args.runs} fresh processes per variant, interleaved",
        "",
        "| variant | min s | median s | heavy libraries imported |",
        "|---|---:|---:|---|",
    ]
    for name, ts in times.items():
        lines.append(f"| {name} | {min(ts):.3f} | {statistics.median(ts):.3f} | {heavy[name] or 'none'} |")
    ours = times["this checkout"]
    verdict = "met" if statistics.median(ours) <= 0.3 and not heavy["this checkout"] else "NOT met"
    lines += ["", f"target <= 0.3 s (median) importing none of {', '.join(HEAVY)}: {verdict}", ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
