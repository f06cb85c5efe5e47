"""Semantic guidance (SEGA, Brack et al. 2023) as used by Fair Diffusion (Friedrich et al. 2023): a step hook for the
sampling seam that steers each image toward (or away from) edit prompts of its own.

At every denoising step t, for image b and each of its edit prompts c (text e_c, direction sign s_c = +1 toward,
-1 away), with the unconditional prediction eps_u and the edit prompt's prediction eps_c:

    psi_c = s_c * s_e * (eps_c - eps_u)                        edit direction, scaled by the edit scale s_e
    psi_c <- psi_c where |psi_c| >= q_lambda(|psi_c|) else 0   keep the top (1 - lambda) of each channel's elements
    gamma = sum_c w_c psi_c + nu * v                           the edit term, with momentum v (scale nu)
    v <- beta * v + (1 - beta) * gamma                         momentum builds from step 0 on
    eps <- eps_cfg + gamma                                     only once t >= delta (the warm-up steps)

which is the published algorithm with the conventions of diffusers' `SemanticStableDiffusionPipeline` (edit
scale, warm-up steps, threshold lambda as a per-channel percentile of |psi| over the spatial positions, momentum
scale and beta; the concepts' terms are summed with their weights). Fair Diffusion's fairness edit is a pair:
toward the attribute value wanted for this image, away from the other value(s).

Unlike the SEGA pipeline, which concatenates the edit prompts into the UNet batch, the guidance here is a hook
(`fairdiff.models.sampling.StepContext`): the edit prompts of every image of the forward go through ONE extra
batched UNet pass per step (`ctx.predict`), and the term is added to the prediction the pipeline forms
(`ctx.raw_for(ctx.guided() + gamma)`), so the same code runs on the bundled model, SD 1.x and SDXL (whose extra pass
gets the edit prompts' pooled embeddings as `text_embeds`). Each image has its own edit prompts, so one batch can
steer half its images toward "woman" and half toward "man". Without classifier-free guidance (the bundled model
at guidance 1) eps_u comes from the same extra pass, on the empty prompt.

Written by hand: diffusers' SEGA lives in a (deprecated) pipeline of its own, SD 1.x only, one set of edit prompts
per call; the arithmetic is a few tensor lines.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from fairdiff.errors import FairdiffError

if TYPE_CHECKING:
    import torch

    from fairdiff.models.sampling import StepContext, StepHook


@dataclass(frozen=True)
class EditPrompt:
    """One edit concept of one image: its text, whether to steer away from it, and its weight in the sum."""

    text: str
    reverse: bool = False
    weight: float = 1.0


@dataclass(frozen=True)
class SegaParams:
    """SEGA's knobs (diffusers' names in brackets): `scale` s_e [edit_guidance_scale], `warmup` delta steps without
    the term [edit_warmup_steps], `threshold` lambda, the percentile of |psi| below which elements are dropped
    [edit_threshold], `momentum` nu [edit_momentum_scale], `beta` [edit_mom_beta], `cooldown` the step from which
    the term is off again (None: never) [edit_cooldown_steps]. Steps count UNet calls of a pipeline call."""

    scale: float = 5.0
    warmup: int = 10
    threshold: float = 0.9
    momentum: float = 0.1
    beta: float = 0.4
    cooldown: int | None = None

    def check(self) -> None:
        """A `FairdiffError` naming the first bad value."""
        for name in ("scale", "momentum"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
                raise FairdiffError(f"guidance {name} must be a finite number >= 0, got {v!r}")
        for name in ("threshold", "beta"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v < 1:
                raise FairdiffError(f"guidance {name} must be a number in [0, 1), got {v!r}")
        for name in ("warmup", "cooldown"):
            v = getattr(self, name)
            if v is None and name == "cooldown":
                continue
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise FairdiffError(f"guidance {name} must be a whole number of steps >= 0, got {v!r}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Encoded:
    embeds: torch.Tensor  # (T, L, D) one row per distinct text
    pooled: torch.Tensor | None  # (T, P) SDXL's pooled text embeddings; None elsewhere
    index: dict[str, int]


def encode_texts(pipeline, texts: Sequence[str]) -> _Encoded:
    """Text embeddings of `texts` for the pipeline's UNet (the bundled model, SD 1.x, SDXL), in its dtype."""
    import torch

    texts = list(dict.fromkeys(texts))
    unet = pipeline.unet
    with torch.no_grad():
        if getattr(pipeline, "text_encoder_2", None) is not None:  # SDXL: two encoders, pooled embeddings
            embeds, _, pooled, _ = pipeline.encode_prompt(
                texts, device=unet.device, num_images_per_prompt=1, do_classifier_free_guidance=False
            )
            pooled = pooled.to(device=unet.device, dtype=unet.dtype)
        elif "device" in _parameters(pipeline.encode_prompt):  # SD 1.x
            embeds = pipeline.encode_prompt(
                texts, device=unet.device, num_images_per_prompt=1, do_classifier_free_guidance=False
            )[0]
            pooled = None
        else:  # the bundled pipeline: encode_prompt(list) -> (B, L, 384)
            embeds, pooled = pipeline.encode_prompt(texts), None
    return _Encoded(embeds.to(device=unet.device, dtype=unet.dtype), pooled, {t: i for i, t in enumerate(texts)})


