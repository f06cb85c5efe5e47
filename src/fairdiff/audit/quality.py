"""What a mitigation must not lose, per arm of an audit run: image quality, stated attributes, negative prompts.

- Fréchet distance (world runs): between the world classifier's penultimate features of an arm's images and of
  fresh renders of the attributes the detector sees on each image, one render per image with a seed fixed by
  the image's suite, prompt and seed (so the number is deterministic and two arms that draw the same people get
  the same reference). The reference copies who is drawn on purpose: rendered from the suite's truth mix, the
  distance would also grow when an arm changes the mix, which is what a fairness mitigation is meant to do;
  given who is drawn, it measures only how well they are drawn (faces between the skin bins, smudged hair or
  props). `fd_floor` is the FD between those renders and a second, independent set of the same attributes: what
  a model that draws exactly like the renderer would score at this many images (FD's small-sample bias, see
  `fairdiff.metrics.frechet`); compare arms with each other and with the floor, at equal image counts only.
- Explicit-prompt accuracy (`kind: shares` suites whose prompts state a measured attribute, e.g. world-explicit):
  the share of images the detector sees with the stated value, per arm, attribute and value (Wilson CIs).
- Negative-prompt response (an outcome suite whose prompts carry `-terms`, e.g. world-avatars-negative, audited
  beside the suite of the same prompts without them, e.g. world-avatars): the outcome rate without minus the
  rate with the negative prompt, per arm and group, images paired on prompt and seed (paired bootstrap CIs).
"""

from __future__ import annotations

import logging
import zlib

import numpy as np
import pandas as pd

from fairdiff.errors import FairdiffError
from fairdiff.metrics.bootstrap import percentile_ci, stream, wilson_ci
from fairdiff.metrics.frechet import FD_N_BOOT, frechet_distance, frechet_distance_ci
from fairdiff.models.prompts import split_negative_terms

logger = logging.getLogger(__name__)

CONFIDENCE = 0.95
FD_COLUMNS = ["fd", "fd_ci_low", "fd_ci_high", "fd_floor", "fd_images"]


def reference_seed(suite: str, prompt: str, seed: int, salt: str = "reference") -> int:
    """The render seed of the reference image of one generated image (fixed by its suite, prompt and seed)."""
    return zlib.crc32(f"{salt}/{suite}/{prompt}/{seed}".encode()) & 0x7FFFFFFF


def _read_pngs(run_dir, paths: list[str]) -> np.ndarray:
    from PIL import Image

    out = []
    for rel in paths:
        path = run_dir / rel
        try:
            with Image.open(path) as im:
                img = np.asarray(im.convert("RGB"))
        except (OSError, ValueError, SyntaxError) as exc:  # PIL's errors for missing, broken or truncated files
            raise FairdiffError(f"{path}: cannot read the stored image ({exc})") from None
        if img.shape != (32, 32, 3):
            raise FairdiffError(f"{path}: a {img.shape[1]}x{img.shape[0]} image; the world classifier reads 32x32")
        out.append(img)
    return np.stack(out)


