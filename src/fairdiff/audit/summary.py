"""Metrics of an audit run: per suite and arm, with bootstrap CIs, checked against the world's truth.

- `kind: shares` suites -> a MetricFrame over the measured attributes (per prompt, suite means over prompts)
- `kind: outcome` suites -> an OutcomeFrame: the outcome's rate per marked group and the parity between groups
- `kind: group` suites -> a SceneFrame: per arm (and per arm and prompt) the people drawn as planned (adherence,
  Wilson 95% CI over people) and the mean image mix error (TV between planned and detected shares of the image's
  people, percentile bootstrap CI over images; audit/arms_scene.py); group images are not portraits, so validity
  and the Fréchet distance are computed on the other suites' images only
- world suites also get a truth table: every estimate beside the share the world config injected, and
  whether its CI covers it
- quality per arm: validity (every detector head >= 0.9 confident, Wilson CI), the detector's measured accuracy,
  and what a mitigation must not lose (audit/quality.py): the Fréchet distance to fresh renders of the detected
  attributes (world runs), explicit-prompt accuracy (suites whose prompts state attributes: a `stated` table)
  and the negative-prompt response (a `-term` outcome suite beside its plain twin: a `negative_response` table)
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from fairdiff.audit import quality as arm_quality
from fairdiff.audit.results import RunResults
from fairdiff.errors import FairdiffError
from fairdiff.metrics import SHARE_METRICS, MetricFrame, OutcomeFrame
from fairdiff.metrics.bootstrap import BootstrapConfig, percentile_ci, stream, wilson_ci
from fairdiff.metrics.frame import plain, records

SCENE_CONFIDENCE = 0.95


@dataclass
class SceneFrame:
    """Group-scene outcomes of one suite: `overall` per arm, `by_prompt` per arm and prompt (see the module
    docstring; `mix_error_<attribute>` columns: the mean per judged attribute)."""

    overall: pd.DataFrame
    by_prompt: pd.DataFrame
    bootstrap: BootstrapConfig

    def to_dict(self) -> dict:
        return {
            "overall": records(self.overall),
            "by_prompt": records(self.by_prompt),
            "bootstrap": vars(self.bootstrap),
        }


def _scene_rows(data: pd.DataFrame, keys: list[str], boot: BootstrapConfig, suite: str) -> pd.DataFrame:
    attributes = [c for c in data.columns if c.startswith("mix_error_")]
    out = []
    for key, d in data.groupby(keys, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        k, n = int(d["people_as_planned"].sum()), int(d["people_judged"].sum())
        low, high = wilson_ci(np.array(k), np.array(n), boot.confidence) if n else (np.nan, np.nan)
        errors = d["mix_error"].dropna().to_numpy(dtype=float)
        e_low = e_high = np.nan
        if len(errors):
            rng = stream(boot.seed, "scene", suite, *map(str, key))
            draws = errors[rng.integers(0, len(errors), size=(boot.n_boot, len(errors)))].mean(axis=1)
            e_low, e_high = percentile_ci(draws, boot.confidence)
        row = dict(zip(keys, key, strict=True))
        row |= {
            "planned_by": "/".join(sorted(set(d["planned_by"].astype(str)))),
            "images": len(d),
            "people_judged": n,
            "people_as_planned": k,
            "adherence": k / n if n else np.nan,
            "adherence_ci_low": float(low),
            "adherence_ci_high": float(high),
            "mix_error": float(errors.mean()) if len(errors) else np.nan,
            "mix_error_ci_low": float(e_low),
            "mix_error_ci_high": float(e_high),
        }
        row |= {a: float(d[a].mean()) for a in attributes}
        out.append(row)
    return pd.DataFrame(out)


def scene_frame(data: pd.DataFrame, suite: str, n_boot: int = 1000, seed: int = 0) -> SceneFrame:
    """The SceneFrame of one group suite's rows (`results.rows` with the scene columns)."""
    boot = BootstrapConfig(n_boot, SCENE_CONFIDENCE, seed)
    boot.check()
    if "adherence" not in data.columns:
        raise FairdiffError(f"suite {suite}: its images have no scene records (audited by an older fairdiff?)")
    return SceneFrame(_scene_rows(data, ["arm"], boot, suite), _scene_rows(data, ["arm", "prompt"], boot, suite), boot)


