"""`LoRASlots`: a Linear or Conv2d with K LoRA slots, y = base(x) + sum_k c_k s_k B_k A_k x.

- slots: A [K, r, in], B [K, out, r], scale s [K] (alpha / r of the adapter in the slot); an adapter
  of rank r_k < r fills the first r_k rows of A and columns of B and leaves zeros, so adapters of different
  ranks share a layer exactly
- combination: `weights` [K] (c_k); the layer adds the exact sum of scaled deltas, negative weights included,
  never mixing A of one adapter with B of another
- per-sample: `sample_weights` [B, K] (one weight row per sample, e.g. a one-hot slot index), so a batch
  with a different adapter per sample is one forward: x @ [A_k]^T -> scale per sample -> @ [B_k]^T
- merge folds the active combination into the base weight in fp32 and keeps the original tensor;
  unmerge puts that tensor back, so W0 is bit-identical after any number of cycles
- a fresh slot has B = 0, so it changes nothing until an adapter is copied in (hot-swap = copy into a slot)
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

SUPPORTED = (nn.Linear, nn.Conv2d)


class LoRASlots(nn.Module):
    """Wraps `base_layer` (nn.Linear or nn.Conv2d) with `num_slots` LoRA slots of rank up to `rank`."""

    def __init__(self, base_layer: nn.Module, num_slots: int, rank: int) -> None:
        super().__init__()
        if not isinstance(base_layer, SUPPORTED):
            names = ", ".join(t.__name__ for t in SUPPORTED)
            raise ValueError(f"LoRASlots wraps {names}; got {type(base_layer).__name__}.")
        if num_slots < 1 or rank < 1:
            raise ValueError(f"`num_slots` and `rank` must be >= 1, got {num_slots} and {rank}.")
        self.base_layer = base_layer
        weight = base_layer.weight
        if isinstance(base_layer, nn.Conv2d):
            if base_layer.groups != 1:
                raise ValueError(f"LoRASlots supports Conv2d with groups=1, got groups={base_layer.groups}.")
            in_features = weight.shape[1] * weight.shape[2] * weight.shape[3]  # in_channels * kh * kw
        else:
            in_features = weight.shape[1]
        out_features = weight.shape[0]
        kw = {"device": weight.device, "dtype": weight.dtype}
        self.lora_A = nn.Parameter(torch.zeros(num_slots, rank, in_features, **kw))  # (K, r, in)
        self.lora_B = nn.Parameter(torch.zeros(num_slots, out_features, rank, **kw))  # (K, out, r)
        self.register_buffer("scale", torch.zeros(num_slots))  # (K,) alpha / r per slot
        self.register_buffer("weights", torch.zeros(num_slots))  # (K,) active combination c_k
        self.sample_weights: torch.Tensor | None = None  # (B, K) per-sample combination, overrides `weights`
        self._original: torch.Tensor | None = None  # the base weight tensor while merged
        base_layer.weight.requires_grad_(False)
        if base_layer.bias is not None:
            base_layer.bias.requires_grad_(False)

    @property
    def num_slots(self) -> int:
        return self.lora_A.shape[0]

    @property
    def rank(self) -> int:
        return self.lora_A.shape[1]

    @property
    def merged(self) -> bool:
        return self._original is not None

    def set_slot(self, slot: int, A: torch.Tensor, B: torch.Tensor, scale: float) -> None:
        """Copy an adapter (A [r, in] or conv [r, in, kh, kw]; B [out, r] or [out, r, 1, 1]) into `slot`."""
        if self.merged:
            raise RuntimeError("unmerge before changing a slot of a merged layer")
        A = A.reshape(A.shape[0], -1)
        B = B.reshape(B.shape[0], -1)
        r = A.shape[0]
        if A.shape[1] != self.lora_A.shape[2] or B.shape != (self.lora_B.shape[1], r) or r > self.rank:
            raise ValueError(
                f"adapter A {tuple(A.shape)} / B {tuple(B.shape)} does not fit slots of rank <= {self.rank}, "
                f"in {self.lora_A.shape[2]}, out {self.lora_B.shape[1]}"
            )
        with torch.no_grad():
            self.lora_A[slot].zero_()
            self.lora_B[slot].zero_()
            self.lora_A[slot, :r].copy_(A)
            self.lora_B[slot, :, :r].copy_(B)
            self.scale[slot] = float(scale)

    def clear_slot(self, slot: int) -> None:
        with torch.no_grad():
            self.lora_A[slot].zero_()
            self.lora_B[slot].zero_()
            self.scale[slot] = 0.0
            self.weights[slot] = 0.0

    def delta_weight(self, weights: torch.Tensor | None = None) -> torch.Tensor:
        """sum_k c_k s_k B_k A_k in fp32, shaped like the base weight."""
        c = (self.weights if weights is None else weights).float() * self.scale  # (K,)
        delta = torch.einsum("k,kor,kri->oi", c, self.lora_B.float(), self.lora_A.float())  # (out, in)
        return delta.reshape(self.base_layer.weight.shape)

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the active combination into the base weight (computed in fp32); keeps the original tensor."""
        if self.merged:
            raise RuntimeError("layer is already merged")
        w = self.base_layer.weight
        self._original = w.data
        w.data = (self._original.float() + self.delta_weight()).to(self._original.dtype)

    @torch.no_grad()
    def unmerge(self) -> None:
        """Put the original base weight tensor back: bit-identical, whatever happened in between."""
        if not self.merged:
            raise RuntimeError("layer is not merged")
        self.base_layer.weight.data = self._original
        self._original = None

    def _coefficients(self, batch: int) -> torch.Tensor | None:
        """(B, K) per-sample or (1, K) shared coefficients c * s, or None when no slot is active."""
        if self.sample_weights is not None:
            if self.merged:
                raise RuntimeError("per-sample adapters need an unmerged layer")
            if self.sample_weights.shape != (batch, self.num_slots):
                raise ValueError(
                    f"`sample_weights` must be (batch={batch}, slots={self.num_slots}), "
                    f"got {tuple(self.sample_weights.shape)}"
                )
            c = self.sample_weights.to(self.scale) * self.scale
        else:
            if self.merged:
                return None
            c = (self.weights * self.scale)[None]
        return c if bool((c != 0).any()) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        c = self._coefficients(x.shape[0])
        if c is None:
            return y
        used = (c != 0).any(0).nonzero().flatten()  # slots with any weight in this batch
        k, r = used.numel(), self.rank
        A = self.lora_A[used].to(x.dtype)  # (k, r, in)
        B = self.lora_B[used].to(x.dtype)  # (k, out, r)
        coef = c[:, used].repeat_interleave(r, dim=1).to(x.dtype)  # (B or 1, k*r)
        if isinstance(self.base_layer, nn.Conv2d):
            conv = self.base_layer
            h = F.conv2d(x, A.reshape(k * r, *conv.weight.shape[1:]), None, conv.stride, conv.padding, conv.dilation)
            h = h * coef[:, :, None, None]  # (B, k*r, H', W')
            return y + F.conv2d(h, B.permute(1, 0, 2).reshape(-1, k * r, 1, 1))
        h = F.linear(x, A.reshape(k * r, -1))  # (B, ..., k*r)
        h = h * coef.reshape(coef.shape[0], *([1] * (x.dim() - 2)), k * r)
        return y + F.linear(h, B.permute(1, 0, 2).reshape(-1, k * r))  # (B, ..., out)


