"""Recipe: train the tiny text-to-image model on the portrait world (resumable, CPU or GPU).

Every step draws a fresh batch from the world (seeded by the run seed and the step, so a resumed run sees the
same data as an uninterrupted one), renders it, and trains the UNet to predict v on noised images, with the
caption dropped 10% of the time so classifier-free guidance works. An EMA of the weights is what gets
exported. `out/checkpoint.pt` (a plain dict: config, step, weights, EMA, optimizer, RNG) is written every
`checkpoint_every` steps together with the exported pipeline in `out/pipeline/` (swapped in whole; its step in
`out/exported.json`); a rerun with the same `out` continues from it.
"""

from __future__ import annotations

import copy
import io
import itertools
import json
import logging
import math
import multiprocessing
import os
import shutil
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fairdiff.errors import FairdiffError
from fairdiff.files import swap_in_dir, write_atomic, write_json_atomic
from fairdiff.models.precision import bf16_is_native
from fairdiff.world.captions import sample_world
from fairdiff.world.config import WorldConfig
from fairdiff.world.render import render_batch

logger = logging.getLogger(__name__)


@dataclass
class TrainModelConfig:
    steps: int = 6000  # 2 CPU cores: ~65 min at 0.65 s/step with avx512_bf16, ~4 h at 2.5 s/step on AVX2 only
    batch_size: int = 64
    lr: float = 5e-4  # AdamW; 1e-3 was unstable in attention for this width
    warmup: int = 200
    ema_decay: float = 0.999
    caption_dropout: float = 0.1  # share of captions replaced by "" (the unconditional branch of CFG)
    seed: int = 0
    checkpoint_every: int = 250
    # bf16 autocast (weights stay fp32); None = where the hardware runs it natively (`bf16_is_native`): 1.4x
    # faster than fp32 on a CPU with avx512_bf16, 16x slower on an AVX2-only CPU that emulates it (bench/train_step.py)
    bf16: bool | None = None
    device: str = "cpu"
    unet: dict = field(default_factory=dict)  # overrides of TINY_UNET_CONFIG (architecture experiments)
    # share of each batch whose timestep is drawn from [high_t_from, 1000) instead of [0, 1000): the noise levels
    # at which a sample commits to one skin bin (see `sample_timesteps`); 0 = plain uniform timesteps
    high_t_share: float = 0.0
    high_t_from: int = 850
    init: str | None = None  # pipeline directory whose UNet weights start a fresh run (a fine-tune)
    # processes that render batches ahead of the training step (0: render in the loop). The batches are the same
    # either way (a function of the step); on a GPU the UNet step is faster than rendering a batch on one core
    workers: int = 0


class CaptionCache:
    """Caption -> MiniLM token embeddings (L, 384), computed once per unique caption (~5.5k in the world)."""

    def __init__(self, tokenizer, text_encoder) -> None:
        self.tokenizer, self.text_encoder = tokenizer, text_encoder
        self.cache: dict[str, torch.Tensor] = {}

    def __call__(self, captions: list[str]) -> torch.Tensor:
        from fairdiff.models.text_encoder import encode_text

        missing = sorted({c for c in captions if c not in self.cache})
        if missing:
            embeds = encode_text(self.tokenizer, self.text_encoder, missing, device="cpu")
            self.cache.update(zip(missing, embeds, strict=True))
        return torch.stack([self.cache[c] for c in captions])


def world_batch(world: WorldConfig, cfg: TrainModelConfig, step: int) -> tuple[np.ndarray, list[str]]:
    """The batch for `step`: images (B, 32, 32, 3) uint8 and captions, with caption dropout applied."""
    samples = sample_world(world, cfg.batch_size, seed=cfg.seed * 1_000_003 + step)
    images = render_batch([s.portrait for s in samples], [s.seed for s in samples])
    drop = np.random.default_rng([cfg.seed, step, 7]).random(cfg.batch_size) < cfg.caption_dropout
    captions = ["" if d else s.caption for s, d in zip(samples, drop, strict=True)]
    return images, captions


