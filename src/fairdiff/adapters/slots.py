"""`LoRASlots`: a Linear or Conv2d with K LoRA slots, y = base(x) + sum_k c_k s_k B_k A_k x.

- slots: A [K, r, in], B [K, out, r], scale s [K] (alpha / r of the adapter in the slot); an adapter
  of rank r_k < r fills the first r_k rows of A and columns of B and leaves zeros, so adapters of different
  ranks share a layer exactly
- combination: `weights` [K] (c_k); the layer adds the exact sum of scaled deltas, negative weights included,
  never mixing A of one adapter with B of another
- per-sample: `sample_weights` [B, K] (one weight row per sample, e.g. a one-hot slot index), so a batch
  with a different adapter per sample is one forward. One-hot rows take the gather path (A and B of each
  sample's slot gathered, then one batched matmul: the cost of a single adapter); mixed rows take the
  stacked path (x @ [A_k]^T -> scale per sample -> @ [B_k]^T); rows that are all equal take the shared path.
- batch rule: a layer that sees a batch of N samples with rows for B samples uses the rows as they are when
  N == B and tiles them N / B times when B divides N. Classifier-free guidance runs the UNet on
  cat([uncond, cond]) (2B), so sample i's row applies to both of its halves; a text encoder that encodes
  prompt and negative prompt in separate calls sees B each time. Any other N is an error.
- merge folds the active combination into the base weight in fp32 and keeps the original tensor;
  unmerge puts that tensor back, so W0 is bit-identical after any number of cycles. If the base weight was
  moved while merged (`pipe.to(...)` after `AdapterHandle.merge`, which takes this layer out of the model),
  unmerge moves the original and the slots to the weight's device and dtype first: W0 comes back as the move
  would have left it unmerged
- a Conv2d with `padding_mode` other than "zeros" pads x the same way for the slots as for the base layer
- wrapping freezes the base layer's parameters; `restore_base_flags` (called by `remove_slots`) gives them
  back the requires_grad flags they had
- a fresh slot has B = 0, so it changes nothing until an adapter is copied in (hot-swap = copy into a slot)

Which slots are active is worked out on the host once per change of `weights`, `scale` or the rows (tracked
with the tensors' version counters), not in every forward, so a GPU forward does not wait on the host.
The rows are copied when set, so editing the caller's tensor afterwards changes nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

SUPPORTED = (nn.Linear, nn.Conv2d)


@dataclass
class _Plan:
    """How one forward applies the slots: `kind` is "shared", "gather" or "stacked"."""

    kind: str
    slots: slice | torch.Tensor  # the slots that are used (a slice when they are contiguous: no copy)
    coef: torch.Tensor  # shared: (k,); gather: (N,) per sample; stacked: (N, k)
    index: torch.Tensor | None = None  # gather: (N,) slot of each sample
    factors: tuple | None = None  # (versions of A and B, dtype) -> the factors `_factors` computed


def _slots(used: list[int], device: torch.device) -> slice | torch.Tensor:
    if used == list(range(used[0], used[-1] + 1)):
        return slice(used[0], used[-1] + 1)
    return torch.tensor(used, device=device)


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
        self.register_buffer("scale", torch.zeros(num_slots, device=weight.device))  # (K,) alpha / r per slot
        self.register_buffer("weights", torch.zeros(num_slots, device=weight.device))  # (K,) combination c_k
        self._rows: torch.Tensor | None = None  # (B, K) per-sample combination, overrides `weights`
        # the base weight tensor while merged; a buffer, so moving this layer moves it too. A handle's merge
        # takes the layer out of the model, so a model-wide `.to()` then misses it: `unmerge` catches up.
        self.register_buffer("_original", None, persistent=False)
        self._cache: dict = {}  # (state key, batch) -> _Plan | None
        self._base_requires_grad = {n: p.requires_grad for n, p in base_layer.named_parameters(recurse=False)}
        base_layer.requires_grad_(False)

    @property
    def num_slots(self) -> int:
        return self.lora_A.shape[0]

    @property
    def rank(self) -> int:
        return self.lora_A.shape[1]

    @property
    def merged(self) -> bool:
        return self._original is not None

    @property
    def sample_weights(self) -> torch.Tensor | None:
        """(B, K) per-sample combination rows, or None (every sample uses `weights`)."""
        return self._rows

    @sample_weights.setter
    def sample_weights(self, rows: torch.Tensor | None) -> None:
        if rows is not None and (rows.dim() != 2 or rows.shape[1] != self.num_slots):
            raise ValueError(f"`sample_weights` must be (batch, slots={self.num_slots}), got {tuple(rows.shape)}")
        self._rows = None if rows is None else rows.detach().clone()  # a copy: the caller may reuse its tensor
        self._cache.clear()

    def check_slot(self, A: torch.Tensor, B: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(A [r, in * kh * kw], B [out, r]) after checking the adapter fits: A (r, in) or (r, in, 1, 1) on a
        Linear; A (r, in, kh, kw) with the conv's kernel on a Conv2d (or (r, in) for a 1x1 kernel); B (out, r) or
        (out, r, 1, 1); r <= rank. Raises ValueError naming both shapes."""
        w = self.base_layer.weight
        r = A.shape[0] if A.dim() else 0
        if isinstance(self.base_layer, nn.Conv2d):
            kernel = tuple(w.shape[1:])  # (in, kh, kw)
            fits_a = tuple(A.shape[1:]) == kernel or (
                A.dim() == 2 and kernel[1:] == (1, 1) and A.shape[1] == w.shape[1]
            )
        else:
            fits_a = A.dim() >= 2 and A.shape[1] == w.shape[1] and all(d == 1 for d in A.shape[2:])
        fits_b = B.dim() >= 2 and tuple(B.shape[:2]) == (w.shape[0], r) and all(d == 1 for d in B.shape[2:])
        if not (fits_a and fits_b and 1 <= r <= self.rank):
            raise ValueError(
                f"adapter A {tuple(A.shape)} / B {tuple(B.shape)} does not fit slots of rank <= {self.rank}, "
                f"in {self.lora_A.shape[2]}, out {self.lora_B.shape[1]} (base weight {tuple(w.shape)}: A must be "
                f"(r, {', '.join(map(str, w.shape[1:]))}), B ({w.shape[0]}, r))"
            )
        return A.reshape(r, -1), B.reshape(B.shape[0], r)

    def set_slot(self, slot: int, A: torch.Tensor, B: torch.Tensor, scale: float) -> None:
        """Copy an adapter (A [r, in] or conv [r, in, kh, kw]; B [out, r] or [out, r, 1, 1]) into `slot`."""
        if self.merged:
            raise RuntimeError("unmerge before changing a slot of a merged layer")
        A, B = self.check_slot(A, B)
        r = A.shape[0]
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
        used = c.ne(0).nonzero().flatten()  # slots that contribute (skip the empty ones)
        A, B = self.lora_A[used].float(), self.lora_B[used].float()  # (k, r, in), (k, out, r)
        delta = torch.einsum("k,kor,kri->oi", c[used], B, A)  # (out, in)
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
        """Put the original base weight tensor back: bit-identical, whatever happened in between. If the base
        weight was moved meanwhile (another device or dtype), the original and the slots follow it first, so
        the layer ends as that move would have left it unmerged."""
        if not self.merged:
            raise RuntimeError("layer is not merged")
        w = self.base_layer.weight
        if (w.device, w.dtype) != (self._original.device, self._original.dtype):
            self.to(device=w.device, dtype=w.dtype)  # moves the kept original, the slots and their buffers
        self.base_layer.weight.data = self._original
        self._original = None

    def restore_base_flags(self) -> None:
        """Give the base layer's parameters the requires_grad flags they had before wrapping."""
        for name, p in self.base_layer.named_parameters(recurse=False):
            p.requires_grad_(self._base_requires_grad.get(name, p.requires_grad))

    def _plan(self, batch: int) -> _Plan | None:
        """How to apply the slots to a batch of `batch` samples (None: no slot is active); cached until
        `weights`, `scale` or the rows change."""
        rows = self._rows
        if rows is None and self.merged:
            return None
        if rows is not None and self.merged:
            raise RuntimeError("per-sample adapters need an unmerged layer")
        key = (self.weights._version, self.weights.data_ptr(), self.scale._version, self.scale.data_ptr(), batch)
        if rows is not None:
            key += (id(rows), rows._version)
        if key not in self._cache:
            if len(self._cache) > 16:
                self._cache.clear()
            self._cache[key] = self._make_plan(batch)
        return self._cache[key]

    @torch.no_grad()
    def _make_plan(self, batch: int) -> _Plan | None:
        scale = self.scale.detach().float().cpu()  # (K,)
        device = self.scale.device
        if self._rows is None:
            c = self.weights.detach().float().cpu() * scale  # (K,)
        else:
            rows = self._rows.detach().float().cpu()
            if batch % rows.shape[0]:
                raise ValueError(
                    f"`sample_weights` has rows for {rows.shape[0]} samples; the layer sees a batch of {batch} "
                    f"(must be the same or a multiple, as with classifier-free guidance)"
                )
            c = rows * scale  # (B, K)
            same = bool((c == c[:1]).all())  # every sample the same: the shared path
            c = c[0] if same else c.repeat(batch // rows.shape[0], 1)  # (N, K): tiled for cat([uncond, cond])
        used = c.reshape(-1, self.num_slots).ne(0).any(0).nonzero().flatten().tolist()
        if not used:
            return None
        slots = _slots(used, device)
        if c.dim() == 1:
            return _Plan("shared", slots, c[used].to(device))
        c = c[:, used]  # (N, k)
        if bool((c.ne(0).sum(1) <= 1).all()) and not isinstance(self.base_layer, nn.Conv2d):
            index = torch.tensor(used)[c.ne(0).float().argmax(1)]  # (N,) the one slot per sample (any if none)
            return _Plan("gather", slots, c.sum(1).to(device), index.to(device))
        return _Plan("stacked", slots, c.to(device))

    def _factors(self, plan: _Plan, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(A, B, per-sample coefficients or None) for `plan`, with c_k s_k folded into B where it can be.
        shared: A (k*r, in), B (out, k*r); gather: A (N, r, in), B (N, out, r); stacked: A (k*r, in),
        B (out, k*r), coef (N, k*r). Kept with the plan when no gradient is needed, until A or B change."""
        key = (self.lora_A._version, self.lora_B._version, dtype)
        grad = torch.is_grad_enabled() and (self.lora_A.requires_grad or self.lora_B.requires_grad)
        if not grad and plan.factors is not None and plan.factors[0] == key:
            return plan.factors[1]
        coef = plan.coef.to(dtype)
        if plan.kind == "gather":
            A = self.lora_A[plan.index].to(dtype)  # (N, r, in)
            B = self.lora_B[plan.index].to(dtype) * coef[:, None, None]  # (N, out, r)
            factors = (A, B, None)
        else:
            A = self.lora_A[plan.slots].to(dtype)  # (k, r, in)
            B = self.lora_B[plan.slots].to(dtype)  # (k, out, r)
            k, r = A.shape[0], A.shape[1]
            if plan.kind == "shared":
                B, coef = B * coef[:, None, None], None  # fold c_k s_k into B_k: the activations are not touched
            else:
                coef = coef.repeat_interleave(r, dim=1)  # (N, k*r)
            factors = (A.reshape(k * r, -1), B.permute(1, 0, 2).reshape(-1, k * r), coef)
        if not grad:
            plan.factors = (key, factors)
        return factors

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        plan = self._plan(x.shape[0])
        if plan is None:
            return y
        A, B, coef = self._factors(plan, x.dtype)
        # fuse the add into the second matmul; not under autocast, where y, h and B can differ in dtype
        inplace = not torch.is_grad_enabled() and y.is_contiguous() and y.dtype == B.dtype
        if isinstance(self.base_layer, nn.Conv2d):
            conv = self.base_layer
            kernel = A.reshape(A.shape[0], *conv.weight.shape[1:])  # (k*r, in, kh, kw)
            if conv.padding_mode != "zeros":  # pad as the base conv does (reflect, replicate, circular)
                x = F.pad(x, conv._reversed_padding_repeated_twice, mode=conv.padding_mode)
                h = F.conv2d(x, kernel, None, conv.stride, 0, conv.dilation)
            else:
                h = F.conv2d(x, kernel, None, conv.stride, conv.padding, conv.dilation)
            if coef is not None:
                h = h * coef[:, :, None, None]  # (N, k*r, H', W')
            return y + F.conv2d(h, B[:, :, None, None])
        if plan.kind == "gather":  # one slot per sample: batched matmuls over the gathered A_i, B_i
            n = x.shape[0]
            h = torch.bmm(x.reshape(n, -1, x.shape[-1]), A.transpose(1, 2))  # (N, L, r)
            if inplace and h.dtype == y.dtype:
                y.view(n, -1, y.shape[-1]).baddbmm_(h, B.transpose(1, 2))
                return y
            return y + torch.bmm(h, B.transpose(1, 2)).reshape(y.shape)  # (N, ..., out)
        h = F.linear(x, A)  # (N, ..., k*r)
        if coef is not None:
            h = h * coef.reshape(coef.shape[0], *([1] * (x.dim() - 2)), coef.shape[1])
        if inplace and h.dtype == y.dtype:
            y.view(-1, y.shape[-1]).addmm_(h.reshape(-1, h.shape[-1]), B.T)
            return y
        return y + F.linear(h, B)  # (N, ..., out)


def inject_slots(model: nn.Module, patterns: Iterable[str], num_slots: int, rank: int) -> list[str]:
    """Wrap every Linear/Conv2d whose qualified name fully matches one of the regex `patterns`;
    returns the wrapped names. Freezes nothing else: call `model.requires_grad_(False)` first to train
    only the slots. All or nothing: every target is checked (and wrapped) before the model changes."""
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
    wrapped: list[tuple[str, LoRASlots]] = []
    try:
        for name, module in targets:
            wrapped.append((name, LoRASlots(module, num_slots, rank)))
    except Exception:
        for _, layer in wrapped:
            layer.restore_base_flags()
        raise
    for name, layer in wrapped:
        _put(model, name, layer)
    return [name for name, _ in targets]


def _put(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def remove_slots(model: nn.Module, keep_merged: bool = False, names: Iterable[str] | None = None) -> list[str]:
    """Put every wrapped layer's base layer (or only those in `names`) back in place of its `LoRASlots`, with
    its parameters' requires_grad flags as before wrapping; returns the unwrapped names. A merged layer is
    unmerged first (the base weight is the original again), unless `keep_merged`, which keeps the merged
    weight for good (to save a merged model) and drops the original."""
    only = None if names is None else set(names)
    unwrapped = []
    for name, layer in list(slotted_layers(model)):
        if only is not None and name not in only:
            continue
        if layer.merged and keep_merged:
            layer._original = None
        elif layer.merged:
            layer.unmerge()
        _put(model, name, layer.base_layer)
        layer.restore_base_flags()
        unwrapped.append(name)
    return unwrapped


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