def inject_slots(model: nn.Module, patterns: Iterable[str], num_slots: int, rank: int) -> list[str]:
    """Wrap every Linear/Conv2d whose qualified name fully matches one of the regex `patterns`;
    returns the wrapped names. Freezes nothing else: call `model.requires_grad_(False)` first to train
    only the slots."""
    compiled = [re.compile(p) for p in patterns]
    targets = [
        (name, module)
        for name, module in model.named_modules()
        if any(p.fullmatch(name) for p in compiled) and not isinstance(module, LoRASlots)
    ]
    if not targets:
        raise ValueError(f"no module name matches {list(patterns)}")
    for name, module in targets:
        if not isinstance(module, SUPPORTED):
            names = ", ".join(t.__name__ for t in SUPPORTED)
            raise ValueError(f"module {name!r} is a {type(module).__name__}; LoRA slots support {names}.")
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LoRASlots(module, num_slots, rank))
    return [name for name, _ in targets]


def slotted_layers(model: nn.Module) -> Iterator[tuple[str, LoRASlots]]:
    """(name of the wrapped layer, LoRASlots) for every slotted layer in `model`."""
    for name, module in model.named_modules():
        if isinstance(module, LoRASlots):
            yield name, module


def merge_all(model: nn.Module) -> None:
    """Merge the active combination of every slotted layer (the model then runs at base-model cost)."""
    for _, layer in slotted_layers(model):
        layer.merge()


def unmerge_all(model: nn.Module) -> None:
    """Restore every merged layer's original base weight, bit for bit."""
    for _, layer in slotted_layers(model):
        if layer.merged:
            layer.unmerge()
