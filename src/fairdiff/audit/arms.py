"""Arms: the variants of a model an audit compares over the same prompts and seeds.

An arm changes what is generated for a suite prompt: what each image is drawn with (`image_options`: text,
negative prompt, seed and guidance scale of image `index` of the prompt, so an arm can plan the images of a
prompt, e.g. give a quota of them another prompt), or the model (adapters in a slot, an edited weight). Arms that
share a `batch_key` are drawn together in one batch: base, negative-prompt and adapter arms all share the model,
and adapter arms differ only in their per-sample slot weights, so an audit of eight adapters runs as one batch
per step.

New arm kinds register with `@register_arm("kind")` and implement the few methods below; the runner never
changes for them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

from fairdiff.audit.arm_specs import arm_fields, check_arm_spec
from fairdiff.errors import FairdiffError
from fairdiff.files import slug
from fairdiff.models.prompts import split_negative_terms
from fairdiff.models.sampling import ImageOptions

ARM_KINDS: dict[str, type[Arm]] = {}


def register_arm(kind: str) -> Callable[[type[Arm]], type[Arm]]:
    def wrap(cls: type[Arm]) -> type[Arm]:
        cls.kind = kind
        ARM_KINDS[kind] = cls
        return cls

    return wrap


@dataclass
class Arm:
    """The base arm: the model as it is. `guidance` None = the run's guidance."""

    name: str = "base"
    guidance: float | None = None
    kind: ClassVar[str] = "base"

    def check(self) -> None:
        """Validate the arm as its spec model does (audit/arm_specs.py): a `FairdiffError` naming arm and key."""
        check_arm_spec(self.spec())

    def spec(self) -> dict[str, Any]:
        """Everything needed to rebuild the arm (stored in the run config)."""
        return {"kind": self.kind, "name": self.name, "guidance": self.guidance}

    def image_options(self, prompt: str, negative: str, index: int, seed: int) -> ImageOptions:
        """What image `index` (0-based) of a suite prompt is drawn with under this arm: the prompt with its
        `-term`s moved into the negative prompt, the seed the plan gives it, and the arm's guidance (None: the
        run's)."""
        text, negative = split_negative_terms(prompt, negative)
        return ImageOptions(prompt=text, negative=negative, seed=seed, guidance=self.guidance)

    def batch_key(self, run_guidance: float | None) -> tuple:
        """Arms with equal keys may share a batch."""
        g = self.guidance if self.guidance is not None else run_guidance
        return ("model", g)

    def setup(self, runtime: ArmRuntime) -> None:
        """Once per run, before any batch (e.g. put adapters into slots)."""

    def slot_weights(self, runtime: ArmRuntime) -> list[float] | None:
        """Per-sample adapter slot weights for this arm (None: the model as loaded)."""
        return None

    def model(self, runtime: ArmRuntime):
        """The `LoadedModel` this arm draws with: the run's model, unless the arm brings its own weights
        (a fine-tuned pipeline). Arms with different models must have different `batch_key`s."""
        return runtime.loaded

    def sampling(self, runtime: ArmRuntime, jobs: Sequence[Any]) -> AbstractContextManager[dict[str, Any]]:
        """A context manager entered around the draw of one batch of this arm's jobs (`audit.runner.Job`s: prompt,
        seed, image index, ...). It may change the model for the batch (a weight edit, restored on exit) and
        yields extra `SamplingRequest` fields for it: `step_hook`, `attention_processors`,
        `cross_attention_kwargs`. Arms that share a `batch_key` must give equal ones (the runner asks the
        first job's arm)."""
        return nullcontext({})


register_arm("base")(Arm)


@register_arm("negative")
@dataclass
class NegativeArm(Arm):
    """Adds terms to every negative prompt ("revealing clothes"), like `a woman -revealing` does per prompt."""

    name: str = "negative"
    negative: str = ""

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "negative": self.negative}

    def image_options(self, prompt: str, negative: str, index: int, seed: int) -> ImageOptions:
        opts = super().image_options(prompt, negative, index, seed)
        return replace(opts, negative=", ".join(t for t in (opts.negative, self.negative) if t))


