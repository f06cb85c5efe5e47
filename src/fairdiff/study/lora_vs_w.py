"""`fairdiff study lora-vs-w`: every mitigation arm on the same prompts and seeds, and what each costs.

Stages (each cached in OUT/<stage>/, see `fairdiff.study.stages`):

1. `train-lora`, `train-finetune`: the same recipe (`--method balanced`, `world-train`, `train_steps` x
   `train_batch`, the same seed) as a LoRA (rank 8 on to_q/k/v/out of the cross-attention) and as a full
   fine-tune of the same modules: the controlled LoRA-vs-W pair. Their cards give the training cost.
2. `edits`: three UCE edits of the six training occupations fitted here (gender only, skin only, gender and
   skin jointly; `edit_iterations` re-estimation rounds of `edit_images` images per concept), each exported as a
   rank-`compose_rank` LoRA; and the shipped edit (`edit-uce`) exported at every rank of `ranks` with its
   reconstruction error ||ΔW - BA||_F / ||ΔW||_F.
3. `audit-heldout`: base, the shipped LoRA, the study's LoRA and fine-tune, the shipped edit, guidance, quota and
   the negative prompt on `world-heldout` + `world-heldout-paraphrases` (no prompt of them is trained on):
   bias per attribute with CIs, paired differences, validity and Fréchet distance.
4. `audit-keep`: the same arms on `world-explicit`, `world-avatars`, `world-avatars-negative`: explicit-prompt
   accuracy, revealing rates per group, negative-prompt response.
5. `audit-concepts`: on `world-train` (the concepts the edits name): base, the full shipped edit, its LoRA
   exports at each rank (C7), and the composability arms: the gender-only LoRA, the skin-only LoRA, both
   stacked (two slots at weight 1), and the joint one.
6. `overhead`: inference time of base, the LoRA unmerged and merged, and the installed edit, interleaved in one
   run, and reversibility bit for bit (`fairdiff.study.overhead`).

The long table of every stage has the columns of `fairdiff.study.measures`; `claims.py` reads its verdicts off
it. Sizes: `LoraVsWConfig()` (default, aimed at <= 30 minutes of the 60-minute claims budget on 2 cores) and
`LoraVsWConfig.quick()` (every stage at tiny size, for tests).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Any

import pandas as pd
from pydantic import Field

from fairdiff.config import ConfigModel, Expected, load_config_file
from fairdiff.study import measures
from fairdiff.study.measures import row
from fairdiff.study.stages import ArmSet, PromptSet, Stage, StageContext, audit_stage

logger = logging.getLogger(__name__)

STUDY = "lora-vs-w"
MIX = ["gender=uniform", "skin=uniform"]
HELDOUT_SUITES = ("world-heldout", "world-heldout-paraphrases")
KEEP_SUITES = ("world-explicit", "world-avatars", "world-avatars-negative")
CONCEPT_SUITES = ("world-train",)
ATTRIBUTES = ("gender", "skin", "gender×skin")

Count = Annotated[int, Expected("a whole number >= 1"), Field(ge=1)]
MaybeCount = Annotated[int | None, Expected("a whole number >= 1 or null"), Field(ge=1)]


class LoraVsWConfig(ConfigModel):
    """Sizes of the lora-vs-w study (a YAML file with any of these keys, `--config FILE`)."""

    seed: Annotated[int, Expected("a whole number >= 0"), Field(ge=0)] = 0
    steps: Count = 25  # denoising steps of every audit (the audits' default)
    batch_size: Count = 64
    n_boot: Annotated[int, Expected("a whole number in [100, 10000]"), Field(ge=100, le=10000)] = 1000
    heldout_images: Count = 20  # per prompt and arm on the held-out suites (14 prompts)
    heldout_max_prompts: MaybeCount = None
    keep_images: Count = 3  # per prompt and arm on world-explicit (32 prompts) and the avatar suites (24 each)
    keep_max_prompts: MaybeCount = None
    concept_images: Count = 20  # per prompt and arm on world-train (6 prompts)
    concept_max_prompts: MaybeCount = None
    train_steps: Count = 100  # the same budget for the LoRA and the fine-tune
    train_batch: Count = 32
    edit_images: Count = 8  # re-estimation images per concept and round (as the shipped edit)
    edit_concepts: Annotated[int, Expected("a whole number in [1, 6]"), Field(ge=1, le=6)] = 6  # training occupations
    edit_iterations: Annotated[int, Expected("a whole number >= 0"), Field(ge=0)] = 2
    edit_steps: Count = 10
    ranks: Annotated[list[int], Expected("a list of ranks >= 1"), Field(min_length=1)] = [1, 2, 4, 8, 16]
    compose_rank: Count = 16
    overhead_rounds: Annotated[int, Expected("a whole number >= 2"), Field(ge=2)] = 5
    overhead_images: Count = 16

    @classmethod
    def quick(cls) -> LoraVsWConfig:
        """Every stage at tiny size (tests): 2 denoising steps, 1-2 prompts, 1-2 images, 2 training steps."""
        return cls(
            steps=2,
            batch_size=32,
            n_boot=200,
            heldout_images=2,
            heldout_max_prompts=1,
            keep_images=1,
            keep_max_prompts=2,
            concept_images=2,
            concept_max_prompts=1,
            train_steps=2,
            train_batch=2,
            edit_images=1,
            edit_concepts=2,
            edit_iterations=1,
            edit_steps=2,
            ranks=[1, 2],
            compose_rank=2,
            overhead_rounds=2,
            overhead_images=2,
        )


def load_config(path: str | Path | None, quick: bool) -> LoraVsWConfig:
    """The study's sizes: a YAML file's keys over the default (or, with `quick`, over the quick) sizes."""
    base = LoraVsWConfig.quick() if quick else LoraVsWConfig()
    if path is None:
        return base
    from fairdiff.errors import FairdiffError

    data = load_config_file(path, dict, "study config")[1]
    if not isinstance(data, dict):
        raise FairdiffError(f"study config {path}: expected a mapping of sizes, got {type(data).__name__}")
    from fairdiff.config import validate

    return validate(LoraVsWConfig, {**base.model_dump(), **data}, "study config", str(path))


# -- arms ----------------------------------------------------------------------------------------------------


def mitigation_arms() -> list[dict]:
    """Every arm of the mitigation issue, with the shipped files and the study's own LoRA and fine-tune."""
    from fairdiff.world.shipped import EDIT_UCE, LORA_BALANCED

    return [
        {"kind": "base", "name": "base"},
        {"kind": "adapter", "name": "lora-shipped", "adapters": [str(LORA_BALANCED)]},
        {"kind": "adapter", "name": "lora-study", "adapters": ["@train-lora/adapter"]},
        {"kind": "finetune", "name": "finetune-study", "pipeline": "@train-finetune/pipeline"},
        {"kind": "edit", "name": "edit-uce", "edit": str(EDIT_UCE)},
        {"kind": "guidance", "name": "guidance", "mix": MIX},
        {"kind": "quota", "name": "quota", "mix": MIX},
        {"kind": "negative", "name": "negative", "negative": "revealing clothes"},
    ]