@dataclass
class SuiteSummary:
    name: str
    kind: str
    frame: MetricFrame | OutcomeFrame | SceneFrame
    truth: pd.DataFrame | None = None  # estimate vs injected truth (world suites)
    by_prompt_outcome: pd.DataFrame | None = None  # outcome suites: rate per prompt (and its truth)
    spec: dict = field(default_factory=dict)
    truth_metrics: dict | None = None  # world suites: the headline metrics of the injected truth itself
    stated: pd.DataFrame | None = None  # shares suites stating attributes: accuracy per arm, attribute, value
    negative_response: pd.DataFrame | None = None  # `-term` outcome suites: rate without - with, per arm, group

    def tables(self) -> dict[str, pd.DataFrame | None]:
        """Every metrics table of the suite by name (None: not measured), as run dirs and `report --csv` write them."""
        f = self.frame
        if self.kind == "group":
            return {"overall": f.overall, "by_prompt": f.by_prompt}
        if self.kind == "shares":
            out = {"overall": f.overall, "by_prompt": f.by_prompt, "shares": f.shares}
            return out | ({"stated": self.stated} if self.stated is not None else {})
        out = {
            "overall": f.overall,
            "by_group": f.by_group,
            "ratio": f.ratio(),
            "difference": f.difference(),
            "by_prompt": self.by_prompt_outcome,
        }
        return out | ({"negative_response": self.negative_response} if self.negative_response is not None else {})


@dataclass
class RunSummary:
    results: RunResults
    suites: dict[str, SuiteSummary]
    quality: pd.DataFrame  # per arm: images, validity (CI), FD (CI, floor), explicit accuracy, negative response

    def to_dict(self) -> dict:
        """Strict-JSON-ready (see `plain`): a world truth rate of 0 makes its parity ratio inf, written "inf"."""
        out = {"quality": records(self.quality), "suites": {}}
        for name, s in self.suites.items():
            d = {"kind": s.kind, **s.frame.to_dict()}
            if s.truth is not None:
                d["truth"] = records(s.truth)
            if s.by_prompt_outcome is not None:
                d["by_prompt_outcome"] = records(s.by_prompt_outcome)
            if s.truth_metrics is not None:
                d["truth_metrics"] = s.truth_metrics
            if s.stated is not None:
                d["stated"] = records(s.stated)
            if s.negative_response is not None:
                d["negative_response"] = records(s.negative_response)
            out["suites"][name] = d
        return plain(out)


def summarize(results: RunResults, n_boot: int = 1000, seed: int = 0, frechet: bool = True) -> RunSummary:
    """Metrics of every suite and the quality per arm. `frechet=False` skips the Fréchet distance (it reads every
    stored PNG; NaN columns then)."""
    rows = results.rows
    if rows.empty:
        raise FairdiffError(f"{results.run_dir}: the audit has no images yet (resume it or pick another run dir)")
    truth_all = results.record.get("truth", {})
    suites: dict[str, SuiteSummary] = {}
    for name, spec in results.suites.items():
        data = rows[rows["suite"] == name]
        if data.empty:
            continue
        truth = truth_all.get(name, {})
        if spec["kind"] == "group":
            suites[name] = SuiteSummary(name, "group", scene_frame(data, name, n_boot, seed), spec=spec)
        elif spec["kind"] == "shares":
            suites[name] = _shares_summary(name, spec, data, results.classes, truth, n_boot, seed)
        else:
            suites[name] = _outcome_summary(name, spec, data, results.classes, truth, n_boot, seed)
    for name, s in suites.items():
        plain = arm_quality.paired_suite(name, results.suites) if s.kind == "outcome" else None
        if plain in suites:
            s.negative_response = arm_quality.negative_response(rows, results.suites, name, plain, n_boot, seed)
    return RunSummary(results, suites, _quality(results, suites, n_boot, seed, frechet))


