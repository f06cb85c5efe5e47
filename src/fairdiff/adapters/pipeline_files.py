"""LoRA files for a whole pipeline: diffusers (`pytorch_lora_weights.safetensors`) and kohya / civitai.

Key names are mapped with diffusers' own converters (`diffusers.loaders.lora_conversion_utils`,
`diffusers.utils.state_dict_utils`), run on a dict of key *names* (each value is the original key), so the
mapping is diffusers' and the tensors are read afterwards, one at a time, straight into the adapter.

Scales follow the loaders the files were made for:
- diffusers: `lora_adapter_metadata` in the safetensors header (a LoraConfig per component, `unet.r`,
  `unet.lora_alpha`, ...) when present, else alpha = rank (scale 1), as `pipe.load_lora_weights` does
- kohya: scale = alpha / rank per module from `<name>.alpha`; a module without alpha has alpha = rank (kohya's
  and A1111's rule)
Text-encoder modules keep the `text_model.` prefix of the file; attach_adapters resolves it against the model
(transformers >= 5 dropped it from CLIPTextModel but not from CLIPTextModelWithProjection).
"""

from __future__ import annotations

import json
from types import SimpleNamespace

from fairdiff.adapters.formats import (
    MODEL,
    PIPELINE_COMPONENTS,
    LoRAAdapter,
    LoRALayer,
    TensorFile,
    check_lora_config,
    make_layer,
    pair_rank,
    peft_layers,
    peft_scale,
)
from fairdiff.errors import FairdiffError

_KOHYA_SUFFIXES = (".lora_down.weight", ".lora_up.weight", ".alpha")
_SGM = ("input_blocks", "middle_block", "output_blocks")


def _to_peft_names(component: str, names: dict[str, str], source: str) -> dict[str, tuple[str, str]]:
    """{diffusers-style key (no component prefix): original key} -> {module: (key of A, key of B)} with
    diffusers' own key conversion for a UNet or a text encoder."""
    from diffusers.utils.state_dict_utils import (
        DIFFUSERS_OLD_TO_DIFFUSERS,
        DIFFUSERS_TO_PEFT,
        convert_state_dict,
        convert_unet_state_dict_to_peft,
    )

    if component == "unet":
        peft = convert_unet_state_dict_to_peft(names)
    else:
        peft = convert_state_dict(convert_state_dict(names, DIFFUSERS_OLD_TO_DIFFUSERS), DIFFUSERS_TO_PEFT)
    pairs: dict[str, dict[str, str]] = {}
    for new, original in peft.items():
        for which in ("A", "B"):
            if new.endswith(f".lora_{which}.weight"):
                pairs.setdefault(new.removesuffix(f".lora_{which}.weight"), {})[which] = original
                break
        else:
            raise FairdiffError(f"adapter {source}: unknown key {original!r} (read as {component} {new!r})")
    out = {}
    for module, ab in pairs.items():
        if set(ab) != {"A", "B"}:
            have, missing = ("down", "up") if "A" in ab else ("up", "down")
            raise FairdiffError(f"adapter {source}: {next(iter(ab.values()))!r} has lora {have} but no lora {missing}")
        out[module] = (ab["A"], ab["B"])
    return out


def _diffusers_configs(f: TensorFile) -> dict[str, dict] | None:
    """Per-component LoraConfig dicts from the `lora_adapter_metadata` header entry, or None."""
    raw = f.metadata().get("lora_adapter_metadata")
    if not raw:
        return None
    try:
        flat = json.loads(raw)
    except ValueError as exc:
        raise FairdiffError(f"adapter {f.path}: lora_adapter_metadata is not valid JSON ({exc})") from None
    if not isinstance(flat, dict):
        raise FairdiffError(f"adapter {f.path}: lora_adapter_metadata must be a JSON object, got {raw[:40]!r}")
    configs: dict[str, dict] = {}
    for key, value in flat.items():
        component, _, name = key.partition(".")
        configs.setdefault(component, {})[name] = value
    return configs


def read_diffusers(f: TensorFile) -> LoRAAdapter:
    """A diffusers LoRA file: `unet.` / `text_encoder.` / `text_encoder_2.` keys in PEFT (`lora_A`), old
    (`lora.down`, `to_q_lora.down`) or text-encoder (`lora_linear_layer.down`) naming."""
    source = str(f.path)
    names: dict[str, dict[str, str]] = {}
    for key in f.names():
        component, _, rest = key.partition(".")
        if "lora" not in rest or rest.endswith(".alpha"):
            raise FairdiffError(f"adapter {source}: unknown key {key!r}; expected '<component>.<module>.lora_A.weight'")
        names.setdefault(component, {})[rest] = key
    configs = _diffusers_configs(f)
    components: dict[str, dict[str, LoRALayer]] = {}
    for component in PIPELINE_COMPONENTS:
        if component not in names:
            continue
        config = (configs or {}).get(component)
        if config is not None:
            check_lora_config(config, source)
        layers = {}
        for module, (key_a, key_b) in sorted(_to_peft_names(component, names[component], source).items()):
            A, B = f.get(key_a), f.get(key_b)
            rank = pair_rank(source, module, A, B, (key_a, key_b))
            alpha, scale = (float(rank), 1.0) if config is None else peft_scale(config, module, rank, source, key_a)
            layers[module] = make_layer(source, module, A, B, alpha, scale, (key_a, key_b))
        components[component] = layers
    return LoRAAdapter(components, format="diffusers", source=source, config=configs or {})


