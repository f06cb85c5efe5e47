"""`fairdiff generate`: images for one prompt, a grid, and a JSON sidecar that reproduces them.

Image i uses seed `seed + i` with its own CPU generator, so any image can be regenerated alone, in any batch
size, and the same config and seed give byte-identical PNGs on the same machine. Across batch sizes the images
agree up to the CPU's kernels, which may pick another algorithm for another batch shape (measured on an
AVX2-only CPU: a batch of 1 vs 2-8 differs by one grey level in 1-2 pixels of some images; under bf16 autocast,
the default where the CPU runs bf16 natively, by up to a few grey levels).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from fairdiff.errors import FairdiffError
from fairdiff.files import ensure_writable_dir, write_json_atomic
from fairdiff.images import grid
from fairdiff.models.defaults import DEFAULT_AUTOCAST, DEFAULT_STEPS, check_autocast
from fairdiff.models.loading import LoadedModel
from fairdiff.models.prompts import split_negative_terms
from fairdiff.models.sampling import ImageOptions, SamplingRequest, autocast_used, draw, effective_guidance
from fairdiff.provenance import library_versions, machine

logger = logging.getLogger(__name__)


@dataclass
class GenerateConfig:
    prompt: str
    negative: str | None = None
    n: int = 16
    seed: int = 0
    steps: int = DEFAULT_STEPS
    guidance: float | None = None  # None: the pipeline's own default (tiny 3.0, SD 7.5, SDXL 5.0)
    autocast: str = DEFAULT_AUTOCAST  # bf16 autocast: auto (where the CPU runs bf16 natively), on, off
    batch_size: int = 16
    height: int | None = None
    width: int | None = None
    adapters: list[str] = field(default_factory=list)  # LoRA "FILE[:WEIGHT]"; applied as one exact combination
    allow_pickle: bool = False  # read pickled adapter weights (they can run code)

    def check(self) -> None:
        if self.n < 1:
            raise FairdiffError(f"-n must be >= 1, got {self.n}")
        check_autocast(self.autocast)
        if self.steps < 1:
            raise FairdiffError(f"--steps must be >= 1, got {self.steps}")
        if self.batch_size < 1:
            raise FairdiffError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.guidance is not None and not (np.isfinite(self.guidance) and self.guidance >= 0):
            raise FairdiffError(f"--guidance must be a finite number >= 0, got {self.guidance}")
        if not self.prompt.strip():
            raise FairdiffError("--prompt is empty")
        if self.adapters:
            from fairdiff.adapters.engine import parse_adapter_spec

            for text in self.adapters:
                parse_adapter_spec(text)


def check_image_size(loaded: LoadedModel, cfg: GenerateConfig) -> None:
    """The tiny model draws 32x32 only; say so instead of ignoring --height/--width."""
    size = {k: v for k, v in (("height", cfg.height), ("width", cfg.width)) if v is not None}
    if loaded.kind == "tiny" and any(v != 32 for v in size.values()):
        raise FairdiffError(f"the tiny model draws 32x32 images only, got --height/--width {size}")


def attach_config_adapters(loaded: LoadedModel, cfg: GenerateConfig):
    """Attach `cfg.adapters` with their weights as the combination for every image; returns (handle or None,
    sidecar records: path, sha256, weight, format). On error the pipeline is left as it was."""
    if not cfg.adapters:
        return None, []
    from fairdiff.adapters.engine import adapter_record, attach_adapters, load_adapter_specs

    unet = getattr(loaded.pipeline, "unet", None)  # kohya SDXL keys are mapped with its config
    specs, adapters = load_adapter_specs(cfg.adapters, cfg.allow_pickle, getattr(unet, "config", None))
    records = [adapter_record(s, a) for s, a in zip(specs, adapters, strict=True)]
    handle = attach_adapters(loaded.pipeline, adapters)
    try:
        handle.set_combination([s.weight for s in specs])
    except BaseException:
        handle.detach()
        raise
    return handle, records


def generate(
    loaded: LoadedModel, cfg: GenerateConfig, out: Path, on_batch: Callable[[int], None] | None = None
) -> dict:
    """Generate `cfg.n` images into `out`; returns the sidecar dict (also written to `out/generate.json`)."""
    cfg.check()
    check_image_size(loaded, cfg)
    ensure_writable_dir(out)
    positive, negative = split_negative_terms(cfg.prompt, cfg.negative)
    seeds = [cfg.seed + i for i in range(cfg.n)]
    files, images = [], []
    t0 = time.time()
    handle = None
    try:
        handle, adapter_records = attach_config_adapters(loaded, cfg)
        for start in range(0, cfg.n, cfg.batch_size):
            batch = seeds[start : start + cfg.batch_size]
            request = SamplingRequest(
                [ImageOptions(positive, negative, seed, cfg.guidance) for seed in batch],
                steps=cfg.steps,
                autocast=cfg.autocast,
                height=cfg.height,
                width=cfg.width,
            )
            pixels = draw(loaded, request)
            for seed, img in zip(batch, pixels, strict=True):
                name = f"{seed:06d}.png"
                Image.fromarray(img).save(out / name)
                files.append(name)
                images.append(img)
            if on_batch is not None:
                on_batch(len(batch))
    finally:
        if handle is not None:
            handle.detach()  # the pipeline is as it was loaded
    cols = int(np.ceil(np.sqrt(cfg.n)))
    Image.fromarray(grid(np.stack(images), cols)).save(out / "grid.png")
    scheduler = loaded.pipeline.scheduler
    sidecar = {
        "model": loaded.name,
        "model_kind": loaded.kind,
        "model_source": loaded.source,
        "prompt": cfg.prompt,
        "positive_prompt": positive,
        "negative_prompt": negative,
        "config": asdict(cfg),
        "seeds": seeds,
        "steps": cfg.steps,
        "guidance": effective_guidance(loaded, cfg.guidance),
        "bf16_autocast": autocast_used(loaded, cfg.autocast),
        "scheduler": {"class": type(scheduler).__name__, "config": dict(scheduler.config)},
        "device": str(loaded.pipeline.device),
        "dtype": str(getattr(loaded.pipeline, "dtype", "")),
        "files": files,
        "grid": "grid.png",
        "versions": library_versions(),
        "machine": machine(),
        "weight_hashes": loaded.weight_hashes(),
        "adapters": adapter_records,
        "seconds": round(time.time() - t0, 2),
    }
    write_json_atomic(out / "generate.json", sidecar)
    return sidecar