def _quality(results: RunResults, suites: dict[str, SuiteSummary], n_boot: int, seed: int, frechet: bool):
    """One row per arm (in the run's arm order) with every quality number (see the module docstring)."""
    groups = {name for name, spec in results.suites.items() if spec.get("kind") == "group"}
    portraits = results.rows[~results.rows["suite"].isin(groups)]  # group scenes are not portraits
    valid = portraits.groupby("arm", sort=False).agg(valid_images=("valid", "sum"), portraits=("valid", "size"))
    quality = (
        results.rows.groupby("arm", sort=False)
        .agg(images=("image", "size"))
        .join(valid, on="arm")
        .reset_index()
        .assign(arm=lambda d: pd.Categorical(d["arm"], results.arms, ordered=True))
        .sort_values("arm")
        .assign(arm=lambda d: d["arm"].astype(str))
        .reset_index(drop=True)
    )
    k, n = quality["valid_images"].fillna(0).to_numpy(), quality["portraits"].fillna(0).to_numpy()
    low, high = wilson_ci(k, np.maximum(n, 1), 0.95)
    quality.insert(2, "validity", np.where(n > 0, k / np.maximum(n, 1), np.nan))
    quality.insert(3, "validity_ci_low", np.where(n > 0, low, np.nan))
    quality.insert(4, "validity_ci_high", np.where(n > 0, high, np.nan))
    quality = quality.drop(columns=["valid_images", "portraits"])
    arms = quality["arm"].tolist()
    if frechet and not portraits.empty:
        on = results if not groups else replace(results, rows=portraits)
        fd = arm_quality.frechet_by_arm(on, n_boot=min(n_boot, arm_quality.FD_N_BOOT), seed=seed)
    else:
        fd = pd.DataFrame({"arm": arms, **{c: np.nan for c in arm_quality.FD_COLUMNS}})
    stated = [s.stated for s in suites.values() if s.stated is not None]
    responses = [s.negative_response for s in suites.values() if s.negative_response is not None]
    extra = arm_quality.arm_columns(arms, stated, responses)
    return quality.merge(fd, on="arm", how="left").merge(extra, on="arm", how="left")


def _shares_summary(name, spec, data, classes, truth, n_boot, seed) -> SuiteSummary:
    measure = [a for a in spec["measure"] if a in classes]
    frame = MetricFrame(
        data=data,
        classes={a: classes[a] for a in measure},
        target=spec.get("target") or None,
        intersections=[tuple(t) for t in spec.get("intersections", [])],
        group_by="prompt",
        n_boot=n_boot,
        seed=seed,
    )
    table = None
    if truth:
        shares = frame.shares
        want = [
            truth.get(p, {}).get(a, {}).get(c, np.nan) for p, a, c in shares[["prompt", "attribute", "class"]].values
        ]
        table = shares.assign(truth=want).dropna(subset=["truth"]).reset_index(drop=True)
        table["error"] = table["share"] - table["truth"]
        table["covered"] = (table["ci_low"] <= table["truth"]) & (table["truth"] <= table["ci_high"])
    truth_metrics = None
    if truth:
        # the suite mean of each metric on the truth itself: what a perfect model and detector would report
        prompts = list(dict.fromkeys(data["prompt"]))
        truth_metrics = {}
        for attribute, q in frame.targets.items():
            p = [
                [truth[pid][attribute][c] for c in frame.classes[attribute]]
                for pid in prompts
                if attribute in truth[pid]
            ]
            if p:
                p = np.asarray(p)  # (P, K)
                truth_metrics[attribute] = {m: float(f(p, q[None, :]).mean()) for m, f in SHARE_METRICS.items()}
                # what an exact model and detector would report from this many images per prompt: |p - q|-type
                # metrics read high on few images, so this is the fair reference for the estimate
                n = int(round(data.groupby(["arm", "prompt"]).size().median()))
                rng = np.random.default_rng(seed)
                draws = rng.multinomial(n, p / p.sum(1, keepdims=True), size=(2000, len(p))) / n  # (D, P, K)
                truth_metrics[attribute].update(
                    {f"{m}_at_n": float(f(draws, q[None, None, :]).mean()) for m, f in SHARE_METRICS.items()}
                )
                truth_metrics[attribute]["n"] = n
    stated = arm_quality.stated_accuracy(data, spec, classes)
    return SuiteSummary(name, "shares", frame, table, spec=spec, truth_metrics=truth_metrics, stated=stated)


