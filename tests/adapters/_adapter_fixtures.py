"""Shared helpers for adapter tests: random non-zero LoRA weights, kohya keys written by hand, model outputs."""

from __future__ import annotations

import re

import torch
from torch import nn

UNET_ATTN = r".*attn[12]\.(to_q|to_k|to_v|to_out\.0)"
TEXT_ATTN = r".*self_attn\.(q_proj|k_proj|v_proj|out_proj)"


def random_lora(model: nn.Module, pattern: str, rank: int, seed: int, std: float = 0.2) -> dict:
    """{module: (A, B)} with random non-zero A (r, in[, kh, kw]) and B (out, r[, 1, 1]) for every Linear /
    Conv2d whose name fully matches `pattern`."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, module in model.named_modules():
        if not re.fullmatch(pattern, name) or not isinstance(module, nn.Linear | nn.Conv2d):
            continue
        w = module.weight
        A = torch.randn(rank, *w.shape[1:], generator=g) * std
        B = torch.randn(w.shape[0], rank, *([1, 1] if w.dim() == 4 else []), generator=g) * std
        out[name] = (A, B)
    assert out, pattern
    return out


def sgm_name(module: str, layers_per_block: int) -> str:
    """The sgm (kohya SDXL) spelling of a diffusers UNet attention module name."""
    step = layers_per_block + 1
    m = re.match(r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.*)", module)
    if m:
        return f"input_blocks.{1 + int(m[1]) * step + int(m[2])}.1.{m[3]}"
    m = re.match(r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.*)", module)
    if m:
        return f"output_blocks.{int(m[1]) * step + int(m[2])}.1.{m[3]}"
    m = re.match(r"mid_block\.attentions\.0\.(.*)", module)
    assert m, module
    return f"middle_block.1.{m[1]}"


def kohya_keys(prefix: str, layers: dict, alpha: float, rename=lambda m: m) -> dict[str, torch.Tensor]:
    """kohya naming: `<prefix><module with . -> _>.lora_down.weight` (A), `.lora_up.weight` (B), `.alpha`."""
    out = {}
    for module, (A, B) in layers.items():
        name = prefix + rename(module).replace(".", "_")
        out[f"{name}.lora_down.weight"] = A.contiguous()
        out[f"{name}.lora_up.weight"] = B.contiguous()
        out[f"{name}.alpha"] = torch.tensor(float(alpha))
    return out


def unet_inputs(unet, seed: int = 0, batch: int = 2) -> dict:
    g = torch.Generator().manual_seed(seed)
    cfg = unet.config
    size = cfg.sample_size
    kwargs = {
        "sample": torch.randn(batch, cfg.in_channels, size, size, generator=g),
        "timestep": torch.tensor([10, 500][:batch] + [700] * max(0, batch - 2)),
        "encoder_hidden_states": torch.randn(batch, 7, cfg.cross_attention_dim, generator=g),
    }
    if cfg.addition_embed_type == "text_time":
        pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
        kwargs["added_cond_kwargs"] = {
            "text_embeds": torch.randn(batch, pooled, generator=g),
            "time_ids": torch.tensor([[16.0, 16.0, 0.0, 0.0, 16.0, 16.0]] * batch),
        }
    return kwargs


@torch.no_grad()
def outputs(pipe) -> dict[str, torch.Tensor]:
    """UNet and text-encoder outputs of a pipeline on fixed random inputs."""
    ids = torch.randint(3, 1000, (2, 9), generator=torch.Generator().manual_seed(1))
    out = {"unet": pipe.unet(**unet_inputs(pipe.unet)).sample}
    for name in ("text_encoder", "text_encoder_2"):
        te = getattr(pipe, name, None)
        if te is not None:
            out[name] = te(ids).last_hidden_state
    return out
