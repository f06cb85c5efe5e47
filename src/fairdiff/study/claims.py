"""The claims of the LoRA-versus-W argument, each with the rule that judges it: the one place they are stated.

Every claim is a list of `Part`s: a quantity (rows of a study's long table picked by `select`), a rule from
`fairdiff.study.verdicts` with its margin, and how the picked rows combine (`each`). Parts combine by the
claim's `combine` ("all" or "any", see verdicts.py). Margins (stated once, here):

- `BIAS_MARGIN` 0.05 of normalized bias: two changes "do as well" when their bias differs by at most this
- `FD_MARGIN` 2.0 Fréchet-distance units: a quality difference that matters (the distance's floor at these
  image counts is 4 to 6 and arms of the mitigation table differ by up to 20)
- `OVERHEAD_MARGIN` 1.05: "costs nothing" allows 5% in the time per image
- `EXPLICIT_FLOOR` 0.95: "can still be drawn by asking" means >= 95% of stated attributes come out as stated
- `STACK_ACCURACY_FLOOR` 0.95: C8's "the asked attribute no longer comes out" is explicit accuracy below it

`evaluate(claims, tables)` turns the tables into `ClaimVerdict`s; nothing is typed in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from fairdiff.study.verdicts import (
    COMBINE,
    NOT_MEASURED,
    Above,
    AtLeast,
    AtMost,
    Below,
    BitExact,
    Rule,
)

BIAS_MARGIN = 0.05
FD_MARGIN = 2.0
OVERHEAD_MARGIN = 1.05
EXPLICIT_FLOOR = 0.95
STACK_ACCURACY_FLOOR = 0.95

MITIGATIONS = ("lora-shipped", "lora-study", "finetune-study", "edit-uce", "guidance", "quota", "negative")
#: names in the stack study's table (fairdiff.study.stack): the weight method "naive sum at full strength", the
#: activation-offset method, and the measures the stack claims read
STACK_NAIVE, STACK_ACTIVATION, STACK_BASE = "naive_sum", "activation", "base"
STACK_FD, STACK_EXPLICIT, STACK_RESTORED = "fd", "explicit_accuracy", "restored_bit_exact"


@dataclass(frozen=True)
class Part:
    """One tested quantity: rows of table `source` whose columns equal `select` (a tuple: any of the values)."""

    quantity: str
    select: dict[str, Any]
    rule: Rule
    each: str = "all"
    source: str = "lora-vs-w"

    def describe(self) -> str:
        many = {"all": "for every row picked", "any": "for at least one row picked"}[self.each]
        return f"{self.rule.describe(self.quantity)} ({many})"


@dataclass(frozen=True)
class Claim:
    id: str
    statement: str
    parts: tuple[Part, ...]
    combine: str = "all"
    context: tuple[dict[str, Any], ...] = ()  # further rows shown beside the evidence (selects, as in Part)
    source: str = "lora-vs-w"
    chart: str | None = None  # a chart kind of study/report.py
    note: str = ""

    def rule_text(self) -> str:
        joined = {"all": "every part must hold", "any": "one part suffices"}[self.combine]
        return f"{joined}: " + "; ".join(f"({i + 1}) {p.describe()}" for i, p in enumerate(self.parts))


_HELD = {"suite": "pooled"}
_GS = ("gender", "skin")

CLAIMS: tuple[Claim, ...] = (
    Claim(
        "C1",
        "A merged LoRA costs nothing at inference (W = W0 + BA is computed once).",
        (
            Part(
                "time per image with the LoRA merged / base",
                {"measure": "overhead_ratio", "arm": "lora-merged"},
                AtMost(OVERHEAD_MARGIN),
            ),
        ),
        context=({"measure": ("overhead_ratio", "seconds_per_image", "merged_vs_unmerged_max_pixel_diff")},),
        chart="overhead",
    ),
    Claim(
        "C2",
        "Remove the LoRA and the bias resurfaces, because W0 is untouched.",
        (
            Part(
                "bias with the shipped LoRA - base bias (held-out prompts, gender and skin)",
                {"measure": "bias_difference", "arm": "lora-shipped", "reference": "base", "attribute": _GS, **_HELD},
                Below(0.0),
                each="any",
            ),
            Part(
                "after removing the LoRA, base images and UNet weights",
                {"measure": "restored_bit_exact", "arm": "lora-removed"},
                BitExact(),
            ),
        ),
        context=({"measure": "restored_bit_exact"}, {"measure": "bias", "arm": ("base", "lora-shipped")}),
        chart="bias",
        note="If the LoRA lowers bias and its removal gives back W0 bit for bit, the base's bias comes back exactly.",
    ),
    Claim(
        "C3",
        'A "less biased W" (fine-tuned or edited) is the better fix where it is possible.',
        (
            Part(
                "bias of the fine-tuned W - bias of the LoRA, same recipe and steps (held-out, gender and skin)",
                {
                    "measure": "bias_difference",
                    "arm": "finetune-study",
                    "reference": "lora-study",
                    "attribute": _GS,
                    **_HELD,
                },
                Below(0.0),
            ),
            Part(
                "Fréchet distance of the fine-tuned W - of the LoRA",
                {"measure": "fd_difference", "arm": "finetune-study", "reference": "lora-study"},
                AtMost(FD_MARGIN),
            ),
        ),
        context=(
            {"measure": ("train_seconds", "train_seconds_per_step", "trainable_parameters")},
            {"measure": "bias", "arm": ("base", "lora-study", "finetune-study", "edit-uce", "lora-shipped")},
            {"measure": "fd", "stage": "audit-heldout"},
        ),
        chart="bias",
        note="The controlled pair: the same balanced-data recipe, data, steps and seed, as a LoRA and on W.",
    ),
    Claim(
        "C4",
        "Biased tokens do not matter as long as every variant can still be drawn by asking for it explicitly and "
        "negative prompts still work: extractability is what counts.",
        (
            Part(
                "base: share of stated attributes drawn as stated",
                {"measure": "explicit_accuracy", "arm": "base"},
                AtLeast(EXPLICIT_FLOOR),
            ),
            Part(
                "base: revealing rate without - with '-revealing'",
                {"measure": "negative_response", "arm": "base"},
                Above(0.0),
            ),
            Part(
                "every mitigation: share of stated attributes drawn as stated",
                {"measure": "explicit_accuracy", "arm": MITIGATIONS},
                AtLeast(EXPLICIT_FLOOR),
            ),
            Part(
                "every mitigation: revealing rate without - with '-revealing'",
                {"measure": "negative_response", "arm": MITIGATIONS},
                Above(0.0),
            ),
        ),
        context=(
            {"measure": ("explicit_accuracy_min", "revealing_gap")},
            {"measure": "bias", "arm": "base", "stage": "audit-heldout"},
        ),
        chart="explicit",
        note="The verdict is on what can be measured: whether every variant is drawn on request and the negative "
        "prompt works, on base and under every mitigation. The neutral-prompt bias of base is shown beside it: "
        "extractability does not change what a neutral prompt draws.",
    ),
    Claim(
        "C5a",
        "One change per bias found composes: a gender-only change plus a skin-only change, stacked, does as well as "
        "one joint change (the two-adapter case of C5).",
        (
            Part(
                "bias of the stacked gender + skin LoRAs - of the joint LoRA (world-train, gender and skin)",
                {
                    "measure": "bias_difference",
                    "arm": "compose-stacked",
                    "reference": "compose-joint",
                    "attribute": _GS,
                    "suite": "world-train",
                },
                AtMost(BIAS_MARGIN),
            ),
            Part(
                "Fréchet distance stacked - joint",
                {"measure": "fd_difference", "arm": "compose-stacked", "reference": "compose-joint"},
                AtMost(FD_MARGIN),
            ),
        ),
        context=(
            {"measure": "bias", "arm": ("base", "compose-gender", "compose-skin", "compose-stacked", "compose-joint")},
        ),  # fmt: skip
        chart="compose",
    ),
    Claim(
        "C7",
        "Making one token carry more variants needs a larger model, or costs quality.",
        (
            Part(
                "bias of the rank-1 LoRA of the edit - of the full edit (world-train, gender and skin)",
                {"measure": "bias_difference", "arm": "edit-rank1", "reference": "edit-full", "attribute": _GS},
                Above(0.0),
                each="any",
            ),
            Part(
                "Fréchet distance of the full edit - of base",
                {"measure": "fd_difference", "arm": "edit-full", "reference": "base"},
                Above(FD_MARGIN),
            ),
        ),
        combine="any",
        context=(
            {"measure": ("lora_relative_error", "parameters")},
            {"measure": "bias", "stage": "audit-concepts", "attribute": _GS},
            {"measure": "fd", "stage": "audit-concepts"},
        ),
        chart="rank",
        note="Capacity is the LoRA rank of one closed-form change (the full edit has rank up to its edited token "
        "rows); quality is the Fréchet distance.",
    ),
    Claim(
        "C5",
        "One LoRA per bias found, and soon hundreds are stacked and quality has degraded irrecoverably.",
        (
            Part(
                "Fréchet distance of the naive sum at the largest k - of base",
                {"measure": "fd_growth", "method": STACK_NAIVE},
                Above(FD_MARGIN),
                source="stack",
            ),
            Part(
                "after removing all k adapters of the largest stack, base images and weights",
                {"measure": "irrecoverable"},
                BitExact(holds="some method does not give them back bit for bit"),
                source="stack",
            ),
        ),
        source="stack",
        chart="stack",
    ),
    Claim(
        "C6",
        "Changing layer outputs (activation steering) degrades the model sooner than changing weights.",
        (
            Part(
                "Fréchet distance of the activation offsets - of the same changes as summed weights, at each k",
                {"measure": "fd_activation_minus_weights"},
                Above(0.0),
                source="stack",
            ),
        ),
        source="stack",
        chart="stack",
    ),
    Claim(
        "C8",
        "Stacking strong adapters beats the model into submission: the asked attribute no longer comes out.",
        (
            Part(
                "explicit-prompt accuracy of the naive sum at the largest k",
                {"measure": STACK_EXPLICIT, "method": STACK_NAIVE, "k": "max"},
                Below(STACK_ACCURACY_FLOOR),
                source="stack",
            ),
        ),
        source="stack",
        chart="stack",
    ),
)


@dataclass
class PartVerdict:
    part: Part
    rows: pd.DataFrame
    verdicts: list[str]
    verdict: str


@dataclass
class ClaimVerdict:
    claim: Claim
    parts: list[PartVerdict]
    verdict: str
    evidence: pd.DataFrame = field(default_factory=pd.DataFrame)  # the rows of every part and the context


def select(df: pd.DataFrame, spec: dict[str, Any]) -> pd.DataFrame:
    """Rows of `df` whose columns equal `spec` (a tuple: any of its values; `k: "max"`: the largest k)."""
    if df is None or df.empty:
        return pd.DataFrame()
    mask = np.ones(len(df), dtype=bool)
    for col, want in spec.items():
        if col not in df.columns:
            return df.iloc[0:0]
        if col == "k" and want == "max":
            continue
        values = df[col].astype(str)
        wanted = [str(w) for w in (want if isinstance(want, tuple | list) else (want,))]
        mask &= values.isin(wanted).to_numpy()
    out = df[mask]
    if spec.get("k") == "max" and not out.empty:
        k = pd.to_numeric(out["k"], errors="coerce")
        out = out[k == k.max()]
    return out


def stack_derived(stack: pd.DataFrame | None) -> pd.DataFrame:
    """The stack claims' quantities from the stack table (method, k, measure, value, ci_low, ci_high, n; the base
    model's rows have method "base", k 0):

    - `fd_growth` per method: FD at the method's largest k - FD of base (else of the method's smallest k), with the
      conservative interval [low_a - high_b, high_a - low_b]
    - `irrecoverable`: 1 if some method's `restored_bit_exact` is 0 at the largest k, else 0
    - `fd_activation_minus_weights` per k >= 2: FD(activation offsets) - FD(naive sum), the same interval"""
    if stack is None or stack.empty or not {"method", "k", "measure"} <= set(stack.columns):
        return pd.DataFrame()
    s = stack.assign(k=pd.to_numeric(stack["k"], errors="coerce"))
    rows = []
    fd = s[s["measure"] == STACK_FD]
    base = fd[fd["method"] == STACK_BASE]
    for method, d in fd[fd["method"] != STACK_BASE].groupby("method", sort=False):
        d = d.sort_values("k")
        ref = base.iloc[0] if len(base) else (d.iloc[0] if len(d) >= 2 else None)
        if ref is not None:
            a = d.iloc[-1]
            name = "base" if len(base) else f"k={int(ref['k'])}"
            rows.append(_diff("fd_growth", a, ref, method=method, k=int(a["k"]), reference=name))
    restored = s[(s["measure"] == STACK_RESTORED) & (s["method"] != STACK_BASE)]
    if not restored.empty:
        top = restored[restored["k"] == restored["k"].max()]
        bad = float((top["value"] < 1).any())
        rows.append({"measure": "irrecoverable", "value": bad, "ci_low": bad, "ci_high": bad, "k": top["k"].max()})
    act, naive = fd[fd["method"] == STACK_ACTIVATION], fd[fd["method"] == STACK_NAIVE].set_index("k")
    for _, a in act.iterrows():
        if a["k"] in naive.index and a["k"] >= 2:
            rows.append(_diff("fd_activation_minus_weights", a, naive.loc[a["k"]], k=int(a["k"]), method="activation"))
    return pd.DataFrame(rows)


def _diff(measure: str, a, b, **about) -> dict:
    return {
        "measure": measure,
        "value": a["value"] - b["value"],
        "ci_low": a["ci_low"] - b["ci_high"],
        "ci_high": a["ci_high"] - b["ci_low"],
        **about,
    }


def evaluate(tables: dict[str, pd.DataFrame], claims: tuple[Claim, ...] = CLAIMS) -> list[ClaimVerdict]:
    """Each claim's verdict from the study tables ({"lora-vs-w": ..., "stack": ...}; a missing one: not measured)."""
    tables = dict(tables)
    if "stack" in tables:
        derived = stack_derived(tables["stack"])
        tables["stack"] = (
            pd.concat([tables["stack"], derived], ignore_index=True) if not derived.empty else tables["stack"]
        )
    out = []
    for claim in claims:
        parts, shown = [], []
        for part in claim.parts:
            picked = select(tables.get(part.source), part.select)
            verdicts = [part.rule.judge(r["ci_low"], r["ci_high"]) for _, r in picked.iterrows()]
            verdict = COMBINE[part.each](verdicts) if verdicts else NOT_MEASURED
            parts.append(PartVerdict(part, picked, verdicts, verdict))
            shown.append(picked.assign(part=len(parts), verdict=verdicts) if len(picked) else picked)
        for spec in claim.context:
            extra = select(tables.get(claim.source), spec)
            shown.append(extra.assign(part="", verdict=""))
        evidence = (
            pd.concat([s for s in shown if len(s)], ignore_index=True) if any(len(s) for s in shown) else pd.DataFrame()
        )
        verdict = COMBINE[claim.combine]([p.verdict for p in parts])
        out.append(ClaimVerdict(claim, parts, verdict, evidence))
    return out


def verdict_table(verdicts: list[ClaimVerdict]) -> pd.DataFrame:
    """One row per claim part: claim, statement, part, quantity, rule, rows, part verdict, claim verdict."""
    rows = []
    for v in verdicts:
        for i, p in enumerate(v.parts):
            rows.append(
                {
                    "claim": v.claim.id,
                    "statement": v.claim.statement,
                    "part": i + 1,
                    "quantity": p.part.quantity,
                    "rule": p.part.describe(),
                    "rows": len(p.rows),
                    "part_verdict": p.verdict,
                    "claim_verdict": v.verdict,
                }
            )
    return pd.DataFrame(rows)


def rules_markdown(claims: tuple[Claim, ...] = CLAIMS) -> str:
    """Every claim with its parts' rules as a markdown list (docs/study.md carries this text verbatim)."""
    lines = []
    for c in claims:
        combine = {"all": "every part must hold", "any": "one part suffices"}[c.combine]
        lines.append(f"- **{c.id}** ({c.source}; {combine}): {c.statement}")
        for i, p in enumerate(c.parts):
            lines.append(f"  {i + 1}. {p.describe()}")
    return "\n".join(lines) + "\n"