def read_model_lora(f: TensorFile) -> LoRAAdapter:
    """One model's LoRA file as diffusers' `ModelMixin.save_lora_adapter` writes it (`unet.save_lora_adapter`):
    PEFT keys without a component prefix (`down_blocks.0...to_q.lora_A.weight`) and the adapter's LoraConfig,
    unprefixed, in `lora_adapter_metadata`; without it alpha = rank (scale 1), as `load_lora_adapter` does. Its
    layers sit under the component `"model"` (attach_adapters puts them on the component that has them all)."""
    source = str(f.path)
    raw = f.metadata().get("lora_adapter_metadata")
    config = None
    if raw:
        try:
            config = json.loads(raw)
        except ValueError as exc:
            raise FairdiffError(f"adapter {source}: lora_adapter_metadata is not valid JSON ({exc})") from None
        check_lora_config(config, source)
    layers = peft_layers(f, config)
    return LoRAAdapter(
        {MODEL: layers}, format="diffusers", source=source, config={} if config is None else {MODEL: config}
    )


class _Alpha:
    """Stand-in for an alpha tensor while diffusers' converter renames keys (it calls `.item()`)."""

    def item(self) -> float:
        return 0.0


def read_kohya(f: TensorFile, unet_config=None) -> LoRAAdapter:
    """A kohya / civitai LoRA file for SD 1.x or SDXL (UNet keys in diffusers or sgm layout)."""
    from diffusers.loaders.lora_conversion_utils import (
        _convert_non_diffusers_lora_to_diffusers,
        _maybe_map_sgm_blocks_to_diffusers,
    )

    source = str(f.path)
    keys = f.names()
    keyset = set(keys)
    groups: dict[str, dict[str, str]] = {}
    for key in keys:
        suffix = next((s for s in _KOHYA_SUFFIXES if key.endswith(s)), None)
        if suffix is None or "." in key.removesuffix(suffix):
            raise FairdiffError(
                f"adapter {source}: unknown key {key!r}; kohya LoRA keys end in .lora_down.weight, "
                f".lora_up.weight or .alpha (LoHa, LoKr, DoRA and LoCon mid weights are not supported)"
            )
        groups.setdefault(key.removesuffix(suffix), {})[suffix] = key
    for name, group in groups.items():
        for have, missing in ((".lora_down.weight", ".lora_up.weight"), (".lora_up.weight", ".lora_down.weight")):
            if have in group and missing not in group:
                raise FairdiffError(f"adapter {source}: {group[have]!r} has no {name + missing!r}")
        if set(group) == {".alpha"}:
            raise FairdiffError(f"adapter {source}: {group['.alpha']!r} has no lora_down / lora_up weights")

    names: dict = {k: (_Alpha() if k.endswith(".alpha") else k) for k in keys}
    try:
        if any(p in k for k in keys for p in _SGM):
            if unet_config is None:
                unet_config = SimpleNamespace(layers_per_block=2)  # SD 1.x and SDXL
            elif isinstance(unet_config, dict):
                unet_config = SimpleNamespace(**unet_config)
            names = _maybe_map_sgm_blocks_to_diffusers(names, unet_config)
        converted, _ = _convert_non_diffusers_lora_to_diffusers(names)
    except (ValueError, KeyError, IndexError) as exc:
        raise FairdiffError(f"adapter {source}: kohya keys could not be mapped to diffusers modules ({exc})") from None

    by_component: dict[str, dict[str, str]] = {}
    for new, original in converted.items():
        component, _, rest = new.partition(".")
        by_component.setdefault(component, {})[rest] = original
    components: dict[str, dict[str, LoRALayer]] = {}
    for component in PIPELINE_COMPONENTS:
        if component not in by_component:
            continue
        layers = {}
        for module, (key_a, key_b) in sorted(_to_peft_names(component, by_component[component], source).items()):
            A, B = f.get(key_a), f.get(key_b)
            alpha_key = key_a.removesuffix(".lora_down.weight") + ".alpha"
            rank = pair_rank(source, module, A, B, (key_a, key_b))
            if alpha_key in keyset:
                alpha_tensor = f.get(alpha_key, integer_ok=True)  # diffusers reads an int alpha too
                if alpha_tensor.numel() != 1:
                    raise FairdiffError(f"adapter {source}: {alpha_key!r} has shape {tuple(alpha_tensor.shape)}, not 1")
                alpha = float(alpha_tensor.item())
            else:
                alpha = float(rank)
            layers[module] = make_layer(source, module, A, B, alpha, alpha / rank, (key_a, key_b))
        components[component] = layers
    return LoRAAdapter(components, format="kohya", source=source)
