"""Put adapters into a pipeline: wrap the layers they target with slots in every component (unet,
text_encoder, text_encoder_2), copy adapter i into slot i, then choose per run or per sample which to apply.

    handle = attach_adapters(pipe, [load_adapter("a.safetensors"), load_adapter("b")])
    handle.set_combination([1.0, -0.5])        # every sample: W0 + 1.0 dA - 0.5 dB
    handle.set_per_sample(torch.eye(2))       # sample 0 with a, sample 1 with b (CFG batches tile the rows)
    handle.merge(); handle.unmerge()          # base-model speed; W0 back bit for bit
    handle.detach()                           # the original modules back in place

A layer belongs to one handle: attaching to layers that another handle (or `inject_slots`) already wrapped is
refused, and every handle method acts on its own layers only. Every change is all or nothing: a failed attach
leaves the model unwrapped, a failed hot-swap leaves every slot as it was.
"""

from __future__ import annotations

import logging
import math
import re
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from fairdiff.adapters.formats import MODEL, PIPELINE_COMPONENTS, LoRAAdapter, LoRALayer
from fairdiff.adapters.loading import load_adapter
from fairdiff.adapters.slots import LoRASlots, inject_slots, remove_slots, slotted_layers
from fairdiff.errors import FairdiffError

logger = logging.getLogger(__name__)

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")

# base layers that a merged handle has put back in their model: the handle still owns them (its unmerge puts
# its LoRASlots back), so another attach must not wrap them
_MERGED_BASE_LAYERS: weakref.WeakSet[nn.Module] = weakref.WeakSet()


@dataclass
class AdapterSpec:
    """One `FILE[:WEIGHT]` from the command line."""

    path: Path
    weight: float = 1.0


def parse_adapter_spec(text: str) -> AdapterSpec:
    """`FILE[:WEIGHT]` -> AdapterSpec. Splits on the last ':' only when what follows parses as a number, so
    `C:\\loras\\x.safetensors` and other paths with ':' stay whole; `x.safetensors:abc` is an error."""
    raw = text.strip()
    if not raw:
        raise FairdiffError("--adapter is empty; expected FILE[:WEIGHT]")
    head, sep, tail = raw.rpartition(":")
    if sep and head:
        try:
            weight = float(tail)
        except ValueError:
            weight = None
        if weight is not None:
            if not math.isfinite(weight):
                raise FairdiffError(f"--adapter {text!r}: weight {tail!r} is not a finite number")
            return AdapterSpec(Path(head).expanduser(), weight)
        looks_like_weight = not any(c in tail for c in "/\\") and not Path(raw).expanduser().exists()
        if looks_like_weight and (head.endswith(_WEIGHT_SUFFIXES) or Path(head).expanduser().exists()):
            raise FairdiffError(f"--adapter {text!r}: weight {tail!r} is not a number; expected FILE[:WEIGHT]")
    elif sep:
        raise FairdiffError(f"--adapter {text!r}: no file before ':'; expected FILE[:WEIGHT]")
    return AdapterSpec(Path(raw).expanduser(), 1.0)


def adapter_record(spec: AdapterSpec, adapter: LoRAAdapter | None = None) -> dict:
    """What a run directory records about an adapter: path, sha256 of its weights, weight, format."""
    from fairdiff.adapters.formats import resolve_adapter_file
    from fairdiff.files import file_sha256

    target = resolve_adapter_file(spec.path)
    files = sorted(p for p in target.rglob("*") if p.is_file()) if target.is_dir() else [target]
    return {
        "path": str(spec.path),
        "weight": spec.weight,
        "format": adapter.format if adapter is not None else None,
        "sha256": {str(p.relative_to(target) if target.is_dir() else p.name): file_sha256(p) for p in files},
    }


def _components(pipeline) -> dict[str, nn.Module]:
    """The adaptable models of a pipeline (or {"model": module} for a bare nn.Module)."""
    if isinstance(pipeline, nn.Module):
        return {MODEL: pipeline}
    found = {c: getattr(pipeline, c, None) for c in PIPELINE_COMPONENTS}
    found = {c: m for c, m in found.items() if isinstance(m, nn.Module)}
    if not found:
        raise FairdiffError(f"{type(pipeline).__name__} has none of the components {list(PIPELINE_COMPONENTS)}")
    return found