def _parameters(fn) -> set[str]:
    import inspect

    return set(inspect.signature(fn).parameters)


class SemanticGuidance:
    """SEGA on one pipeline: `hook(edits)` is a step hook in which request image i is steered by `edits[i]`
    (a list of `EditPrompt`s, empty for none). Text embeddings are computed once per text and kept."""

    def __init__(self, pipeline, params: SegaParams) -> None:
        params.check()
        if getattr(pipeline, "unet", None) is None:
            raise FairdiffError(f"semantic guidance needs a UNet pipeline, got {type(pipeline).__name__}")
        self.pipeline = pipeline
        self.params = params
        self._cache: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}

    def _rows(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        import torch

        missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if missing:
            enc = encode_texts(self.pipeline, missing)
            for t, i in enc.index.items():
                self._cache[t] = (enc.embeds[i], None if enc.pooled is None else enc.pooled[i])
        embeds = torch.stack([self._cache[t][0] for t in texts])
        pooled = self._cache[texts[0]][1]
        return embeds, None if pooled is None else torch.stack([self._cache[t][1] for t in texts])

    def hook(self, edits: Sequence[Sequence[EditPrompt]]) -> StepHook:
        """A step hook for a request whose image i gets `edits[i]`."""
        edits = [list(e) for e in edits]
        for i, image_edits in enumerate(edits):
            for e in image_edits:
                if not isinstance(e, EditPrompt) or not isinstance(e.text, str):
                    raise FairdiffError(f"image {i}: edit prompts must be EditPrompt(text, reverse, weight), got {e!r}")
        momentum: dict[tuple[int, ...], torch.Tensor] = {}

        def step_hook(ctx: StepContext):
            return self._step(ctx, edits, momentum)

        return step_hook

    def _step(self, ctx: StepContext, edits, momentum):
        import torch

        p = self.params
        key = tuple(ctx.indices)
        if ctx.step == 0:
            momentum.pop(key, None)  # a new pipeline call (SD / SDXL: one per guidance sub-batch)
        if p.cooldown is not None and ctx.step >= p.cooldown:
            return None
        n = len(ctx.indices)
        image_of, texts, signs, weights = [], [], [], []
        for b, i in enumerate(ctx.indices):
            if i >= len(edits):
                raise FairdiffError(f"semantic guidance: no edit prompts for image {i} ({len(edits)} given)")
            for e in edits[i]:
                image_of.append(b)
                texts.append(e.text)
                signs.append(-1.0 if e.reverse else 1.0)
                weights.append(float(e.weight))
        if not texts:
            return None
        rows = len(texts)
        if not ctx.cfg:
            texts = texts + [""] * n  # eps_u of every image from the same pass
        cond = [(n + b if ctx.cfg else b) for b in image_of] + ([] if ctx.cfg else list(range(n)))
        embeds, pooled = self._rows(texts)
        kwargs = {}
        added = ctx.unet_kwargs.get("added_cond_kwargs")
        if added is not None:  # SDXL: the edit prompts' pooled embeddings, the images' size/crop ids
            kwargs["added_cond_kwargs"] = {**added, "text_embeds": pooled, "time_ids": added["time_ids"][cond]}
        eps = ctx.predict(ctx.sample[cond], embeds.to(ctx.encoder_hidden_states.dtype), **kwargs).float()
        uncond = ctx.noise_pred.chunk(2)[0].float() if ctx.cfg else eps[rows:]
        idx = torch.tensor(image_of, device=eps.device)
        sign = torch.tensor(signs, device=eps.device, dtype=eps.dtype).view(-1, *([1] * (eps.dim() - 1)))
        weight = torch.tensor(weights, device=eps.device, dtype=eps.dtype).view_as(sign)
        psi = sign * p.scale * (eps[:rows] - uncond[idx])
        if p.threshold > 0:
            flat = psi.abs().flatten(2)  # (rows, channels, positions): a percentile per channel, as SEGA
            q = torch.quantile(flat, p.threshold, dim=2, keepdim=True)
            psi = torch.where(flat >= q, psi.flatten(2), torch.zeros_like(flat)).view_as(psi)
        gamma = torch.zeros_like(uncond).index_add_(0, idx, weight * psi)
        v = momentum.get(key, torch.zeros_like(gamma))
        gamma = gamma + p.momentum * v
        momentum[key] = p.beta * v + (1 - p.beta) * gamma
        if ctx.step < p.warmup or not bool(gamma.abs().max() > 0):
            return None  # nothing to add: the UNet output as it was, bit for bit
        return ctx.raw_for(ctx.guided().float() + gamma)


def sega_hook(pipeline, edits: Sequence[Sequence[EditPrompt]], params: SegaParams | None = None) -> StepHook:
    """A step hook (for `SamplingRequest.step_hook`) steering request image i by `edits[i]` with SEGA."""
    return SemanticGuidance(pipeline, params or SegaParams()).hook(edits)