def frechet_by_arm(results, n_boot: int = FD_N_BOOT, seed: int = 0) -> pd.DataFrame:
    """Per arm: FD to fresh renders of the detected attributes with its CI, the floor and the image count (see
    the module docstring). NaN where the run's detector is not the world classifier or images cannot be read."""
    arms = results.arms
    empty = pd.DataFrame({"arm": arms, **{c: np.nan for c in FD_COLUMNS}})
    detector = results.record.get("detector", {})
    from fairdiff.world.schema import ATTRIBUTES, Portrait

    rows = results.rows
    classes = detector.get("classes", {})
    if detector.get("name") != "world" or rows.empty or any(classes.get(a) != list(v) for a, v in ATTRIBUTES.items()):
        return empty  # not the world classifier's labels: no portraits to render
    from fairdiff.world.classifier import features, load_classifier
    from fairdiff.world.render import render_batch

    weights = detector.get("weights", "bundled")
    try:
        model = load_classifier(None if weights in (None, "bundled") else weights)
    except FairdiffError as exc:
        logger.warning("no Fréchet distance: %s", exc)
        return empty
    out = []
    for arm in arms:
        data = rows[rows["arm"] == arm].sort_values(["suite", "prompt", "seed"], kind="stable")
        if len(data) < 2:
            out.append({"arm": arm, **{c: np.nan for c in FD_COLUMNS}, "fd_images": len(data)})
            continue
        try:
            images = _read_pngs(results.run_dir, data["image"].tolist())
        except FairdiffError as exc:
            logger.warning("no Fréchet distance for arm %s: %s", arm, exc)
            out.append({"arm": arm, **{c: np.nan for c in FD_COLUMNS}})
            continue
        portraits = [Portrait(**{a: r[a] for a in ATTRIBUTES}) for r in data[list(ATTRIBUTES)].to_dict("records")]
        keys = list(data[["suite", "prompt", "seed"]].itertuples(index=False, name=None))
        ref = render_batch(portraits, [reference_seed(*k) for k in keys])
        floor = render_batch(portraits, [reference_seed(*k, salt="floor") for k in keys])
        gen_f, ref_f, floor_f = (features(model, x) for x in (images, ref, floor))
        boot_seed = [seed, zlib.crc32(f"frechet/{arm}".encode())]
        fd = frechet_distance_ci(gen_f, ref_f, n_boot=n_boot, confidence=CONFIDENCE, seed=boot_seed, paired=True)
        out.append(
            {
                "arm": arm,
                "fd": fd.fd,
                "fd_ci_low": fd.ci_low,
                "fd_ci_high": fd.ci_high,
                "fd_floor": frechet_distance(ref_f, floor_f),
                "fd_images": len(data),
            }
        )
    return pd.DataFrame(out)


def stated_accuracy(data: pd.DataFrame, spec: dict, classes: dict[str, list[str]]) -> pd.DataFrame | None:
    """Per arm, attribute and stated value: images, the share the detector sees with the stated value, Wilson CI.
    None when no prompt of the suite states a measured attribute."""
    stated = [a for a in spec.get("measure", []) if f"field_{a}" in data.columns and a in data.columns]
    parts = []
    for a in stated:
        d = data[data[f"field_{a}"].isin(classes.get(a, []))]
        if d.empty:
            continue
        hit = (d[a] == d[f"field_{a}"]).rename("hit")
        g = pd.concat([d[["arm", f"field_{a}"]], hit], axis=1).groupby(["arm", f"field_{a}"], sort=False)["hit"]
        t = g.agg(n="size", correct="sum").reset_index().rename(columns={f"field_{a}": "value"})
        t.insert(1, "attribute", a)
        parts.append(t)
    if not parts:
        return None
    t = pd.concat(parts, ignore_index=True)
    t["accuracy"] = t["correct"] / t["n"]
    t["ci_low"], t["ci_high"] = wilson_ci(t["correct"].to_numpy(), t["n"].to_numpy(), CONFIDENCE)
    return t


def paired_suite(name: str, specs: dict[str, dict]) -> str | None:
    """The suite that has `name`'s prompts without their `-terms` (same outcome and groups), if the run has one."""
    spec = specs[name]
    if spec.get("kind") != "outcome":
        return None
    split = [split_negative_terms(p["text"]) for p in spec["prompts"]]
    if not split or not all(neg for _, neg in split):
        return None
    positives = {pos for pos, _ in split}
    for other, o in specs.items():
        if other == name or o.get("kind") != "outcome" or o.get("outcome") != spec.get("outcome"):
            continue
        if list(o.get("groups", [])) != list(spec.get("groups", [])):
            continue
        texts = {p["text"] for p in o["prompts"]}
        if all(not split_negative_terms(t)[1] for t in texts) and positives <= texts:
            return other
    return None


