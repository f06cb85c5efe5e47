"""The trainable part of a mitigation run: LoRA layers injected by PEFT, or the full weights of the same modules.

`make_trainable(loaded, cfg)` picks the modules (the cross-attention projections `cfg.modules` of the UNet's
`attn2` layers; with `target` text or both also the self-attention projections of the text encoder(s): MiniLM's
`attention.self.query/key/value` and `attention.output.dense` in the bundled model, CLIP's `self_attn.q_proj` ...
`out_proj` in SD / SDXL) and returns a `Trainable`:

- mode "lora": PEFT LoRA layers (`peft.LoraConfig`; `unet.add_adapter` from diffusers' PeftAdapterMixin, and
  `peft.inject_adapter_in_model` for a text encoder), rank `cfg.rank`, alpha `cfg.alpha`, initialized from
  `cfg.seed` (B = 0, so step 0 is the base model). `frozen()` turns the LoRA layers off (PEFT's
  `enable_adapters(False)`), `adapter()` reads them back with `peft.get_peft_model_state_dict` as a
  `fairdiff.adapters.LoRAAdapter`, and `restore()` removes them (the original Linear modules come back).
- mode "finetune": the `weight` of exactly the same Linear modules is trainable (biases and everything else stay
  frozen); `frozen()` swaps the original weights in for its duration, `restore()` puts them back.

Only what is trained is held twice: a full fine-tune keeps a copy of the trained weights, not of the pipeline.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from fairdiff.errors import FairdiffError
from fairdiff.models.attention import PROJECTIONS, cross_attention_layers

#: the text encoders' attention projections that stand for the UNet's to_q / to_k / to_v / to_out.0
TEXT_PROJECTIONS = {
    "to_q": ("attention.self.query", "self_attn.q_proj"),  # BERT (MiniLM), CLIP
    "to_k": ("attention.self.key", "self_attn.k_proj"),
    "to_v": ("attention.self.value", "self_attn.v_proj"),
    "to_out.0": ("attention.output.dense", "self_attn.out_proj"),
}
TEXT_COMPONENTS = ("text_encoder", "text_encoder_2")
ADAPTER_NAME = "default"


def component_targets(pipeline: Any, target: str, modules: list[str]) -> dict[str, list[str]]:
    """{component: [module names]} that a run with `target` (unet, text, both) trains: the `modules` projections
    of the UNet's cross-attention layers and / or their counterparts in each text encoder."""
    bad = [m for m in modules if m not in PROJECTIONS]
    if bad or not modules:
        raise FairdiffError(f"modules {modules}: choose one or more of {', '.join(PROJECTIONS)}")
    out: dict[str, list[str]] = {}
    if target in ("unet", "both"):
        out["unet"] = [f"{layer.name}.{m}" for layer in cross_attention_layers(pipeline.unet) for m in modules]
        if not out["unet"]:
            raise FairdiffError(f"{type(pipeline).__name__}: its UNet has no cross-attention layers to train")
    if target in ("text", "both"):
        suffixes = tuple(s for m in modules for s in TEXT_PROJECTIONS[m])
        for component in TEXT_COMPONENTS:
            encoder = getattr(pipeline, component, None)
            if not isinstance(encoder, nn.Module):
                continue
            names = [n for n, mod in encoder.named_modules() if isinstance(mod, nn.Linear) and n.endswith(suffixes)]
            if not names:
                raise FairdiffError(
                    f"--target {target}: the {component} ({type(encoder).__name__}) has no attention projections "
                    f"fairdiff knows ({', '.join(suffixes)})"
                )
            out[component] = names
        if not any(c in out for c in TEXT_COMPONENTS):
            raise FairdiffError(f"--target {target}: {type(pipeline).__name__} has no text encoder")
    return out