def _resolve(name: str, modules: dict[str, nn.Module]) -> str | None:
    """The model's name for an adapter module: as is, or with CLIP's `text_model.` prefix dropped or added
    (transformers >= 5 flattened CLIPTextModel; older files and CLIPTextModelWithProjection keep it)."""
    for candidate in (name, name.removeprefix("text_model."), f"text_model.{name}"):
        if candidate in modules:
            return candidate
    return None


def _place(adapter: LoRAAdapter, models: dict[str, nn.Module]) -> dict[str, dict[str, LoRALayer]]:
    """{pipeline component: {model module name: layer}} for `adapter`; errors name missing targets and two
    parts of the adapter that land on one module (`text_model.x` and `x`; a `model` part and a `unet` part)."""
    modules = {c: dict(m.named_modules()) for c, m in models.items()}
    placed: dict[str, dict[str, LoRALayer]] = {}
    origin: dict[tuple[str, str], str] = {}  # (component, module) -> the adapter key placed there
    for component, layers in adapter.components.items():
        if component in models:
            target = component
        elif component == MODEL or len(models) == 1 and len(adapter.components) == 1:
            fits = [c for c in models if all(_resolve(n, modules[c]) is not None for n in layers)]
            target = fits[0] if fits else next(iter(models))  # nothing fits: report against the first
        else:
            raise FairdiffError(
                f"adapter {adapter.source}: targets component {component!r}, the pipeline has {sorted(models)}"
            )
        for name, layer in layers.items():
            resolved = _resolve(name, modules[target])
            if resolved is None:
                key = f" (key {layer.key!r})" if layer.key else ""
                raise FairdiffError(f"adapter {adapter.source}: target {name!r} does not exist in the {target}{key}")
            module = modules[target][resolved]
            base = module.base_layer if isinstance(module, LoRASlots) else module
            if not isinstance(base, nn.Linear | nn.Conv2d):
                raise FairdiffError(
                    f"adapter {adapter.source}: target {name!r} is a {type(base).__name__}; "
                    f"LoRA slots support Linear, Conv2d"
                )
            label = layer.key or f"{component}/{name}"
            if (target, resolved) in origin:
                raise FairdiffError(
                    f"adapter {adapter.source}: {origin[target, resolved]!r} and {label!r} both target the {target} "
                    f"module {resolved!r}; an adapter may adapt a module once"
                )
            origin[target, resolved] = label
            placed.setdefault(target, {})[resolved] = layer
    return placed