@register_arm("adapter")
@dataclass
class AdapterArm(Arm):
    """The model plus one or more LoRA adapters (`FILE[:WEIGHT]` each), drawn with per-sample slot weights."""

    name: str = "adapter"
    adapters: list[str] = field(default_factory=list)  # "FILE[:WEIGHT]"
    allow_pickle: bool = False

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "adapters": list(self.adapters), "allow_pickle": self.allow_pickle}

    def setup(self, runtime: ArmRuntime) -> None:
        from fairdiff.adapters.engine import parse_adapter_spec

        for text in self.adapters:
            runtime.request_adapter(parse_adapter_spec(text).path, self.allow_pickle)

    def slot_weights(self, runtime: ArmRuntime) -> list[float] | None:
        from fairdiff.adapters.engine import parse_adapter_spec

        row = [0.0] * runtime.num_slots
        for text in self.adapters:
            spec = parse_adapter_spec(text)
            row[runtime.slot_of(spec.path)] += spec.weight
        return row


class ArmRuntime:
    """Shared state of the arms in one run: every adapter any arm needs, each in its own slot of one model."""

    def __init__(self, loaded) -> None:
        self.loaded = loaded
        self._paths: list[str] = []
        self._allow_pickle: dict[str, bool] = {}
        self.handle = None
        self.adapter_hashes: dict[str, str] = {}

    def request_adapter(self, path, allow_pickle: bool) -> None:
        key = str(path)
        if key not in self._allow_pickle:
            self._paths.append(key)
        self._allow_pickle[key] = self._allow_pickle.get(key, False) or allow_pickle

    @property
    def num_slots(self) -> int:
        return len(self._paths)

    def slot_of(self, path) -> int:
        return self._paths.index(str(path))

    def attach(self) -> None:
        """Load every requested adapter and attach them all (one slot each) once."""
        if not self._paths:
            return
        from fairdiff.adapters.engine import AdapterSpec, adapter_record, attach_adapters
        from fairdiff.adapters.loading import load_adapter

        unet_config = getattr(getattr(self.loaded.pipeline, "unet", None), "config", None)
        adapters = [load_adapter(p, allow_pickle=self._allow_pickle[p], unet_config=unet_config) for p in self._paths]
        self.handle = attach_adapters(self.loaded.pipeline, adapters)
        self.adapter_hashes = {
            p: adapter_record(AdapterSpec(Path(p)), a)["sha256"] for p, a in zip(self._paths, adapters, strict=True)
        }

    def activate(self, arms: Sequence[Arm]) -> None:
        """Per-sample slot weights for a batch whose sample i is drawn by arms[i]."""
        if self.handle is None:
            return
        import torch

        rows = [arm.slot_weights(self) or [0.0] * self.num_slots for arm in arms]
        self.handle.set_per_sample(torch.tensor(rows, dtype=torch.float32))


def arm_from_spec(spec: dict[str, Any]) -> Arm:
    """Rebuild an arm from its `spec()` (or a user's dict; `kind` base where not given), validated by its spec
    model (audit/arm_specs.py)."""
    kind, fields = arm_fields(spec)
    if kind not in ARM_KINDS:
        raise FairdiffError(f"unknown arm kind {kind!r}; choose one of: {', '.join(sorted(ARM_KINDS))}")
    return ARM_KINDS[kind](**fields)


def adapter_arm_name(path: Path, taken: set[str]) -> str:
    """A readable, unique arm name for an adapter file: its stem, or its folder's name for the standard file
    names (adapter_model, pytorch_lora_weights), made safe and numbered if taken."""
    stem = path.name if path.is_dir() else path.stem
    if stem in ("adapter_model", "pytorch_lora_weights") and path.parent.name:
        stem = path.parent.name
    base = slug(stem, fallback="adapter")
    if not base[0].isalnum():
        base = f"adapter-{base}"
    name, k = base, 2
    while name in taken:
        name, k = f"{base}-{k}", k + 1
    return name


def check_arms(arms: Sequence[Arm]) -> None:
    if not arms:
        raise FairdiffError("an audit needs at least one arm")
    names = [a.name for a in arms]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise FairdiffError(f"arm names must be unique, {dup[0]!r} appears twice")
    for arm in arms:
        arm.check()