@dataclass
class Trainable:
    """What a run trains (see the module docstring). `params` maps "component.parameter name" to the trained
    tensors, in a fixed order (the optimizer's and the checkpoint's)."""

    pipeline: Any
    mode: str
    targets: dict[str, list[str]]
    rank: int = 0
    alpha: float = 0.0
    params: dict[str, nn.Parameter] = field(default_factory=dict)
    _originals: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    _grad_flags: dict[str, list[bool]] = field(default_factory=dict, repr=False)

    @property
    def models(self) -> dict[str, nn.Module]:
        return {c: getattr(self.pipeline, c) for c in self.targets}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The trained tensors (detached copies), for checkpoints and tests."""
        return {name: p.detach().clone() for name, p in self.params.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing, unexpected = sorted(set(self.params) - set(state)), sorted(set(state) - set(self.params))
        if missing or unexpected:
            raise FairdiffError(
                f"checkpoint does not fit this run's trainable layers (missing {missing[:3]}, unexpected "
                f"{unexpected[:3]})"
            )
        with torch.no_grad():
            for name, p in self.params.items():
                p.copy_(state[name])

    @contextmanager
    def frozen(self) -> Iterator[None]:
        """The base model for the duration (gradients off): LoRA layers disabled, or the original weights in."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        with torch.no_grad():
            if self.mode == "lora":
                layers = [m for model in self.models.values() for m in model.modules() if isinstance(m, BaseTunerLayer)]
                for layer in layers:
                    layer.enable_adapters(False)
                try:
                    yield
                finally:
                    for layer in layers:
                        layer.enable_adapters(True)
                return
            trained = {name: p.data for name, p in self.params.items()}
            for name, p in self.params.items():
                p.data = self._originals[name]
            try:
                yield
            finally:
                for name, p in self.params.items():
                    p.data = trained[name]

    def adapter(self, source: str = ""):
        """The trained LoRA layers as a `LoRAAdapter`: one component "model" for a UNet-only run (a plain PEFT
        directory), else one per pipeline component (unet/, text_encoder/, ... subdirectories)."""
        from peft import get_peft_model_state_dict

        from fairdiff.adapters.formats import MODEL, LoRAAdapter, LoRALayer

        if self.mode != "lora":
            raise FairdiffError("a full fine-tune has no LoRA layers to export")
        components = {}
        for component, model in self.models.items():
            state = get_peft_model_state_dict(model, adapter_name=ADAPTER_NAME)
            layers = {}
            for module in self.targets[component]:
                A = state[f"{module}.lora_A.weight"].detach().float().cpu().contiguous()
                B = state[f"{module}.lora_B.weight"].detach().float().cpu().contiguous()
                layers[module] = LoRALayer(A=A, B=B, alpha=self.alpha, scale=self.alpha / self.rank)
            components[component] = layers
        if set(components) == {"unet"}:
            components = {MODEL: components["unet"]}
        return LoRAAdapter(components, format="peft", source=source, config={"r": self.rank, "alpha": self.alpha})

    def restore(self) -> None:
        """Give the pipeline back as it was loaded: LoRA layers removed, or the original weights put back; the
        `requires_grad` flags as they were."""
        if self.mode == "lora":
            from diffusers.utils.peft_utils import recurse_remove_peft_layers

            for model in self.models.values():
                recurse_remove_peft_layers(model)
                if hasattr(model, "peft_config"):
                    del model.peft_config
                if hasattr(model, "_hf_peft_config_loaded"):
                    model._hf_peft_config_loaded = False
        else:
            with torch.no_grad():
                for name, p in self.params.items():
                    p.data = self._originals[name]
        for component, model in self.models.items():
            for p, flag in zip(model.parameters(), self._grad_flags[component], strict=True):
                p.requires_grad_(flag)


def make_trainable(pipeline: Any, mode: str, target: str, modules: list[str], rank: int, alpha: float, seed: int):
    """Put trainable layers into `pipeline` (see the module docstring); everything else is frozen."""
    targets = component_targets(pipeline, target, modules)
    trainable = Trainable(pipeline=pipeline, mode=mode, targets=targets, rank=rank, alpha=alpha)
    for component, model in trainable.models.items():
        trainable._grad_flags[component] = [p.requires_grad for p in model.parameters()]
        model.requires_grad_(False)
    if mode == "lora":
        from peft import LoraConfig, inject_adapter_in_model

        torch.manual_seed(seed)  # PEFT's kaiming init of A draws from the global generator
        for component, model in trainable.models.items():
            config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets[component], init_lora_weights=True)
            if component == "unet":
                model.add_adapter(config, adapter_name=ADAPTER_NAME)  # diffusers' PeftAdapterMixin
            else:
                inject_adapter_in_model(config, model, adapter_name=ADAPTER_NAME)
            for name, p in model.named_parameters():
                if ".lora_" in name:
                    p.requires_grad_(True)
                    trainable.params[f"{component}.{name}"] = p
    elif mode == "finetune":
        for component, model in trainable.models.items():
            named = dict(model.named_modules())
            for module in targets[component]:
                weight = named[module].weight
                weight.requires_grad_(True)
                key = f"{component}.{module}.weight"
                trainable.params[key] = weight
                trainable._originals[key] = weight.detach().clone()
    else:
        raise FairdiffError(f"unknown training mode {mode!r}; choose lora or finetune")
    return trainable
