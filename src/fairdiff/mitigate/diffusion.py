"""The diffusion loss of a mitigation step, the same way for the bundled model, SD 1.x and SDXL.

- `Conditioner(loaded, grad)`: prompts -> the UNet's conditioning kwargs (`encoder_hidden_states`, and SDXL's
  `added_cond_kwargs` with pooled text embeddings and size time ids). With `grad` (a text encoder is trained) the
  text encoder runs with gradients every call; without, each caption is encoded once and cached. The bundled
  model's MiniLM is called directly (its `encode_text` is no-grad); SD / SDXL use the pipeline's `encode_prompt`.
- `to_latents(loaded, images)`: uint8 renders (B, 32, 32, 3) -> the UNet's input space: pixels in [-1, 1] for
  the bundled model; for SD / SDXL resized to the pipeline's default resolution and encoded by its VAE (the
  latent mean times the VAE's scaling factor).
- `diffusion_loss(unet, scheduler, x0, cond, gen)`: noise at timesteps drawn from `gen`, MSE against what the
  scheduler's `prediction_type` says the UNet predicts (epsilon, v_prediction or sample), as
  world/train_model.py trains the bundled model (v-prediction).
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fairdiff.errors import FairdiffError


def training_scheduler(loaded: Any):
    """A DDPM scheduler with the pipeline's training noise schedule and prediction type."""
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(loaded.pipeline.scheduler.config)


def image_size(loaded: Any) -> int:
    """The pipeline's default image side in pixels (32 for the bundled model)."""
    pipe = loaded.pipeline
    if loaded.kind == "tiny":
        return int(pipe.unet.config.sample_size)
    return int(pipe.unet.config.sample_size) * int(getattr(pipe, "vae_scale_factor", 8))


class Conditioner:
    """Prompts -> UNet conditioning kwargs (see the module docstring)."""

    def __init__(self, loaded: Any, grad: bool) -> None:
        self.loaded, self.grad = loaded, grad
        self._cache: dict[str, dict[str, torch.Tensor]] = {}

    def _encode(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        """{name: (B, ...)} per prompt: "hidden" (token embeddings) and, for SDXL, "pooled"."""
        pipe, kind = self.loaded.pipeline, self.loaded.kind
        device = pipe.unet.device
        if kind == "tiny":
            from fairdiff.models.text_encoder import MAX_LENGTH

            tokens = pipe.tokenizer(
                prompts, padding="max_length", truncation=True, max_length=MAX_LENGTH, return_tensors="pt"
            )
            te = pipe.text_encoder
            out = te(input_ids=tokens.input_ids.to(te.device), attention_mask=tokens.attention_mask.to(te.device))
            return {"hidden": out.last_hidden_state.to(device=device, dtype=pipe.unet.dtype)}
        if kind == "sdxl":
            embeds, _, pooled, _ = pipe.encode_prompt(
                prompt=prompts, device=device, num_images_per_prompt=1, do_classifier_free_guidance=False
            )
            return {"hidden": embeds, "pooled": pooled}
        if hasattr(pipe, "encode_prompt"):
            embeds, _ = pipe.encode_prompt(prompts, device, 1, False)
            return {"hidden": embeds}
        raise FairdiffError(f"{type(pipe).__name__}: fairdiff cannot train mitigations on this pipeline kind")

    def embeddings(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        """The text embeddings of `prompts` (unique prompts encoded once per call, or once per run when cached)."""
        unique = list(dict.fromkeys(prompts))
        if self.grad:
            parts = self._encode(unique)
            index = torch.tensor([unique.index(p) for p in prompts], device=parts["hidden"].device)
            return {k: v.index_select(0, index) for k, v in parts.items()}
        missing = [p for p in unique if p not in self._cache]
        if missing:
            with torch.no_grad():
                parts = self._encode(missing)
            for i, p in enumerate(missing):
                self._cache[p] = {k: v[i] for k, v in parts.items()}
        return {k: torch.stack([self._cache[p][k] for p in prompts]) for k in self._cache[prompts[0]]}

    def __call__(self, prompts: list[str]) -> dict[str, Any]:
        """UNet kwargs for a batch captioned `prompts`."""
        parts = self.embeddings(prompts)
        kwargs: dict[str, Any] = {"encoder_hidden_states": parts["hidden"]}
        if self.loaded.kind == "sdxl":
            side = image_size(self.loaded)
            ids = torch.tensor([[side, side, 0, 0, side, side]], dtype=parts["pooled"].dtype)
            kwargs["added_cond_kwargs"] = {
                "text_embeds": parts["pooled"],
                "time_ids": ids.repeat(len(prompts), 1).to(parts["pooled"].device),
            }
        return kwargs


def to_model_space(images: np.ndarray) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float (B, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


@torch.no_grad()
def to_latents(loaded: Any, images: np.ndarray) -> torch.Tensor:
    """Renders in the UNet's input space (see the module docstring)."""
    pipe = loaded.pipeline
    x = to_model_space(images).to(pipe.unet.device)
    if loaded.kind == "tiny":
        return x.to(pipe.unet.dtype)
    vae = pipe.vae
    side = image_size(loaded)
    if x.shape[-1] != side:
        x = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)
    latents = vae.encode(x.to(vae.dtype)).latent_dist.mean
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return ((latents - shift) * vae.config.scaling_factor).to(pipe.unet.dtype)


def diffusion_loss(
    unet: torch.nn.Module,
    scheduler: Any,
    x0: torch.Tensor,
    cond: dict[str, Any],
    gen: torch.Generator,
    bf16: bool = False,
) -> torch.Tensor:
    """MSE between the UNet's prediction on noised `x0` and its target (timesteps and noise from `gen`)."""
    n = x0.shape[0]
    t = torch.randint(0, scheduler.config.num_train_timesteps, (n,), generator=gen)
    noise = torch.randn(x0.shape, generator=gen, dtype=torch.float32)
    a = scheduler.alphas_cumprod[t].view(-1, *([1] * (x0.dim() - 1))).to(x0.device)
    noise, t = noise.to(x0.device), t.to(x0.device)
    x0f = x0.float()
    xt = a.sqrt() * x0f + (1 - a).sqrt() * noise
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        target = noise
    elif kind == "v_prediction":
        target = a.sqrt() * noise - (1 - a).sqrt() * x0f
    elif kind == "sample":
        target = x0f
    else:
        raise FairdiffError(f"scheduler prediction_type {kind!r}: fairdiff trains epsilon, v_prediction or sample")
    device_type = x0.device.type
    ctx = torch.autocast(device_type, dtype=torch.bfloat16) if bf16 else nullcontext()
    with ctx:
        pred = unet(xt.to(x0.dtype), t, return_dict=False, **cond)[0]
    return F.mse_loss(pred.float(), target)