def concept_arms(cfg: LoraVsWConfig) -> list[dict]:
    from fairdiff.world.shipped import EDIT_UCE

    arms = [{"kind": "base", "name": "base"}, {"kind": "edit", "name": "edit-full", "edit": str(EDIT_UCE)}]
    arms += [{"kind": "adapter", "name": f"edit-rank{r}", "adapters": [f"@edits/edit-uce-lora{r}"]} for r in cfg.ranks]
    arms += [
        {"kind": "adapter", "name": "compose-gender", "adapters": ["@edits/gender-lora"]},
        {"kind": "adapter", "name": "compose-skin", "adapters": ["@edits/skin-lora"]},
        {"kind": "adapter", "name": "compose-stacked", "adapters": ["@edits/gender-lora", "@edits/skin-lora"]},
        {"kind": "adapter", "name": "compose-joint", "adapters": ["@edits/joint-lora"]},
    ]
    return arms


#: (arm, reference) pairs whose paired bias difference the held-out audit reports (arm - reference)
HELDOUT_PAIRS = (
    ("lora-shipped", "base"),
    ("lora-study", "base"),
    ("finetune-study", "base"),
    ("edit-uce", "base"),
    ("guidance", "base"),
    ("quota", "base"),
    ("finetune-study", "lora-study"),
)


def concept_pairs(cfg: LoraVsWConfig) -> list[tuple[str, str]]:
    pairs = [("edit-full", "base")] + [(f"edit-rank{r}", "edit-full") for r in cfg.ranks]
    pairs += [(f"edit-rank{r}", "base") for r in cfg.ranks]
    return pairs + [("compose-stacked", "compose-joint"), ("compose-joint", "base"), ("compose-stacked", "base")]


# -- measures ------------------------------------------------------------------------------------------------


def _pipeline(ctx: StageContext):
    from fairdiff.models.loading import load_pipeline

    return ctx.resource("pipeline", lambda: load_pipeline("tiny"))