@dataclass
class AdapterHandle:
    """Adapters attached to a pipeline, one slot each. Every method acts on all components at once, on the
    layers in `targets` (or, when `targets` is empty, on every slotted layer of the models)."""

    models: dict[str, nn.Module]
    adapters: list[LoRAAdapter]
    num_slots: int
    targets: dict[str, list[str]] = field(default_factory=dict)  # component -> wrapped module names

    def __post_init__(self) -> None:
        self._wrapped = [
            (c, name, layer)
            for c, model in self.models.items()
            for name, layer in slotted_layers(model)
            if not self.targets or name in self.targets.get(c, ())
        ]

    def layers(self) -> Iterator[tuple[str, str, LoRASlots]]:
        """(component, module name, LoRASlots) of every wrapped layer (also while merged, when the model
        holds the base layers)."""
        yield from self._wrapped

    def _put(self, component: str, name: str, module: nn.Module) -> None:
        parent_name, _, child = name.rpartition(".")
        model = self.models[component]
        setattr(model.get_submodule(parent_name) if parent_name else model, child, module)

    @property
    def merged(self) -> bool:
        return any(layer.merged for _, _, layer in self.layers())

    def load(self, slot: int, adapter: LoRAAdapter) -> None:
        """Hot-swap: copy `adapter` into `slot` of the wrapped layers (no re-wrapping); every target must
        already be wrapped and fit; layers the adapter does not target get the slot cleared. All targets are
        checked before any slot is written, so a failed load changes nothing."""
        if not 0 <= slot < self.num_slots:
            raise FairdiffError(f"slot {slot} out of range (0..{self.num_slots - 1})")
        if self.merged:
            raise FairdiffError("unmerge before loading an adapter into a slot")
        placed = _place(adapter, self.models)
        writes: list[tuple[LoRASlots, LoRALayer | None]] = []  # (slotted layer, adapter layer or None: clear)
        for component in self.models:
            wrapped = {name: layer for c, name, layer in self._wrapped if c == component}
            wanted = placed.get(component, {})
            for name, layer in wanted.items():
                if name not in wrapped:
                    raise FairdiffError(f"adapter {adapter.source}: target {name!r} is not wrapped with LoRA slots")
                try:
                    wrapped[name].check_slot(layer.A, layer.B)
                except ValueError as exc:
                    key = f" (key {layer.key!r})" if layer.key else ""
                    raise FairdiffError(f"adapter {adapter.source}: {name!r}{key}: {exc}") from None
                writes.append((wrapped[name], layer))
            writes += [(slotted, None) for name, slotted in wrapped.items() if name not in wanted]
        for slotted, layer in writes:
            if layer is None:
                slotted.clear_slot(slot)
            else:
                slotted.set_slot(slot, layer.A, layer.B, layer.scale)
        while len(self.adapters) <= slot:
            self.adapters.append(None)  # type: ignore[arg-type]
        self.adapters[slot] = adapter

    def set_combination(self, weights: Sequence[float]) -> None:
        """Every sample gets W0 + sum_k weights[k] s_k B_k A_k (clears per-sample rows)."""
        if len(weights) != self.num_slots:
            raise FairdiffError(f"{len(weights)} weights for {self.num_slots} adapter slots")
        if not all(math.isfinite(w) for w in weights):
            raise FairdiffError(f"adapter weights must be finite, got {list(weights)}")
        if self.merged:
            raise FairdiffError("unmerge before changing the adapter combination")
        for _, _, layer in self.layers():
            layer.sample_weights = None
            layer.weights.copy_(torch.tensor([float(w) for w in weights]))

    def set_per_sample(self, rows: torch.Tensor | None) -> None:
        """Sample i gets W0 + sum_k rows[i, k] s_k B_k A_k; `rows` is (B, K) (a one-hot row picks one
        adapter, a zero row the base model); None goes back to `set_combination`'s weights. A layer that
        sees a multiple of B samples (the UNet under classifier-free guidance: cat([uncond, cond])) applies
        the rows tiled, so each image's two halves use its adapter."""
        if rows is not None:
            rows = torch.as_tensor(rows, dtype=torch.float32).detach().cpu().clone()  # later edits change nothing
            if rows.dim() != 2 or rows.shape[1] != self.num_slots:
                raise FairdiffError(f"per-sample rows must be (batch, {self.num_slots}), got {tuple(rows.shape)}")
            if not torch.isfinite(rows).all():
                raise FairdiffError("per-sample adapter weights contain NaN or Inf")
            if self.merged:
                raise FairdiffError("unmerge before setting per-sample adapters")
        for _, _, layer in self.layers():
            layer.sample_weights = rows

    def merge(self) -> None:
        """Fold the active combination into the base weights (fp32 math) and put the base layers back in
        the model, so the merged pipeline is the original module graph: base cost, nothing in between."""
        if any(layer.sample_weights is not None for _, _, layer in self.layers()):
            raise FairdiffError("per-sample adapters cannot be merged; call set_per_sample(None) first")
        for component, name, layer in self.layers():
            if not layer.merged:
                layer.merge()
                self._put(component, name, layer.base_layer)
                _MERGED_BASE_LAYERS.add(layer.base_layer)

    def unmerge(self) -> None:
        """Put every original base weight back, bit for bit, and the slotted layers in place. If the model
        was moved while merged (`pipe.to("cuda")`, `pipe.to(torch.float16)`), the move reached the base layers
        only: each original weight and its slots are moved to the base weight's current device and dtype
        first, so the result is what the move would have given unmerged."""
        for component, name, layer in self.layers():
            if layer.merged:
                layer.unmerge()
                self._put(component, name, layer)
                _MERGED_BASE_LAYERS.discard(layer.base_layer)

    def detach(self) -> None:
        """Unmerge and put the original modules back (with their requires_grad flags); the pipeline is as
        before `attach_adapters`. Slots of other handles stay."""
        self.unmerge()
        for component, model in self.models.items():
            mine = [name for c, name, _ in self._wrapped if c == component]
            remove_slots(model, names=mine)
        self._wrapped, self.targets = [], {}

    def fuse(self) -> None:
        """Merge the active combination for good and drop the slots (to save a merged pipeline)."""
        self.merge()
        for _, _, layer in self.layers():
            layer._original = None  # the merged weight stays; the original is let go
            layer.restore_base_flags()
            _MERGED_BASE_LAYERS.discard(layer.base_layer)
        self._wrapped, self.targets = [], {}


