"""The changes of LoRA adapters applied as activation offsets (steering vectors) instead of weight changes.

A LoRA changes a projection y = W x into y = (W + ΔW) x with ΔW = s B A. Its activation twin adds an input-
independent offset to the projection's output instead, the change the weight edit makes on average over the
tokens of the adapter's own target prompt:

    o_i = ΔW_i ē_i,   ē_i = (1 / L) Σ_t e_t(target prompt of adapter i)    (all L token rows the UNet attends to)
    y   = W x + Σ_i w_i o_i                                               (every token, every image, both CFG halves)

for every projection an adapter edits (the library's: cross-attention `to_k` and `to_v`). On `to_k` an offset
shared by all keys adds the same q·o to every attention logit of a query, which softmax removes, so it changes
nothing but rounding; on `to_v` it shifts every value, so the attention output moves by o (the weights sum to 1)
whatever the prompt: this is what makes steering input-independent, and why it reaches prompts no adapter targets.

`install_offsets` is a context manager that registers one forward hook per projection and removes them on exit
(also on an exception); the weights are never touched, so the model is back exactly as it was.

Written by hand: a forward hook that adds a vector is three lines; steering libraries (e.g. for LLMs) wrap the same
hook around transformer blocks, not around diffusers' attention projections.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from fairdiff.errors import FairdiffError


def mean_embeddings(loaded, prompts: Sequence[str]) -> torch.Tensor:
    """ē per prompt: the mean of the token embeddings the UNet cross-attends to, (P, d) float64 on the CPU."""
    from fairdiff.mitigate.edit import encode_texts

    embeds, _, _ = encode_texts(loaded, list(prompts))  # (P, L, d)
    return embeds.mean(dim=1)


def adapter_offsets(adapter, mean: torch.Tensor) -> dict[str, torch.Tensor]:
    """{module name: o = s B (A ē)} (out,) float64 for every layer of one LoRA (`LoRAAdapter`, Linear layers only)."""
    out = {}
    for _, module, layer in adapter.items():
        if layer.A.dim() != 2:
            raise FairdiffError(f"adapter {adapter.source}: {module!r} is a conv layer; offsets support Linear layers")
        if layer.A.shape[1] != mean.shape[0]:
            raise FairdiffError(
                f"adapter {adapter.source}: {module!r} takes {layer.A.shape[1]}-d inputs, the mean embedding is "
                f"{mean.shape[0]}-d"
            )
        out[module] = layer.scale * (layer.B.double() @ (layer.A.double() @ mean.double()))
    return out


def stack_offsets(
    adapters: Sequence, means: torch.Tensor, weights: Sequence[float] | None = None
) -> dict[str, torch.Tensor]:
    """Σ_i w_i o_i per module for adapters i with mean embeddings means[i] (weights default 1)."""
    weights = [1.0] * len(adapters) if weights is None else list(weights)
    if len(weights) != len(adapters) or len(means) != len(adapters):
        raise FairdiffError(f"{len(adapters)} adapters, {len(means)} mean embeddings and {len(weights)} weights")
    total: dict[str, torch.Tensor] = {}
    for adapter, mean, w in zip(adapters, means, weights, strict=True):
        for module, o in adapter_offsets(adapter, mean).items():
            total[module] = total.get(module, torch.zeros_like(o)) + w * o
    return total


@contextmanager
def install_offsets(model: nn.Module, offsets: Mapping[str, torch.Tensor]) -> Iterator[None]:
    """Add offsets[name] to the output of module `name` of `model` (a Linear) for the block; hooks removed on exit.
    Every name and shape is checked before any hook is installed."""
    modules = dict(model.named_modules())
    plan = []
    for name, o in offsets.items():
        module = modules.get(name)
        if not isinstance(module, nn.Linear):
            kind = "no module" if module is None else type(module).__name__
            raise FairdiffError(f"activation offset {name!r}: expected a Linear of the model, found {kind}")
        if o.dim() != 1 or o.shape[0] != module.out_features or not torch.isfinite(o).all():
            raise FairdiffError(
                f"activation offset {name!r}: expected {module.out_features} finite values, got {tuple(o.shape)}"
            )
        plan.append((module, o.detach().clone()))
    handles = []
    try:
        for module, o in plan:

            def hook(_mod, _inputs, output, o=o):
                return output + o.to(device=output.device, dtype=output.dtype)

            handles.append(module.register_forward_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()