def _measure_heldout(cfg: LoraVsWConfig):
    def heldout(summary, ctx: StageContext) -> pd.DataFrame:
        rows = measures.bias_rows(summary)
        rows += measures.difference_rows(summary, HELDOUT_PAIRS, ATTRIBUTES, HELDOUT_SUITES, cfg.n_boot, cfg.seed)
        rows += measures.quality_rows(summary)
        rows += measures.fd_difference_rows(summary, [(a, "base") for a, _ in HELDOUT_PAIRS[:6]])
        rows += measures.fd_difference_rows(summary, [("finetune-study", "lora-study")])
        return measures.table(rows)

    return heldout


def _measure_keep(summary, ctx: StageContext) -> pd.DataFrame:
    rows = measures.quality_rows(summary) + measures.revealing_rows(summary)
    return measures.table([{**r, "suite": r["suite"] or "keep"} for r in rows])


def _measure_concepts(cfg: LoraVsWConfig):
    def concepts(summary, ctx: StageContext) -> pd.DataFrame:
        pairs = concept_pairs(cfg)
        rows = measures.bias_rows(summary)
        rows += measures.difference_rows(summary, pairs, ATTRIBUTES, CONCEPT_SUITES, cfg.n_boot, cfg.seed)
        rows += measures.quality_rows(summary)
        rows += measures.fd_difference_rows(summary, pairs)
        return measures.table(rows)

    return concepts


# -- training and edits --------------------------------------------------------------------------------------


def _train_stage(cfg: LoraVsWConfig, mode: str) -> Stage:
    config = {
        "kind": "train",
        "mode": mode,
        "method": "balanced",
        "steps": cfg.train_steps,
        "batch_size": cfg.train_batch,
        "seed": cfg.seed,
        "suite": "world-train",
    }

    def run(ctx: StageContext) -> pd.DataFrame:
        from fairdiff.audit.suites import load_suite
        from fairdiff.mitigate.training import MitigateConfig, TrainPrompt, default_mix, train_mitigation

        suite = load_suite("world-train")
        prompts = [TrainPrompt(p.text, dict(p.fields), p.context) for p in suite.prompts]
        mcfg = MitigateConfig(
            method="balanced",
            mode=mode,
            steps=cfg.train_steps,
            batch_size=cfg.train_batch,
            seed=cfg.seed,
            mix=default_mix(),
            checkpoint_every=max(1, min(50, cfg.train_steps)),
        )
        ctx.progress(0, cfg.train_steps)
        train_mitigation(
            mcfg,
            "tiny",
            ctx.dir,
            on_step=lambda step, stats: ctx.progress(step, cfg.train_steps),
            loaded=_pipeline(ctx),
            prompts=prompts,
        )
        card = json.loads((ctx.dir / "card.json").read_text())
        arm = "lora-study" if mode == "lora" else "finetune-study"
        return measures.table(
            [
                row("train_seconds", card["seconds"], n=card["steps"], arm=arm),
                row("train_seconds_per_step", card["seconds_per_step"], n=card["steps"], arm=arm),
                row("trainable_parameters", card["trainable_parameters"], arm=arm),
                row("train_images_seen", card["data"]["images_seen"], arm=arm),
            ]
        )

    return Stage(f"train-{mode}", config, run)