def negative_response(
    rows: pd.DataFrame, specs: dict[str, dict], name: str, plain: str, n_boot: int = 1000, seed: int = 0
) -> pd.DataFrame | None:
    """Per arm and group of suite `name` (prompts with `-terms`): outcome rate on suite `plain` (the same prompts
    without them) minus the rate on `name`, over images paired on positive prompt text and seed, with a paired
    bootstrap CI. Groups: each marked field, their product, and `all`."""
    spec = specs[name]
    outcome, groups = spec["outcome"], list(spec["groups"])
    positive = {(name, p["id"]): split_negative_terms(p["text"])[0] for p in spec["prompts"]}
    positive |= {(plain, p["id"]): p["text"] for p in specs[plain]["prompts"]}
    cols = ["arm", "seed", outcome, *(f"field_{g}" for g in groups)]
    sides = []
    for suite in (plain, name):
        d = rows[rows["suite"] == suite]
        if d.empty or any(c not in d.columns for c in cols):
            return None
        d = d.assign(text=[positive[(suite, p)] for p in d["prompt"]])[["text", *cols]]
        sides.append(d)
    pairs = sides[0].merge(sides[1], on=["arm", "text", "seed"], suffixes=("_without", "_with"))
    if pairs.empty:
        return None
    pairs["diff"] = pairs[f"{outcome}_without"].astype(int) - pairs[f"{outcome}_with"].astype(int)
    for g in groups:
        pairs[g] = pairs[f"field_{g}_with"].astype(str)
    specs_groups: list[tuple[str, list[str]]] = [("all", [])] + [(g, [g]) for g in groups]
    if len(groups) > 1:
        specs_groups.append(("×".join(groups), groups))
    out = []
    for arm, by_arm in pairs.groupby("arm", sort=False):
        for attribute, keys in specs_groups:
            grouped = [("all", by_arm)] if not keys else by_arm.groupby(keys, sort=False)
            rng = stream(seed, "negative", name, str(arm), attribute)
            for group, d in grouped:
                group = "×".join(group) if isinstance(group, tuple) else str(group)
                diff = d["diff"].to_numpy()
                counts = np.array([(diff == v).sum() for v in (-1, 0, 1)])
                draws = rng.multinomial(len(diff), counts / len(diff), size=n_boot) @ np.array([-1, 0, 1]) / len(diff)
                low, high = percentile_ci(draws, CONFIDENCE)
                out.append(
                    {
                        "arm": arm,
                        "attribute": attribute,
                        "group": group,
                        "n": len(diff),
                        "rate_without": float(d[f"{outcome}_without"].mean()),
                        "rate_with": float(d[f"{outcome}_with"].mean()),
                        "response": float(diff.mean()),
                        "ci_low": float(low),
                        "ci_high": float(high),
                    }
                )
    return pd.DataFrame(out)


def arm_columns(arms: list[str], stated: list[pd.DataFrame], responses: list[pd.DataFrame]) -> pd.DataFrame:
    """Per arm: explicit-prompt accuracy (over every stated attribute of every image; the worst stated value and
    its accuracy) and the negative-prompt response (overall with CI; the smallest response over the finest
    groups and which group), NaN where the run has no such suite."""
    out = pd.DataFrame({"arm": arms})
    cols = {
        "explicit_accuracy": np.nan,
        "explicit_accuracy_min": np.nan,
        "explicit_min_value": None,
        "negative_response": np.nan,
        "negative_response_ci_low": np.nan,
        "negative_response_ci_high": np.nan,
        "negative_response_min": np.nan,
        "negative_response_min_group": None,
    }
    for c, v in cols.items():
        out[c] = v
    out = out.astype({"explicit_min_value": object, "negative_response_min_group": object})
    if stated:
        s = pd.concat(stated, ignore_index=True)
        per = s.groupby(["arm", "attribute", "value"], sort=False)[["n", "correct"]].sum().reset_index()
        per["accuracy"] = per["correct"] / per["n"]
        for i, arm in enumerate(arms):
            d = per[per["arm"] == arm]
            if d.empty:
                continue
            worst = d.loc[d["accuracy"].idxmin()]
            out.loc[i, "explicit_accuracy"] = d["correct"].sum() / d["n"].sum()
            out.loc[i, "explicit_accuracy_min"] = worst["accuracy"]
            out.loc[i, "explicit_min_value"] = f"{worst['attribute']}={worst['value']}"
    if responses:
        r = responses[0]  # one pair of suites is the usual run; with more, the first one's
        for i, arm in enumerate(arms):
            d = r[r["arm"] == arm]
            if d.empty:
                continue
            overall = d[d["attribute"] == "all"].iloc[0]
            out.loc[i, "negative_response"] = overall["response"]
            out.loc[i, "negative_response_ci_low"] = overall["ci_low"]
            out.loc[i, "negative_response_ci_high"] = overall["ci_high"]
            finest = d[d["attribute"] == d["attribute"].iloc[-1]]  # the product of the groups, listed last
            worst = finest.loc[finest["response"].idxmin()]
            out.loc[i, "negative_response_min"] = worst["response"]
            out.loc[i, "negative_response_min_group"] = str(worst["group"])
    return out
