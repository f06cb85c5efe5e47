"""The sampling seam: every image fairdiff draws goes through here, on the bundled model and on SD / SDXL.

`run_pipeline` draws one batch (image i seeded by its own CPU generator, so any image can be redrawn alone in
any batch size); `effective_guidance` says which guidance scale a run used.
"""

from __future__ import annotations

import inspect

import numpy as np
import torch

from fairdiff.errors import FairdiffError
from fairdiff.models.loading import LoadedModel


def run_pipeline(
    loaded: LoadedModel,
    prompts: list[str],
    negatives: list[str],
    seeds: list[int],
    steps: int,
    guidance: float | None,
    height: int | None = None,
    width: int | None = None,
) -> np.ndarray:
    """One batch through any supported pipeline: uint8 images (B, H, W, 3); image i seeded by seeds[i]."""
    kwargs: dict = {
        "num_inference_steps": steps,
        "output_type": "np",
        "generator": [torch.Generator("cpu").manual_seed(s) for s in seeds],
    }
    if guidance is not None:
        kwargs["guidance_scale"] = guidance
    if loaded.kind != "tiny":
        kwargs.update({k: v for k, v in (("height", height), ("width", width)) if v is not None})
    images = loaded.pipeline(prompt=prompts, negative_prompt=negatives, **kwargs).images
    images = np.asarray(images, dtype=np.float32)  # (B, H, W, 3) in [0, 1]
    if not np.isfinite(images).all():
        raise FairdiffError(f"model {loaded.name!r} produced NaN/Inf pixels (try --dtype float32)")
    return (np.clip(images, 0, 1) * 255).round().astype(np.uint8)


def effective_guidance(loaded: LoadedModel, guidance: float | None) -> float | None:
    """The guidance scale a run used: the one given, else the pipeline's own default."""
    if guidance is not None:
        return guidance
    param = inspect.signature(loaded.pipeline.__call__).parameters.get("guidance_scale")
    return None if param is None or param.default is inspect.Parameter.empty else float(param.default)