def _edits_stage(cfg: LoraVsWConfig) -> Stage:
    from fairdiff.files import file_sha256
    from fairdiff.world.shipped import EDIT_UCE

    config = {
        "kind": "edits",
        "shipped_edit_sha256": file_sha256(EDIT_UCE),
        "ranks": list(cfg.ranks),
        "compose_rank": cfg.compose_rank,
        "edit_images": cfg.edit_images,
        "edit_concepts": cfg.edit_concepts,
        "edit_iterations": cfg.edit_iterations,
        "edit_steps": cfg.edit_steps,
        "seed": cfg.seed,
    }

    def run(ctx: StageContext) -> pd.DataFrame:
        import time

        from fairdiff.adapters.formats import write_peft
        from fairdiff.detect import build_detector
        from fairdiff.mitigate import edit as uce
        from fairdiff.mitigate.edit_file import read_edit

        loaded = _pipeline(ctx)
        detector = ctx.resource("world-detector", lambda: build_detector("world"))
        concepts = [uce.Concept(c, uce.concept_word(c)) for c in uce.TRAIN_OCCUPATIONS[: cfg.edit_concepts]]
        out: list[dict] = []
        fits = {"gender": ["gender"], "skin": ["skin"], "joint": ["gender", "skin"]}
        total = len(fits) * (cfg.edit_iterations + 1) * len(concepts) * cfg.edit_images + len(cfg.ranks)
        done = [0]

        def advance(n: int) -> None:
            done[0] += n
            ctx.progress(done[0], total)

        for name, attributes in fits.items():
            target = ctx.dir / f"{name}-lora"
            classes = {a: list(detector.classes[a]) for a in attributes}
            mix = {a: {v: 1.0 / len(vals) for v in vals} for a, vals in classes.items()}
            t0 = time.perf_counter()
            problem = uce.build_problem(loaded, concepts, classes)
            opts = uce.DrawOptions(images=cfg.edit_images, seed=cfg.seed, steps=cfg.edit_steps)
            fit = uce.fit_edit(
                problem, loaded, detector, concepts, mix, opts, iterations=cfg.edit_iterations, on_images=advance
            )
            seconds = time.perf_counter() - t0
            adapter, _, error = uce.edit_as_lora(fit.deltas, cfg.compose_rank)
            write_peft(adapter, target, base_model=loaded.name)
            out.append(row("edit_fit_seconds", seconds, n=len(fit.history), arm=f"compose-{name}"))
            out.append(row("lora_relative_error", error, arm=f"compose-{name}", attribute=cfg.compose_rank))
        deltas = read_edit(EDIT_UCE).deltas
        for r in cfg.ranks:
            adapter, _, error = uce.edit_as_lora(deltas, r)
            write_peft(adapter, ctx.dir / f"edit-uce-lora{r}", base_model=loaded.name)
            out.append(row("lora_relative_error", error, arm=f"edit-rank{r}", attribute=r))
            out.append(row("parameters", adapter.num_parameters(), arm=f"edit-rank{r}"))
            advance(1)
        out.append(row("parameters", sum(d.numel() for d in deltas.values()), arm="edit-full"))
        meta = read_edit(EDIT_UCE).meta
        out.append(row("edit_rows", meta.get("rows", {}).get("edited", float("nan")), arm="edit-full"))
        return measures.table(out)

    return Stage("edits", config, run)


def _overhead_stage(cfg: LoraVsWConfig) -> Stage:
    from fairdiff.world.shipped import EDIT_UCE, LORA_BALANCED

    config = {
        "kind": "overhead",
        "rounds": cfg.overhead_rounds,
        "images": cfg.overhead_images,
        "steps": cfg.steps,
        "seed": cfg.seed,
        "n_boot": cfg.n_boot,
    }

    def run(ctx: StageContext) -> pd.DataFrame:
        from fairdiff.study.overhead import measure_overhead

        rows = measure_overhead(
            _pipeline(ctx),
            str(LORA_BALANCED),
            str(EDIT_UCE),
            rounds=cfg.overhead_rounds,
            images=cfg.overhead_images,
            steps=cfg.steps,
            seed=cfg.seed,
            n_boot=cfg.n_boot,
            on_round=ctx.progress,
        )
        return measures.table(rows)

    return Stage("overhead", config, run)


def lora_vs_w_stages(cfg: LoraVsWConfig) -> list[Stage]:
    """The study's stages in order (see the module docstring)."""
    audit = {"steps": cfg.steps, "batch_size": cfg.batch_size, "n_boot": cfg.n_boot}
    heldout = PromptSet(HELDOUT_SUITES, cfg.heldout_images, cfg.heldout_max_prompts, cfg.seed)
    keep = PromptSet(KEEP_SUITES, cfg.keep_images, cfg.keep_max_prompts, cfg.seed)
    concepts = PromptSet(CONCEPT_SUITES, cfg.concept_images, cfg.concept_max_prompts, cfg.seed)
    arms = ArmSet(tuple(mitigation_arms()))
    return [
        _train_stage(cfg, "lora"),
        _train_stage(cfg, "finetune"),
        _edits_stage(cfg),
        audit_stage(
            "audit-heldout", arms, heldout, _measure_heldout(cfg), needs=("train-lora", "train-finetune"), **audit
        ),
        audit_stage("audit-keep", arms, keep, _measure_keep, needs=("train-lora", "train-finetune"), **audit),
        audit_stage(
            "audit-concepts",
            ArmSet(tuple(concept_arms(cfg))),
            concepts,
            _measure_concepts(cfg),
            needs=("edits",),
            extra={"ranks": list(cfg.ranks)},
            **audit,
        ),
        _overhead_stage(cfg),
    ]


def study_table(results: dict[str, Any]) -> pd.DataFrame:
    """Every stage's long table in one, with `study` and `stage` columns first."""
    parts = [r.table.assign(study=STUDY, stage=name) for name, r in results.items() if not r.table.empty]
    df = pd.concat(parts, ignore_index=True) if parts else measures.table([])
    front = ["study", "stage"]
    return df[front + [c for c in df.columns if c not in front]]