def attach_adapters(pipeline, adapters: Sequence[LoRAAdapter], num_slots: int | None = None) -> AdapterHandle:
    """Wrap every layer any adapter targets, in every component (unet, text_encoder, text_encoder_2; or the
    module itself for a bare nn.Module), rank = the largest rank there; load adapter i into slot i. Slots
    start inactive: call `set_combination` or `set_per_sample`. A layer that already carries slots (of another
    handle, or from `inject_slots`) is refused: detach those first. On any error the model is left unwrapped."""
    if not adapters:
        raise FairdiffError("no adapters to attach")
    num_slots = num_slots or len(adapters)
    if num_slots < len(adapters):
        raise FairdiffError(f"{len(adapters)} adapters do not fit in {num_slots} slots")
    models = _components(pipeline)
    ranks: dict[str, dict[str, int]] = {}
    for adapter in adapters:
        for component, layers in _place(adapter, models).items():
            for name, layer in layers.items():
                ranks.setdefault(component, {})[name] = max(ranks.get(component, {}).get(name, 0), layer.rank)
    for component, wanted in ranks.items():
        modules = dict(models[component].named_modules())
        for name in wanted:
            if isinstance(modules[name], LoRASlots) or modules[name] in _MERGED_BASE_LAYERS:
                raise FairdiffError(
                    f"{component} {name!r} already carries LoRA slots (another attach_adapters handle, merged or "
                    f"not, or inject_slots); detach those adapters first"
                )
    injected: dict[str, list[str]] = {}
    try:
        for component, wanted in ranks.items():
            for rank in sorted(set(wanted.values())):  # one inject per rank; names are exact, escaped
                names = [re.escape(n) for n, r in wanted.items() if r == rank]
                injected.setdefault(component, []).extend(
                    inject_slots(models[component], names, num_slots=num_slots, rank=rank)
                )
        handle = AdapterHandle(
            models={c: models[c] for c in ranks},
            adapters=[],
            num_slots=num_slots,
            targets={c: sorted(w) for c, w in ranks.items()},
        )
        for slot, adapter in enumerate(adapters):
            handle.load(slot, adapter)
    except BaseException:
        for component, names in injected.items():
            remove_slots(models[component], names=names)
        raise
    logger.info("attached %d adapters to %s", len(adapters), {c: len(t) for c, t in handle.targets.items()})
    return handle


def load_adapter_specs(
    texts: Sequence[str], allow_pickle: bool = False, unet_config=None
) -> tuple[list[AdapterSpec], list[LoRAAdapter]]:
    """Parse `FILE[:WEIGHT]` texts and read each adapter."""
    specs = [parse_adapter_spec(t) for t in texts]
    return specs, [load_adapter(s.path, allow_pickle=allow_pickle, unet_config=unet_config) for s in specs]


# -- one model (kept for single-model callers and tests) -------------------------------------------------


def attach(model: nn.Module, adapters: Sequence[LoRAAdapter], num_slots: int | None = None) -> list[str]:
    """`attach_adapters` for one model; returns the wrapped layer names."""
    handle = attach_adapters(model, adapters, num_slots)
    return [name for names in handle.targets.values() for name in names]


def load_into_slot(model: nn.Module, adapter: LoRAAdapter, slot: int) -> None:
    """Hot-swap `adapter` into `slot` of one model's slotted layers."""
    num_slots = next((layer.num_slots for _, layer in slotted_layers(model)), 0)
    AdapterHandle(models={MODEL: model}, adapters=[], num_slots=num_slots).load(slot, adapter)


def set_combination(model: nn.Module, weights: Sequence[float]) -> None:
    """Set the active combination c_k of every slotted layer (the delta is sum_k c_k s_k B_k A_k)."""
    num_slots = next((layer.num_slots for _, layer in slotted_layers(model)), len(weights))
    AdapterHandle(models={MODEL: model}, adapters=[], num_slots=num_slots).set_combination(weights)
