"""The studies built from the stages: `lora-vs-w`, `stack` and `claims` (both, one report).

`run_claims` runs (or reuses) lora-vs-w's stages and the stack stage in one folder, judges every claim of
`fairdiff.study.claims` from their tables and writes `OUT/claims/report.html` with the numbers beside it.
"""

from __future__ import annotations

from fairdiff.study.claims import CLAIMS, Claim, evaluate


def stack_stage(stack_cfg=None, quick: bool = False):
    """The `stack` stage: `fairdiff.study.stack.run_stack` into OUT/stack (it resumes its own cells). None when
    the stack study is not importable."""
    try:
        from fairdiff.study import stack as stack_study
    except ImportError:
        return None
    from dataclasses import asdict, is_dataclass

    from fairdiff.study.stages import Stage

    cfg = stack_cfg or (stack_study.StackConfig.quick() if quick else stack_study.StackConfig())
    config = cfg.model_dump(mode="json") if hasattr(cfg, "model_dump") else asdict(cfg) if is_dataclass(cfg) else {}

    def run(ctx):
        def on_progress(done, total, label=None):
            ctx.progress(done, total)

        return stack_study.run_stack(cfg, ctx.dir, on_progress=on_progress)

    return Stage("stack", {"kind": "stack", **config}, run)


def run_claims(
    out,
    lvw_cfg,
    *,
    include_stack: bool = True,
    quick: bool = False,
    progress_for=None,
    command: str = "",
    claims: tuple[Claim, ...] = CLAIMS,
):
    """Run (or reuse) every stage of lora-vs-w and, with `include_stack`, the stack study, into `out`; judge every
    claim; write `out/claims/report.html` and the numbers. Returns (report path, verdicts, stage results)."""
    from pathlib import Path

    from fairdiff.study.lora_vs_w import lora_vs_w_stages, study_table
    from fairdiff.study.report import write_claims_report
    from fairdiff.study.stages import run_stages

    out = Path(out)
    stages = lora_vs_w_stages(lvw_cfg)
    extra = stack_stage(quick=quick) if include_stack else None
    if extra is not None:
        stages.append(extra)
    results = run_stages(stages, out, progress_for)
    lvw = study_table({k: r for k, r in results.items() if k != "stack"})
    tables = {"lora-vs-w": lvw}
    if "stack" in results:
        tables["stack"] = results["stack"].table.assign(study="stack", stage="stack")
    verdicts = evaluate(tables, claims)
    info = [
        {
            "name": r.name,
            "fingerprint": r.fingerprint,
            "rows": len(r.table),
            "seconds": f"{r.seconds:.1f}",
            "status": "reused" if r.skipped else "ran",
        }
        for r in results.values()
    ]
    if include_stack and extra is None:
        info.append({"name": "stack", "fingerprint": "-", "rows": 0, "seconds": "-", "status": "not available"})
    path = write_claims_report(verdicts, tables, out / "claims", command=command, stages=info)
    return path, verdicts, results
