"""Training of mitigations: one resumable loop for every method (fairness LoRA by distributional alignment or
on balanced renders, and the same recipe as a full fine-tune of W).

THE INTERFACE BETWEEN THE LOOP AND A METHOD (kept stable; the loop and the methods are written against it):

- `MitigateConfig`: everything a run needs (stored in the run's checkpoint and in the adapter's card).
- `TrainContext`: what a method gets: the loaded pipeline with its trainable parameters (LoRA layers injected by
  PEFT into `cfg.modules` of `cfg.target`, or the full weights of those modules for `finetune`), the training
  prompts (from the training suite, never an evaluation suite), the mix aimed at, the device, the world
  classifier (differentiable) where the method needs one, and `frozen()`: a context manager in which the model
  draws as the frozen base (LoRA layers disabled; for a full fine-tune, a frozen copy).
- A method is a class registered with `@register_method("name")`, built as `Method(ctx)`, whose
  `loss(step) -> (loss tensor, stats {name: float})` returns the loss of one optimizer step (a function of
  `step` and the config seed only, so a resumed run equals an uninterrupted one). The loop does the rest:
  optimizer, clipping, logging (JSON lines), progress, checkpoints, export.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from fairdiff.errors import FairdiffError

METHODS: dict[str, type] = {}


def register_method(name: str) -> Callable[[type], type]:
    def wrap(cls: type) -> type:
        cls.method_name = name
        METHODS[name] = cls
        return cls

    return wrap


@dataclass
class MitigateConfig:
    """One training run. `mode` "lora" trains LoRA layers (rank, alpha) on `modules`; "finetune" the full weights of
    the same modules. `mix` is {attribute: {value: probability}} (`fairdiff.mix`)."""

    method: str = "align"  # a key of METHODS: "align" (Shen et al. 2024), "balanced" (diffusion loss on renders)
    mode: str = "lora"  # "lora" or "finetune"
    target: str = "unet"  # "unet", "text" or "both": which component(s) get trainable layers
    modules: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])  # of attn2 layers
    rank: int = 8
    alpha: float = 8.0
    lr: float = 1e-3
    steps: int = 300
    batch_size: int = 32
    seed: int = 0
    mix: dict[str, dict[str, float]] = field(default_factory=dict)
    train_suite: str = "world-train"
    sample_steps: int = 10  # denoising steps of the images a method draws during training (align)
    checkpoint_every: int = 50
    autocast: str = "auto"
    method_options: dict[str, Any] = field(default_factory=dict)  # method-specific knobs (documented per method)


@dataclass
class TrainContext:
    """What a method sees (see the module docstring)."""

    loaded: Any  # fairdiff.models.loading.LoadedModel, trainable layers in place
    cfg: MitigateConfig
    prompts: list[str]  # training prompts, each a suite prompt text
    mix: dict[str, dict[str, float]]
    device: Any  # torch.device
    classifier: Any = None  # fairdiff.world.classifier.WorldClassifier (eval mode, frozen) or None
    frozen: Callable[[], AbstractContextManager[None]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def frozen_model(self) -> AbstractContextManager[None]:
        if self.frozen is None:
            raise FairdiffError("this training run has no frozen base model to compare with")
        return self.frozen()


def method_class(name: str) -> type:
    if name not in METHODS:
        raise FairdiffError(f"unknown mitigation method {name!r}; choose one of: {', '.join(sorted(METHODS))}")
    return METHODS[name]
