"""Inference overhead (merged vs unmerged LoRA, an installed edit) and reversibility, measured in one run.

Overhead: the same request (prompts, seeds, steps) is drawn by each variant in interleaved rounds (base,
unmerged, merged, edit, then again), so a machine that slows down mid-run slows every variant alike. Per round r
the ratio t_variant(r) / t_base(r); the value is the median ratio over rounds, its CI the percentile bootstrap
of that median over rounds (resampled with replacement, paired by round).

- `base`: the pipeline as loaded; `lora-unmerged`: the adapter in a slot (W0 x + s B A x per forward);
  `lora-merged`: W = W0 + s B A folded in, the original module graph back; `edit`: the edit's ΔW installed
  around the draw (`edit_attention`, as the edit arm does).

Reversibility: draw the request, apply a change, draw with it, remove it, draw again; the change is reversible
when the last images equal the first bit for bit and every weight tensor of the UNet equals its value before
(`torch.equal`). `check_reversible` takes the apply/remove pair, so a remove that does not restore is caught.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import ExitStack

import numpy as np

from fairdiff.metrics.bootstrap import percentile_ci
from fairdiff.study.measures import CONFIDENCE, row

PROMPTS = ("a photo of the face of a pilot", "a photo of the face of a nurse", "a photo of the face of a ceo")


def _request(images: int, steps: int, seed: int):
    from fairdiff.models.sampling import ImageOptions, SamplingRequest

    opts = [ImageOptions(PROMPTS[i % len(PROMPTS)], "", seed + i, None) for i in range(images)]
    return SamplingRequest(opts, steps=steps)


def _weights(module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def check_reversible(loaded, request, apply: Callable[[], None], remove: Callable[[], None]) -> dict:
    """Draw, apply, draw, remove, draw: {identical_images, identical_weights, changed_images, max_abs_diff}."""
    import torch

    from fairdiff.models.sampling import draw

    unet = loaded.pipeline.unet
    before_w = _weights(unet)
    before = draw(loaded, request)
    apply()
    try:
        during = draw(loaded, request)
    finally:
        remove()
    after = draw(loaded, request)
    after_w = _weights(unet)
    same_w = before_w.keys() == after_w.keys() and all(torch.equal(before_w[k], after_w[k]) for k in before_w)
    return {
        "identical_images": bool(np.array_equal(before, after)),
        "identical_weights": bool(same_w),
        "changed_images": bool(not np.array_equal(before, during)),
        "max_abs_diff": int(np.abs(before.astype(int) - after.astype(int)).max()),
    }


def _ratio_ci(times: dict[str, list[float]], name: str, n_boot: int, seed: int) -> tuple[float, float, float]:
    ratios = np.asarray(times[name]) / np.asarray(times["base"])
    rng = np.random.default_rng([seed, len(ratios)])
    draws = np.median(ratios[rng.integers(0, len(ratios), size=(n_boot, len(ratios)))], axis=1)
    low, high = percentile_ci(draws, CONFIDENCE)
    return float(np.median(ratios)), float(low), float(high)


def measure_overhead(
    loaded,
    adapter_path: str,
    edit_path: str,
    *,
    rounds: int,
    images: int,
    steps: int,
    seed: int = 0,
    n_boot: int = 1000,
    on_round: Callable[[int, int], None] | None = None,
) -> list[dict]:
    """Long-table rows: seconds_per_image and overhead_ratio per variant, reversibility of the adapter and the
    edit (bit for bit), and how far merged images are from unmerged ones (see the module docstring)."""
    from fairdiff.adapters.engine import attach_adapters
    from fairdiff.adapters.loading import load_adapter
    from fairdiff.mitigate.edit_file import read_edit
    from fairdiff.models.attention import edit_attention
    from fairdiff.models.sampling import draw

    request = _request(images, steps, seed)
    adapter = load_adapter(adapter_path)
    deltas = read_edit(edit_path).deltas
    unet = loaded.pipeline.unet
    out: list[dict] = []

    handle: list = []

    def attach() -> None:
        handle.append(attach_adapters(loaded.pipeline, [adapter]))
        handle[-1].set_combination([1.0])

    def detach() -> None:
        handle.pop().detach()

    def timed(fn: Callable[[], None]) -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    draw(loaded, request)  # warm-up: first-call allocations
    times: dict[str, list[float]] = {"base": [], "lora-unmerged": [], "lora-merged": [], "edit": []}
    merged_diff = 0
    for r in range(rounds):
        times["base"].append(timed(lambda: draw(loaded, request)))
        attach()
        try:
            t0 = time.perf_counter()
            unmerged = draw(loaded, request)
            times["lora-unmerged"].append(time.perf_counter() - t0)
            handle[-1].merge()
            t0 = time.perf_counter()
            merged = draw(loaded, request)
            times["lora-merged"].append(time.perf_counter() - t0)
            handle[-1].unmerge()
            merged_diff = max(merged_diff, int(np.abs(merged.astype(int) - unmerged.astype(int)).max()))
        finally:
            detach()
        with ExitStack() as stack:
            stack.enter_context(edit_attention(unet, deltas=dict(deltas)))
            times["edit"].append(timed(lambda: draw(loaded, request)))
        if on_round:
            on_round(r + 1, rounds + 2)
    per_image = {k: float(np.median(v)) / images for k, v in times.items()}
    for name in times:
        out.append(row("seconds_per_image", per_image[name], n=images * rounds, arm=name))
        if name != "base":
            value, low, high = _ratio_ci(times, name, n_boot, seed)
            out.append(row("overhead_ratio", value, low, high, rounds, arm=name, reference="base"))
    out.append(row("merged_vs_unmerged_max_pixel_diff", merged_diff, n=images, arm="lora-merged"))

    def merge_cycle() -> None:
        attach()
        handle[-1].merge()

    def unmerge_detach() -> None:
        handle[-1].unmerge()
        detach()

    checks = {"lora-removed": (merge_cycle, unmerge_detach)}
    edit_stack = ExitStack()
    checks["edit-removed"] = (
        lambda: edit_stack.enter_context(edit_attention(unet, deltas=dict(deltas))),
        edit_stack.close,
    )
    for i, (name, (apply, remove)) in enumerate(checks.items()):
        res = check_reversible(loaded, request, apply, remove)
        exact = float(res["identical_images"] and res["identical_weights"])
        out.append(row("restored_bit_exact", exact, exact, exact, images, arm=name, reference="base"))
        out.append(row("changed_while_applied", float(res["changed_images"]), n=images, arm=name))
        out.append(row("restored_max_pixel_diff", res["max_abs_diff"], n=images, arm=name))
        if on_round:
            on_round(rounds + 1 + i, rounds + 2)
    return out
