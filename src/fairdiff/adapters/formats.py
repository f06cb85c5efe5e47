"""Adapter files in memory and on disk: `LoRAAdapter`, the PEFT format, and `load_adapter` for any format.

An adapter is keyed per pipeline component: `components["unet"]["down_blocks.1...to_q"] = LoRALayer(A, B,
alpha, scale)`. A PEFT directory adapts one model, whichever it is, so its layers sit under the component
`"model"` (attach_adapters puts them on the pipeline component that has all their modules); a PEFT directory
with `unet/`, `text_encoder/`, `text_encoder_2/` subdirectories (what `write_peft` writes for a pipeline
adapter) keeps its components.

Formats (`load_adapter` tells them apart):
- PEFT: adapter_config.json + adapter_model.safetensors (this module)
- diffusers: pytorch_lora_weights.safetensors, keys `unet.<module>.lora_A.weight` (or older `lora.down`,
  `to_q_lora.down`, `lora_linear_layer.down`), alphas from the file's `lora_adapter_metadata` (pipeline_files);
  one model's file (`unet.save_lora_adapter`): keys `<module>.lora_A.weight` without a prefix, its LoraConfig
  in `lora_adapter_metadata` (pipeline_files)
- kohya / civitai: `lora_unet_<module>.lora_down.weight`, `lora_up`, `.alpha`; `lora_te_`, SDXL `lora_te1_` /
  `lora_te2_` (pipeline_files)

Reading is strict: unknown keys, an A without its B, rank mismatches, integer or mismatched dtypes, NaN/Inf
and truncated files each raise one `FairdiffError` that names the key and the shapes.

Memory: a safetensors file is opened with `safe_open` (memory-mapped) and read one tensor at a time; keys are
converted from their names alone (diffusers' converters run on key names, not on tensors), so loading holds
the adapter once, never the file's full state dict next to it. Pickled weights (`.bin`) are refused unless
`allow_pickle=True`; when allowed they are memory-mapped where torch can (`torch.load(mmap=True)`).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fairdiff.errors import FairdiffError
from fairdiff.files import swap_in_dir

PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_PICKLE = "adapter_model.bin"
MODEL = "model"  # the component of a single-model PEFT adapter
PIPELINE_COMPONENTS = ("unet", "text_encoder", "text_encoder_2")
_PEFT_PREFIX = "base_model.model."
_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<which>[AB])\.weight$")


@dataclass
class LoRALayer:
    """One layer's adapter: A (r, in[, kh, kw]), B (out, r[, 1, 1]), alpha and scale (alpha / r, or / sqrt(r)).
    `key` is the file key it was read from, for error messages."""

    A: torch.Tensor
    B: torch.Tensor
    alpha: float
    scale: float
    key: str = ""

    @property
    def rank(self) -> int:
        return self.A.shape[0]

    def delta(self) -> torch.Tensor:
        """s B A as a dense (out, in * kh * kw) matrix in fp32."""
        return self.scale * (self.B.reshape(self.B.shape[0], -1).float() @ self.A.reshape(self.rank, -1).float())


@dataclass
class LoRAAdapter:
    """LoRA layers per pipeline component: `components[component][module] = LoRALayer`."""

    components: dict[str, dict[str, LoRALayer]]
    format: str = "peft"  # peft, diffusers, kohya, composed
    source: str = ""
    config: dict = field(default_factory=dict)

    @property
    def layers(self) -> dict[str, LoRALayer]:
        """The layers of a one-component adapter (e.g. a PEFT directory); errors for a pipeline adapter."""
        if len(self.components) != 1:
            raise FairdiffError(
                f"adapter {self.source} spans components {sorted(self.components)}; use .components[name]"
            )
        return next(iter(self.components.values()))

    def items(self) -> Iterator[tuple[str, str, LoRALayer]]:
        """(component, module, layer) for every layer, components in pipeline order, modules sorted."""
        order = {c: i for i, c in enumerate((MODEL, *PIPELINE_COMPONENTS))}
        for component in sorted(self.components, key=lambda c: (order.get(c, 99), c)):
            for module in sorted(self.components[component]):
                yield component, module, self.components[component][module]

    def num_parameters(self) -> int:
        return sum(layer.A.numel() + layer.B.numel() for _, _, layer in self.items())


# -- reading tensors ------------------------------------------------------------------------------------


class TensorFile:
    """Lazy, checked access to a weights file: `.names()`, `.get(key)` one tensor at a time, `.metadata()`.
    safetensors files are memory-mapped; a pickle is read only with `allow_pickle=True`."""

    def __init__(self, path: Path, allow_pickle: bool = False) -> None:
        self.path = Path(path)
        self._handle = None
        self._state: dict | None = None
        if self.path.suffix == ".safetensors":
            from safetensors import safe_open

            try:
                self._handle = safe_open(str(self.path), framework="pt")
                self._keys = list(self._handle.keys())
            except Exception as exc:  # SafetensorError, OSError, header JSON errors
                raise FairdiffError(
                    f"adapter {self.path}: not a readable safetensors file, truncated or corrupt ({exc})"
                ) from None
            return
        if not allow_pickle:
            raise FairdiffError(
                f"adapter {self.path}: pickled weights are refused (they can run code); pass --allow-pickle"
            )
        try:
            try:
                state = torch.load(self.path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # old (non-zip) pickles cannot be memory-mapped
                state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for a bad pickle
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise FairdiffError(f"adapter {self.path}: could not read pickled weights ({first})") from None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise FairdiffError(f"adapter {self.path}: the pickle is not a dict of tensors")
        self._state = state
        self._keys = list(state)

    def names(self) -> list[str]:
        return list(self._keys)

    def metadata(self) -> dict[str, str]:
        return dict(self._handle.metadata() or {}) if self._handle is not None else {}

    def get(self, key: str, integer_ok: bool = False) -> torch.Tensor:
        """The tensor under `key`, checked: floating point (or, with `integer_ok`, an integer: a kohya alpha
        saved as int) and finite."""
        try:
            tensor = self._handle.get_tensor(key) if self._handle is not None else self._state[key]
        except Exception as exc:
            raise FairdiffError(
                f"adapter {self.path}: tensor {key!r} unreadable, truncated or corrupt ({exc})"
            ) from None
        if integer_ok and not tensor.is_floating_point() and not tensor.is_complex() and tensor.dtype != torch.bool:
            return tensor.double()
        if not tensor.is_floating_point():
            raise FairdiffError(
                f"adapter {self.path}: tensor {key!r} {tuple(tensor.shape)} has dtype {tensor.dtype}; "
                f"LoRA weights must be floating point"
            )
        if not torch.isfinite(tensor if tensor.element_size() > 1 else tensor.float()).all():  # fp8: no isfinite
            raise FairdiffError(f"adapter {self.path}: tensor {key!r} {tuple(tensor.shape)} contains NaN or Inf")
        return tensor


def pair_rank(source: str, module: str, A: torch.Tensor, B: torch.Tensor, keys: tuple[str, str]) -> int:
    """The rank of a LoRA pair after checking A (r, in[, kh, kw]) and B (out, r[, 1, 1]) agree, r >= 1."""
    key_a, key_b = keys
    ok = A.dim() in (2, 4) and B.dim() == A.dim() and A.shape[0] == B.shape[1] and A.shape[0] >= 1
    if ok and B.dim() == 4:
        ok = B.shape[2:] == (1, 1)
    if not ok:
        raise FairdiffError(
            f"adapter {source}: {module!r}: {key_a!r} {tuple(A.shape)} and {key_b!r} {tuple(B.shape)} do not form "
            f"a LoRA pair (A: (r, in) or (r, in, kh, kw); B: (out, r) or (out, r, 1, 1); r >= 1)"
        )
    return A.shape[0]


def make_layer(
    source: str, module: str, A: torch.Tensor, B: torch.Tensor, alpha: float, scale: float, keys: tuple[str, str]
) -> LoRALayer:
    """A `LoRALayer` after checking A (r, in[, kh, kw]) and B (out, r[, 1, 1]) agree; errors name the keys."""
    key_a, key_b = keys
    pair_rank(source, module, A, B, keys)
    if A.dtype != B.dtype:
        raise FairdiffError(
            f"adapter {source}: {module!r}: {key_a!r} is {A.dtype} but {key_b!r} is {B.dtype} (dtype mismatch)"
        )
    if not (math.isfinite(alpha) and math.isfinite(scale)):
        raise FairdiffError(f"adapter {source}: {module!r}: alpha {alpha} is not finite")
    return LoRALayer(A=A, B=B, alpha=float(alpha), scale=float(scale), key=key_a)


def pattern_value(patterns: dict, module: str, default):
    """PEFT's rank_pattern / alpha_pattern lookup: a key matches a module name that ends with it."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def peft_scale(config: dict, module: str, rank: int, source: str, key: str) -> tuple[float, float]:
    """(alpha, scale) of `module` under a PEFT LoraConfig dict; the rank must be the one the config says."""
    expected_r = pattern_value(config.get("rank_pattern") or {}, module, config.get("r", 8))
    if expected_r != rank:
        raise FairdiffError(f"adapter {source}: {key!r} has rank {rank}, the adapter config says {expected_r}")
    alpha = float(pattern_value(config.get("alpha_pattern") or {}, module, config.get("lora_alpha", 8)))
    return alpha, (alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank)


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_rank(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def check_lora_config(config, source: str) -> None:
    """A PEFT LoraConfig dict as fairdiff reads it: LORA only, `r` a whole number >= 1, `lora_alpha` a number,
    rank/alpha patterns mappings of valid regular expressions to ranks / numbers; unsupported flags refused."""
    if not isinstance(config, dict):
        raise FairdiffError(f"adapter {source}: the LoRA config must be a JSON object, got {type(config).__name__}")
    if config.get("peft_type", "LORA") != "LORA":
        raise FairdiffError(f"adapter {source}: peft_type {config.get('peft_type')!r} is not supported, only LORA")
    for flag in ("use_dora", "fan_in_fan_out", "lora_bias"):
        if config.get(flag):
            raise FairdiffError(f"adapter {source}: `{flag}: true` is not supported")
    if "r" in config and not _is_rank(config["r"]):
        raise FairdiffError(f"adapter {source}: `r` must be a whole number >= 1, got {config['r']!r}")
    if "lora_alpha" in config and not _is_number(config["lora_alpha"]):
        raise FairdiffError(f"adapter {source}: `lora_alpha` must be a finite number, got {config['lora_alpha']!r}")
    if not isinstance(config.get("use_rslora", False), bool | None):
        raise FairdiffError(f"adapter {source}: `use_rslora` must be true or false, got {config['use_rslora']!r}")
    for name, valid, expected in (
        ("rank_pattern", _is_rank, "a whole number >= 1"),
        ("alpha_pattern", _is_number, "a finite number"),
    ):
        patterns = config.get(name) or {}
        if not isinstance(patterns, dict):
            raise FairdiffError(f"adapter {source}: `{name}` must map module patterns to values, got {patterns!r}")
        for key, value in patterns.items():
            try:
                re.compile(rf"(.*\.)?({key})$")
            except re.error as exc:
                raise FairdiffError(
                    f"adapter {source}: `{name}` key {key!r} is not a regular expression ({exc})"
                ) from None
            if not valid(value):
                raise FairdiffError(f"adapter {source}: `{name}[{key!r}]` must be {expected}, got {value!r}")


# -- PEFT -----------------------------------------------------------------------------------------------


def _peft_dir(root: Path, allow_pickle: bool) -> dict[str, LoRALayer]:
    config_path = root / PEFT_CONFIG
    try:
        config = json.loads(config_path.read_text())
    except ValueError as exc:
        raise FairdiffError(f"adapter {config_path}: not valid JSON ({exc})") from None
    check_lora_config(config, str(root))
    weights = root / PEFT_WEIGHTS
    if not weights.is_file() and (root / PEFT_PICKLE).is_file():
        weights = root / PEFT_PICKLE
    if not weights.is_file():
        raise FairdiffError(f"adapter {root}: no {PEFT_WEIGHTS}")
    return peft_layers(TensorFile(weights, allow_pickle), config)


def peft_layers(f: TensorFile, config: dict | None) -> dict[str, LoRALayer]:
    """The layers of a file in PEFT key naming (`[base_model.model.]<module>.lora_A.weight` / `lora_B`), each
    scaled by `config` (a LoraConfig dict: r, lora_alpha, rank_pattern, alpha_pattern, use_rslora); None: no
    config, alpha = rank (scale 1), as diffusers' loaders do."""
    source = str(f.path)
    pairs: dict[str, dict[str, str]] = {}
    for key in f.names():
        match = _KEY.match(key)
        if not match:
            raise FairdiffError(f"adapter {source}: unknown key {key!r}; expected '<module>.lora_A.weight' / 'lora_B'")
        pairs.setdefault(match["module"].removeprefix(_PEFT_PREFIX), {})[match["which"]] = key
    if not pairs:
        raise FairdiffError(f"adapter {source}: no LoRA tensors")
    layers = {}
    for module, ab in sorted(pairs.items()):
        if set(ab) != {"A", "B"}:
            missing = ({"A", "B"} - set(ab)).pop()
            raise FairdiffError(f"adapter {source}: {module!r} has lora_{set(ab).pop()} but no lora_{missing}")
        A, B = f.get(ab["A"]), f.get(ab["B"])
        rank = pair_rank(source, module, A, B, (ab["A"], ab["B"]))
        alpha, scale = (float(rank), 1.0) if config is None else peft_scale(config, module, rank, source, ab["A"])
        layers[module] = make_layer(source, module, A, B, alpha, scale, (ab["A"], ab["B"]))
    return layers


def read_peft(path: str | Path, allow_pickle: bool = False) -> LoRAAdapter:
    """Read a PEFT LoRA directory (or its adapter_config.json), or a directory of per-component PEFT
    directories (`unet/`, `text_encoder/`, `text_encoder_2/`) as written by `write_peft`."""
    root = Path(path)
    if root.is_file():
        root = root.parent
    if (root / PEFT_CONFIG).is_file():
        return LoRAAdapter({MODEL: _peft_dir(root, allow_pickle)}, format="peft", source=str(root))
    parts = [c for c in PIPELINE_COMPONENTS if (root / c / PEFT_CONFIG).is_file()]
    if not parts:
        raise FairdiffError(f"adapter {root}: no {PEFT_CONFIG} (not a PEFT adapter directory)")
    components = {c: _peft_dir(root / c, allow_pickle) for c in parts}
    return LoRAAdapter(components, format="peft", source=str(root))


def _write_peft_dir(layers: dict[str, LoRALayer], root: Path, base_model: str | None) -> None:
    from safetensors.torch import save_file

    root.mkdir(parents=True, exist_ok=True)
    ranks = {m: layer.rank for m, layer in layers.items()}
    r = max(ranks.values(), key=list(ranks.values()).count)  # most common rank; the rest go in rank_pattern
    # alpha such that alpha / r reproduces each layer's scale exactly
    alphas = {m: layer.scale * layer.rank for m, layer in layers.items()}
    alpha = max(alphas.values(), key=list(alphas.values()).count)
    config = {
        "peft_type": "LORA",
        "r": r,
        "lora_alpha": alpha,
        "target_modules": sorted(layers),
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
    for m, layer in layers.items():
        tensors[f"{_PEFT_PREFIX}{m}.lora_A.weight"] = layer.A.contiguous()
        tensors[f"{_PEFT_PREFIX}{m}.lora_B.weight"] = layer.B.contiguous()
    save_file(tensors, str(root / PEFT_WEIGHTS))
    (root / PEFT_CONFIG).write_text(json.dumps(config, indent=2) + "\n")


def _replaceable(root: Path) -> bool:
    """Whether `write_peft` may replace `root`: absent, an empty directory, or a PEFT adapter directory."""
    if not root.exists():
        return True
    if not root.is_dir():
        return False
    return (
        not any(root.iterdir())
        or (root / PEFT_CONFIG).is_file()
        or any((root / c / PEFT_CONFIG).is_file() for c in PIPELINE_COMPONENTS)
    )


def write_peft(adapter: LoRAAdapter, path: str | Path, base_model: str | None = None) -> Path:
    """Write `adapter` as PEFT: one directory for a one-model adapter (`PeftModel.from_pretrained` reads it),
    one subdirectory per component (`unet/`, `text_encoder/`, ...) for a pipeline adapter.

    The adapter is written to a temporary sibling directory that then replaces `path` whole: nothing of an
    adapter written there before survives (its other components, its records), and a crash never leaves a
    half-written adapter. An existing `path` must be empty or a PEFT adapter directory; anything else is
    refused rather than deleted."""
    root = Path(path)
    parts = {c: layers for c, layers in adapter.components.items() if layers}
    if not parts:
        raise FairdiffError(f"adapter {adapter.source}: no layers to write")
    odd = sorted(set(parts) - set(PIPELINE_COMPONENTS))
    if set(parts) != {MODEL} and odd:
        raise FairdiffError(
            f"adapter {adapter.source}: components {odd} cannot be written next to others; a pipeline adapter "
            f"has {list(PIPELINE_COMPONENTS)} (a one-model adapter only '{MODEL}')"
        )
    if not _replaceable(root):
        raise FairdiffError(f"{root} exists and is not a PEFT adapter directory (or empty); refusing to replace it")
    target = root.resolve()  # a real parent and name, also for "." or "out/"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.writing-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        if set(parts) == {MODEL}:
            _write_peft_dir(parts[MODEL], tmp, base_model)
        else:
            for component, layers in parts.items():
                _write_peft_dir(layers, tmp / component, base_model)
        swap_in_dir(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


# -- any format -----------------------------------------------------------------------------------------


def detect_format(keys: list[str]) -> str:
    """'kohya', 'diffusers' or 'peft-weights' from a weights file's key names; errors name a key it can't place."""
    if not keys:
        raise FairdiffError("the file holds no tensors")
    if all(k.startswith(("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")) for k in keys):
        return "kohya"
    prefixes = tuple(f"{c}." for c in PIPELINE_COMPONENTS)
    if all(k.startswith(prefixes) for k in keys):
        return "diffusers"
    if all(k.startswith(_PEFT_PREFIX) for k in keys):
        return "peft-weights"
    if all(_KEY.match(k) for k in keys):  # one model's LoRA without a prefix: diffusers' `unet.save_lora_adapter`
        return "model"
    odd = next(
        (k for k in keys if not k.startswith(("lora_unet_", "lora_te", *prefixes))),
        keys[0],
    )
    raise FairdiffError(
        f"unknown key {odd!r}: not a PEFT, diffusers (unet./text_encoder. or one model's <module>.lora_A.weight) "
        "or kohya (lora_unet_/lora_te_) LoRA"
    )


def resolve_adapter_file(path: Path) -> Path:
    """The weights file (or PEFT directory) to read for `path`: a file, a PEFT directory, or a directory
    holding exactly one LoRA weights file (pytorch_lora_weights.safetensors preferred)."""
    try:
        exists = path.exists()
    except OSError as exc:  # e.g. a name too long for the filesystem
        raise FairdiffError(f"adapter {str(path)[:80]!r}: not a usable path ({exc.strerror or exc})") from None
    if not exists:
        raise FairdiffError(f"adapter {path}: no such file or directory")
    if path.is_file():
        return path.parent if path.name in (PEFT_CONFIG, PEFT_WEIGHTS, PEFT_PICKLE) else path
    if (path / PEFT_CONFIG).is_file() or any((path / c / PEFT_CONFIG).is_file() for c in PIPELINE_COMPONENTS):
        return path
    for name in ("pytorch_lora_weights.safetensors", "pytorch_lora_weights.bin"):
        if (path / name).is_file():
            return path / name
    files = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".pt", ".ckpt"))
    if len(files) != 1:
        raise FairdiffError(f"adapter {path}: expected one weights file or a PEFT directory, found {len(files)} files")
    return files[0]
