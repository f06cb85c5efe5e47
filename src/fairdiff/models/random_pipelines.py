"""Tiny randomly initialized SD 1.x and SDXL pipelines, built from config dicts (no download).

They exercise the real checkpoint code path (save to a directory, load with `from_pretrained`, generate)
in tests and benchmarks. The tokenizer is a byte-level CLIP tokenizer with no merges (one token per
character), written next to the pipeline so nothing needs the hub.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

_CLIP_TEXT = dict(
    bos_token_id=0,
    eos_token_id=2,
    hidden_size=32,
    intermediate_size=37,
    layer_norm_eps=1e-05,
    num_attention_heads=4,
    num_hidden_layers=2,
    pad_token_id=1,
    vocab_size=1000,
    hidden_act="gelu",
    projection_dim=32,
)
_VAE = dict(
    block_out_channels=[32, 64],
    in_channels=3,
    out_channels=3,
    down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
    up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
    latent_channels=4,
    norm_num_groups=32,
)
SD_UNET = dict(
    block_out_channels=(32, 64),
    layers_per_block=1,
    sample_size=16,
    in_channels=4,
    out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    cross_attention_dim=32,
    norm_num_groups=32,
)
SDXL_UNET = dict(
    block_out_channels=(32, 64),
    layers_per_block=1,
    sample_size=16,
    in_channels=4,
    out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=(2, 4),
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=8,
    transformer_layers_per_block=(1, 2),
    projection_class_embeddings_input_dim=80,  # 6 time ids x 8 + 32 pooled text dims
    cross_attention_dim=64,  # the two text encoders' hidden states, concatenated
    norm_num_groups=32,
)


def _byte_symbols() -> list[str]:
    """GPT-2/CLIP's printable stand-in for each of the 256 bytes (printable bytes map to themselves)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    return [chr(b) if b in keep else chr(next(extra)) for b in range(256)]


def byte_level_clip_tokenizer(directory: Path | None = None):
    """A CLIP tokenizer whose vocabulary is the 256 byte symbols (with and without `</w>`), no merges."""
    from transformers import CLIPTokenizer

    directory = Path(directory or tempfile.mkdtemp(prefix="fairdiff-tok-"))
    directory.mkdir(parents=True, exist_ok=True)
    symbols = _byte_symbols()
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for s in symbols:
        vocab.setdefault(s, len(vocab))
        vocab.setdefault(s + "</w>", len(vocab))
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(vocab=str(directory / "vocab.json"), merges=str(directory / "merges.txt"), model_max_length=16)


def tiny_sd_pipeline(seed: int = 0):
    """A random SD 1.x-shaped `StableDiffusionPipeline` (64x64 images, 16x16 latents)."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**SD_UNET)
    vae = AutoencoderKL(**_VAE)
    text_encoder = CLIPTextModel(CLIPTextConfig(**_CLIP_TEXT))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False)
    return StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=byte_level_clip_tokenizer(),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def tiny_sdxl_pipeline(seed: int = 0):
    """A random SDXL-shaped `StableDiffusionXLPipeline` (two text encoders, text_time conditioning)."""
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**SDXL_UNET)
    vae = AutoencoderKL(**_VAE)
    text_encoder = CLIPTextModel(CLIPTextConfig(**_CLIP_TEXT))
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**_CLIP_TEXT))
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="leading",
    )
    return StableDiffusionXLPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=byte_level_clip_tokenizer(),
        tokenizer_2=byte_level_clip_tokenizer(),
        scheduler=scheduler,
    )


def save_tiny_clip(directory: Path, seed: int = 0, projection_dim: int = 16) -> None:
    """A random CLIP (32-dim, 2 layers, 32x32 images, patch 8) + byte-level tokenizer + image processor."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    tokenizer = byte_level_clip_tokenizer(directory / "tokenizer-files")
    tokenizer.model_max_length = 77  # the helper's 16 would cut every prompt to its first 14 characters
    tower = dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2)
    config = CLIPConfig(
        text_config=dict(
            **tower,
            vocab_size=len(tokenizer),
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
            max_position_embeddings=77,
        ),
        vision_config=dict(**tower, image_size=32, patch_size=8),
        projection_dim=projection_dim,
    )
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(directory)
