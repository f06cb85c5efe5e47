"""Arm specs: what an arm is, as a user writes it in an arm file (`fairdiff audit --arms FILE`) and as a run dir
stores it. One pydantic model per arm kind (see `fairdiff.config`: unknown keys refused, strict types), joined
into a union discriminated on `kind` (`base` where no kind is given):

    - {kind: base, name: g1, guidance: 1}
    - {kind: negative, name: no-revealing, negative: revealing clothes}
    - {kind: adapter, name: both, adapters: [a.safetensors, b.safetensors:-0.5], allow_pickle: false}

A new arm kind registers its dataclass with `@register_arm("kind")` (audit/arms.py) and its spec model here
with `@register_arm_spec("kind")`; the model's fields are the dataclass's constructor arguments.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Discriminator, Field, Tag, field_validator

from fairdiff.config import (
    SAFE_NAME,
    ConfigModel,
    ConfigValueError,
    Expected,
    describe_value,
    load_config_file,
    validate,
)

ARM_SPECS: dict[str, type[ArmSpecModel]] = {}
_UNION: list[Any] = []  # the union of ARM_SPECS' models, built on first use


def register_arm_spec(kind: str) -> Callable[[type[ArmSpecModel]], type[ArmSpecModel]]:
    """Class decorator: the spec model of arm kind `kind` (its `kind` field must be `Literal[kind]`)."""

    def wrap(cls: type[ArmSpecModel]) -> type[ArmSpecModel]:
        ARM_SPECS[kind] = cls
        _UNION.clear()
        return cls

    return wrap


def _arm_name(name: str) -> str:
    if not SAFE_NAME.match(name):
        raise ConfigValueError(f"names folders of the run dir: letters, digits and _ . + - only, got {name!r}")
    return name


ArmName = Annotated[str, Expected("an arm name (letters, digits and _ . + -)"), AfterValidator(_arm_name)]
Guidance = Annotated[float, Expected("a number >= 0"), Field(ge=0)]


class ArmSpecModel(ConfigModel):
    """Fields every arm has: its name (a folder of the run dir) and its guidance scale (None: the run's)."""

    kind: str
    name: ArmName
    guidance: Guidance | None = None


@register_arm_spec("base")
class BaseArmSpec(ArmSpecModel):
    """The model as it is."""

    kind: Literal["base"] = "base"
    name: ArmName = "base"


def _negative_text(text: str) -> str:
    if not text.strip():
        raise ConfigValueError(f"the negative prompt must be non-empty text, got {text!r}")
    return text


@register_arm_spec("negative")
class NegativeArmSpec(ArmSpecModel):
    """Terms added to every negative prompt."""

    kind: Literal["negative"] = "negative"
    name: ArmName = "negative"
    negative: Annotated[
        str, Expected("the negative prompt must be non-empty text", phrase=True), AfterValidator(_negative_text)
    ]


def _adapter_file(text: str) -> str:
    from fairdiff.adapters.engine import parse_adapter_spec

    path = parse_adapter_spec(text).path  # a FairdiffError for a bad weight
    try:
        exists = Path(path).exists()
    except OSError as exc:  # a name too long for the filesystem, ...
        raise ConfigValueError(f"adapter {str(path)[:80]!r}: not a usable path ({exc.strerror or exc})") from None
    if not exists:
        raise ConfigValueError(f"adapter {str(path)!r}: no such file or directory")
    return text


@register_arm_spec("adapter")
class AdapterArmSpec(ArmSpecModel):
    """The model plus LoRA adapters, `FILE[:WEIGHT]` each."""

    kind: Literal["adapter"] = "adapter"
    name: ArmName = "adapter"
    adapters: Annotated[
        list[Annotated[str, Expected("FILE[:WEIGHT]"), AfterValidator(_adapter_file)]],
        Expected("adapters must be a list of FILE[:WEIGHT]", phrase=True),
    ]
    allow_pickle: bool = False

    @field_validator("adapters")
    @classmethod
    def _some(cls, adapters: list[str]) -> list[str]:
        if not adapters:
            raise ConfigValueError("no adapter files")
        return adapters


def _kind_of(value: Any) -> Any:
    return value.get("kind", "base") if isinstance(value, dict) else getattr(value, "kind", None)


def _known_kind(value: Any) -> Any:
    if not isinstance(value, dict):
        raise ConfigValueError(f"expected an arm mapping (kind, name, ...), got {describe_value(value)}")
    kind = value.get("kind", "base")
    if not isinstance(kind, str) or kind not in ARM_SPECS:
        raise ConfigValueError(
            f"unknown arm kind {describe_value(kind)}; choose one of: {', '.join(sorted(ARM_SPECS))}", "kind"
        )
    return value


def arm_spec_type() -> Any:
    """The union of every registered arm spec model, discriminated on `kind`."""
    if not _UNION:
        members = tuple(Annotated[model, Tag(kind)] for kind, model in ARM_SPECS.items())
        _UNION.append(
            Annotated[typing.Union[members], Discriminator(_kind_of), BeforeValidator(_known_kind)]  # noqa: UP007
        )
    return _UNION[0]


def check_arm_spec(spec: Any, source: str | None = None) -> ArmSpecModel:
    """One arm spec (a dict with `kind`, or base without) validated: a `FairdiffError` naming the arm and key."""
    if source is None:
        name = spec.get("name", spec.get("kind", "base")) if isinstance(spec, dict) else None
        source = describe_value(name).strip("'") if name is not None else "spec"
    return validate(arm_spec_type(), spec, "arm", source)


def load_arms_file(path: str | Path) -> list[dict[str, Any]]:
    """The arm specs of an arm file (a YAML list of mappings), each validated; errors name the file and item,
    e.g. ``arms arms.yaml: [0].guidance: expected a number >= 0, got '3'``."""
    arms, _ = load_config_file(path, Annotated[list[arm_spec_type()], Expected("a list of arms")], "arms")
    return [a.model_dump() for a in arms]


def arm_fields(spec: Any, source: str | None = None) -> tuple[str, dict[str, Any]]:
    """(kind, constructor arguments) of a validated arm spec."""
    fields = check_arm_spec(spec, source).model_dump()
    return fields.pop("kind"), fields