def _outcome_summary(name, spec, data, classes, truth, n_boot, seed) -> SuiteSummary:
    groups = spec["groups"]
    outcome = spec["outcome"]
    # the groups are the ones the prompt marks ("a medium-skinned woman"), not the detector's labels
    data = data.drop(columns=[g for g in groups if g in data.columns]).rename(columns={f"field_{g}": g for g in groups})
    group_specs: list = list(groups) + ([tuple(groups)] if len(groups) > 1 else [])
    group_classes = {g: [v for v in classes.get(g, [])] or None for g in groups}
    frame = OutcomeFrame(
        data=data,
        outcome=outcome,
        groups=group_specs,
        classes={g: c for g, c in group_classes.items() if c and set(data[g]) <= set(c)} or None,
        n_boot=n_boot,
        seed=seed,
    )
    # per prompt: the outcome rate, the prompt's context and (world) its truth
    per = data.groupby(["arm", "prompt"], sort=False)[outcome].agg(["size", "mean"]).reset_index()
    per = per.rename(columns={"size": "n", "mean": "rate"})
    contexts = {p["id"]: p.get("context", "") for p in spec["prompts"]}
    per["context"] = per["prompt"].map(contexts)
    if truth:
        per["truth"] = per["prompt"].map(lambda p: truth.get(p, {}).get("attire", {}).get("revealing", np.nan))
    table = None
    if truth:
        # pooled truth per group = the mean of its prompts' truths (every prompt has the same number of images)
        present = set(data["prompt"])
        prompt_groups = {p["id"]: p["fields"] for p in spec["prompts"] if p["id"] in present}
        by_group = frame.by_group.copy()
        want = []
        for attribute, group in by_group[["attribute", "group"]].values:
            parts = attribute.split("×")
            values = group.split("×") if len(parts) > 1 else [group]
            ids = [
                pid
                for pid, f in prompt_groups.items()
                if all(f.get(a) == v for a, v in zip(parts, values, strict=True))
            ]
            t = [truth[i]["attire"]["revealing"] for i in ids if i in truth]
            want.append(float(np.mean(t)) if t else np.nan)
        table = by_group.assign(truth=want)
        table = table[table["n"] > 0].reset_index(drop=True)  # groups with no images have no estimate
        table["error"] = table["rate"] - table["truth"]
        table["covered"] = (table["ci_low"] <= table["truth"]) & (table["truth"] <= table["ci_high"])
    truth_metrics = None
    if table is not None and not table.empty:
        truth_metrics = {}
        first = table[table["arm"] == table["arm"].iloc[0]]
        for attribute, rows in first.groupby("attribute", sort=False):
            t = rows.set_index("group")["truth"].dropna()
            if len(t) >= 2:
                truth_metrics[attribute] = {
                    "ratio": float(t.max() / t.min()) if t.min() > 0 else float("inf"),
                    "difference": float(t.max() - t.min()),
                    "max_group": str(t.idxmax()),
                    "min_group": str(t.idxmin()),
                    "max_rate": float(t.max()),
                    "min_rate": float(t.min()),
                }
    return SuiteSummary(name, "outcome", frame, table, per, spec=spec, truth_metrics=truth_metrics)
