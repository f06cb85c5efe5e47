"""Read a LoRA adapter in any supported format: a PEFT directory, a diffusers or a kohya/civitai file (the format is
told by the directory layout and the key names)."""

from __future__ import annotations

from pathlib import Path

from fairdiff.adapters.formats import (
    PEFT_CONFIG,
    LoRAAdapter,
    TensorFile,
    detect_format,
    read_peft,
    resolve_adapter_file,
)
from fairdiff.adapters.pipeline_files import read_diffusers, read_kohya, read_model_lora
from fairdiff.errors import FairdiffError


def load_adapter(path: str | Path, allow_pickle: bool = False, unet_config=None) -> LoRAAdapter:
    """Read a LoRA adapter in any supported format (PEFT directory, diffusers or kohya file), detected from
    the directory layout and the key names. `unet_config` (an object or dict with `layers_per_block`) maps
    kohya SDXL keys in the sgm layout (`input_blocks_4_1_...`); without it, 2 (SD 1.x and SDXL) is assumed."""
    target = resolve_adapter_file(Path(path).expanduser())
    if target.is_dir():
        return read_peft(target, allow_pickle)
    f = TensorFile(target, allow_pickle)
    try:
        kind = detect_format(f.names())
    except FairdiffError as exc:
        raise FairdiffError(f"adapter {target}: {exc}") from None
    if kind == "peft-weights":
        raise FairdiffError(f"adapter {target}: PEFT weights need their {PEFT_CONFIG} next to them")
    if kind == "kohya":
        return read_kohya(f, unet_config=unet_config)
    if kind == "model":  # diffusers' per-model save (`unet.save_lora_adapter`): keys without `unet.`
        return read_model_lora(f)
    return read_diffusers(f)
