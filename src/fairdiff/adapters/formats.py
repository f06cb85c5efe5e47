"""Adapter files: read and write the PEFT format (adapter_config.json + adapter_model.safetensors).

An adapter is a dict module name -> (A, B, scale). Reading is strict: unknown keys, an A without its B,
rank mismatches, NaN/Inf and truncated files each raise one `FairdiffError` that names the key and the
shapes. Tensors are read one at a time from the safetensors file (no second full copy in memory);
pickled weights (`.bin`) are refused unless `allow_pickle=True`.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fairdiff.errors import FairdiffError

PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_PICKLE = "adapter_model.bin"
_PEFT_PREFIX = "base_model.model."
_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<which>[AB])\.weight$")


@dataclass
class LoRALayer:
    """One layer's adapter: A (r, in[, kh, kw]), B (out, r[, 1, 1]) and its scale (alpha / r, or / sqrt(r))."""

    A: torch.Tensor
    B: torch.Tensor
    alpha: float
    scale: float

    @property
    def rank(self) -> int:
        return self.A.shape[0]


@dataclass
class LoRAAdapter:
    layers: dict[str, LoRALayer]
    format: str = "peft"
    source: str = ""
    config: dict = field(default_factory=dict)


def _pattern_value(patterns: dict, module: str, default):
    """PEFT's rank_pattern / alpha_pattern lookup: a key matches a module name that ends with it."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def _check_finite(key: str, tensor: torch.Tensor, source: str) -> None:
    if not torch.isfinite(tensor).all():
        raise FairdiffError(f"adapter {source}: tensor {key!r} {tuple(tensor.shape)} contains NaN or Inf")


def _read_tensors(path: Path, allow_pickle: bool):
    """Yield (key, tensor) from a safetensors file one at a time (or a pickle, if allowed)."""
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                for key in f.keys():  # noqa: SIM118 (safe_open has no __iter__)
                    yield key, f.get_tensor(key)
        except SafetensorError as exc:
            raise FairdiffError(
                f"adapter {path}: not a readable safetensors file, truncated or corrupt ({exc})"
            ) from None
        return
    if not allow_pickle:
        raise FairdiffError(f"adapter {path}: pickled weights are refused (they can run code); pass --allow-pickle")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad pickle
        raise FairdiffError(f"adapter {path}: could not read pickled weights ({exc})") from None
    yield from state.items()


def read_peft(path: str | Path, allow_pickle: bool = False) -> LoRAAdapter:
    """Read a PEFT LoRA adapter directory (or its adapter_config.json's directory)."""
    root = Path(path)
    if root.is_file():
        root = root.parent
    config_path = root / PEFT_CONFIG
    if not config_path.is_file():
        raise FairdiffError(f"adapter {root}: no {PEFT_CONFIG} (not a PEFT adapter directory)")
    try:
        config = json.loads(config_path.read_text())
    except ValueError as exc:
        raise FairdiffError(f"adapter {config_path}: not valid JSON ({exc})") from None
    if config.get("peft_type", "LORA") != "LORA":
        raise FairdiffError(f"adapter {root}: peft_type {config.get('peft_type')!r} is not supported, only LORA")
    for flag in ("use_dora", "fan_in_fan_out"):
        if config.get(flag):
            raise FairdiffError(f"adapter {root}: `{flag}: true` is not supported")
    weights = root / PEFT_WEIGHTS
    if not weights.is_file() and (root / PEFT_PICKLE).is_file():
        weights = root / PEFT_PICKLE
    if not weights.is_file():
        raise FairdiffError(f"adapter {root}: no {PEFT_WEIGHTS}")

    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in _read_tensors(weights, allow_pickle):
        match = _KEY.match(key)
        if not match:
            raise FairdiffError(f"adapter {weights}: unknown key {key!r}; expected '<module>.lora_A.weight' / 'lora_B'")
        _check_finite(key, tensor, str(weights))
        module = match["module"].removeprefix(_PEFT_PREFIX)
        parts.setdefault(module, {})[match["which"]] = tensor
    if not parts:
        raise FairdiffError(f"adapter {weights}: no LoRA tensors")

    r_default, alpha_default = config.get("r", 8), config.get("lora_alpha", 8)
    layers = {}
    for module, ab in sorted(parts.items()):
        if set(ab) != {"A", "B"}:
            missing = ({"A", "B"} - set(ab)).pop()
            raise FairdiffError(f"adapter {weights}: {module!r} has lora_{set(ab).pop()} but no lora_{missing}")
        A, B = ab["A"], ab["B"]
        if A.shape[0] != B.shape[1]:
            raise FairdiffError(
                f"adapter {weights}: {module!r}: lora_A {tuple(A.shape)} and lora_B {tuple(B.shape)} disagree on rank"
            )
        r = A.shape[0]
        expected_r = _pattern_value(config.get("rank_pattern") or {}, module, r_default)
        if expected_r != r:
            raise FairdiffError(f"adapter {weights}: {module!r} has rank {r}, adapter_config.json says {expected_r}")
        alpha = float(_pattern_value(config.get("alpha_pattern") or {}, module, alpha_default))
        scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
        layers[module] = LoRALayer(A=A, B=B, alpha=alpha, scale=scale)
    return LoRAAdapter(layers=layers, format="peft", source=str(root), config=config)


def write_peft(adapter: LoRAAdapter, path: str | Path, base_model: str | None = None) -> Path:
    """Write `adapter` as a PEFT LoRA directory; PEFT's `PeftModel.from_pretrained` reads it back."""
    from safetensors.torch import save_file

    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    ranks = {m: layer.rank for m, layer in adapter.layers.items()}
    r = max(ranks.values(), key=list(ranks.values()).count)  # most common rank; the rest go in rank_pattern
    # alpha such that alpha / r reproduces each layer's scale exactly
    alphas = {m: layer.scale * layer.rank for m, layer in adapter.layers.items()}
    alpha = max(alphas.values(), key=list(alphas.values()).count)
    config = {
        "peft_type": "LORA",
        "r": r,
        "lora_alpha": alpha,
        "target_modules": sorted(adapter.layers),
        "rank_pattern": {f"^{re.escape(m)}": k for m, k in ranks.items() if k != r},
        "alpha_pattern": {f"^{re.escape(m)}": a for m, a in alphas.items() if a != alpha},
        "use_rslora": False,
        "use_dora": False,
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "base_model_name_or_path": base_model,
        "task_type": None,
    }
    tensors = {}
    for m, layer in adapter.layers.items():
        tensors[f"{_PEFT_PREFIX}{m}.lora_A.weight"] = layer.A.contiguous()
        tensors[f"{_PEFT_PREFIX}{m}.lora_B.weight"] = layer.B.contiguous()
    save_file(tensors, str(root / PEFT_WEIGHTS))
    (root / PEFT_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return root