def world_batches(world: WorldConfig, cfg: TrainModelConfig, start: int) -> Iterator[tuple[np.ndarray, list[str]]]:
    """`world_batch` for steps start, start + 1, ..., cfg.steps - 1; with `cfg.workers` > 0 rendered ahead in that
    many processes (2 batches per worker in flight). Close the iterator to stop the workers early. The workers are
    spawned, so a script that trains with workers needs the `if __name__ == "__main__":` guard."""
    if cfg.workers == 0:
        for step in range(start, cfg.steps):
            yield world_batch(world, cfg, step)
        return
    ctx = multiprocessing.get_context("spawn")  # no fork of a process that holds torch's threads
    with ProcessPoolExecutor(cfg.workers, mp_context=ctx) as pool:
        steps = iter(range(start, cfg.steps))
        pending = deque(pool.submit(world_batch, world, cfg, s) for s in itertools.islice(steps, 2 * cfg.workers))
        try:
            while pending:
                batch = pending.popleft().result()
                pending.extend(pool.submit(world_batch, world, cfg, s) for s in itertools.islice(steps, 1))
                yield batch
        finally:
            for future in pending:
                future.cancel()


def to_model_space(images: np.ndarray) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float (B, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def _lr_at(cfg: TrainModelConfig, step: int) -> float:
    """Linear warmup, then cosine decay to 10% of the peak."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def sample_timesteps(cfg: TrainModelConfig, num_train: int, n: int, gen: torch.Generator) -> torch.Tensor:
    """Uniform timesteps, with a share `high_t_share` redrawn from [high_t_from, num_train).

    Where a face's skin colour is decided: face and neck cover ~140 pixels, so the noise on their mean colour is
    sqrt((1 - a) / a) / sqrt(140) in [-1, 1] units, against ~0.8 between neighbouring skin bins; the bins
    separate at sqrt((1 - a) / a) ~ 5-9, t ~ 860-935 of the cosine schedule, where uniform sampling puts under
    10% of the training signal. With high_t_share = 0 the draw is exactly the original uniform one. (A
    fine-tune with half its timesteps from [850, 1000) did not help: docs/model-card.md.)"""
    t = torch.randint(0, num_train, (n,), generator=gen)
    if cfg.high_t_share > 0:
        high = torch.randint(cfg.high_t_from, num_train, (n,), generator=gen)
        t = torch.where(torch.rand(n, generator=gen) < cfg.high_t_share, high, t)
    return t


def init_weights_path(pipeline_dir: Path) -> Path:
    """The UNet weights file of an exported pipeline directory (for `init`); an error if there is none."""
    path = pipeline_dir / "unet" / "diffusion_pytorch_model.safetensors"
    if not path.is_file():
        raise FairdiffError(f"--init {pipeline_dir}: no UNet weights at {path}")
    return path


def _load_init(unet, pipeline_dir: Path) -> None:
    """Start from the UNet weights of an exported pipeline (same architecture), e.g. the bundled model."""
    from safetensors.torch import load_file

    state = load_file(init_weights_path(pipeline_dir))
    mine = unet.state_dict()
    if set(state) != set(mine) or any(state[k].shape != mine[k].shape for k in mine):
        raise FairdiffError(f"--init {pipeline_dir}: its UNet does not match this run's architecture")
    unet.load_state_dict(state)


def train_model(
    world: WorldConfig,
    cfg: TrainModelConfig,
    out: Path,
    on_step: Callable[[int, float], None] | None = None,
    text=None,
) -> Path:
    """Train (or resume) into `out`; returns the exported pipeline directory `out/pipeline`.
    `text` is a preloaded (tokenizer, text_encoder) pair; MiniLM is loaded when None."""
    from diffusers import DDPMScheduler

    from fairdiff.models.text_encoder import load_minilm
    from fairdiff.models.tiny import TINY_SCHEDULER_CONFIG, build_tiny_pipeline, build_tiny_unet

    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(cfg.device)
    bf16 = bf16_is_native(device) if cfg.bf16 is None else cfg.bf16
    unet = build_tiny_unet(cfg.seed, cfg.unet).to(device)
    ema = copy.deepcopy(unet).requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=0.01)
    step = 0
    ckpt_path = out / "checkpoint.pt"
    if cfg.init is not None and not ckpt_path.exists():
        _load_init(unet, Path(cfg.init))
        ema.load_state_dict(unet.state_dict())
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)
        if any(
            ckpt["config"].get(k, {} if k == "unet" else None) != getattr(cfg, k)
            for k in ("seed", "batch_size", "unet")
        ):
            raise FairdiffError(f"{ckpt_path}: checkpoint was trained with {ckpt['config']}, not {asdict(cfg)}")
        unet.load_state_dict(ckpt["unet"])
        ema.load_state_dict(ckpt["ema"])
        opt.load_state_dict(ckpt["optimizer"])
        step = ckpt["step"]
        logger.info("resumed from %s at step %d", ckpt_path, step)

    tokenizer, text_encoder = text if text is not None else load_minilm()
    captions_to_embeds = CaptionCache(tokenizer, text_encoder)
    noise_scheduler = DDPMScheduler(**TINY_SCHEDULER_CONFIG)
    alphas = noise_scheduler.alphas_cumprod.to(device)
    log = (out / "train.log").open("a")

    def save() -> None:
        buf = io.BytesIO()
        torch.save(
            {
                "config": asdict(cfg),
                "step": step,
                "unet": unet.state_dict(),
                "ema": ema.state_dict(),
                "optimizer": opt.state_dict(),
            },
            buf,
        )
        write_atomic(ckpt_path, buf.getvalue())  # a kill mid-write leaves the old checkpoint
        # the pipeline too: written aside, then swapped in, then its step recorded (a kill leaves a whole one)
        shutil.rmtree(out / "pipeline.tmp", ignore_errors=True)
        build_tiny_pipeline(ema, text=(tokenizer, text_encoder)).save_pretrained(out / "pipeline.tmp")
        swap_in_dir(out / "pipeline.tmp", out / "pipeline")
        write_json_atomic(out / "exported.json", {"step": step})

    logger.info("training on %s, bf16 autocast %s", device, "on" if bf16 else "off")
    unet.train()
    t_start = time.time()
    batches = world_batches(world, cfg, step)
    ema_params, params = list(ema.parameters()), list(unet.parameters())
    try:
        while step < cfg.steps:
            images, captions = next(batches)
            x0 = to_model_space(images).to(device)  # (B, 3, 32, 32)
            cond = captions_to_embeds(captions).to(device)  # (B, L, 384)
            gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)  # per step: resume == no interruption
            noise = torch.randn(x0.shape, generator=gen).to(device)
            t = sample_timesteps(cfg, noise_scheduler.config.num_train_timesteps, x0.shape[0], gen).to(device)
            a = alphas[t].view(-1, 1, 1, 1)
            xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
            target = a.sqrt() * noise - (1 - a).sqrt() * x0  # v
            for group in opt.param_groups:
                group["lr"] = _lr_at(cfg, step)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                pred = unet(xt, t, encoder_hidden_states=cond).sample
            loss = F.mse_loss(pred.float(), target)
            if not torch.isfinite(loss):
                raise FairdiffError(f"training diverged at step {step}: loss is {loss.item()}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
            opt.step()
            decay = min(cfg.ema_decay, (1 + step) / (10 + step))
            with torch.no_grad():  # one fused call: on CUDA a few kernel launches instead of one per tensor (~300)
                torch._foreach_lerp_(ema_params, params, 1 - decay)
            step += 1
            if on_step is not None:
                on_step(step, loss.item())
            if step % 50 == 0 or step == cfg.steps:
                rec = {
                    "step": step,
                    "loss": round(loss.item(), 5),
                    "lr": _lr_at(cfg, step - 1),
                    "elapsed_s": round(time.time() - t_start, 1),
                }
                log.write(json.dumps(rec) + "\n")
                log.flush()
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                save()
    finally:
        batches.close()  # stops render workers when the loop ends early (an error, an interrupt)
    log.close()
    if not (out / "pipeline").exists():
        save()
    return out / "pipeline"


def bundle_pipeline(pipeline_dir: Path, target: Path) -> Path:
    """Copy an exported pipeline over `target` (the bundled model): copied beside `target` first, then swapped
    in whole, so a failed copy (disk full, an interrupt) leaves the model that was there. Returns `target`."""
    target = Path(target).resolve()
    tmp = target.parent / f".{target.name}.bundling-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        shutil.copytree(pipeline_dir, tmp)
        swap_in_dir(tmp, target)
    except OSError as exc:
        raise FairdiffError(
            f"--bundle: could not copy {pipeline_dir} to {target} ({exc.strerror or exc}); "
            "the bundled model is unchanged"
        ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
