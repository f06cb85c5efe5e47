"""Arm kind `edit`: the model with a closed-form attention edit (`fairdiff mitigate edit`) applied per batch.

    - {kind: edit, name: uce, edit: out/edit.safetensors, scale: 1.0}

Each batch of the arm is drawn inside `edit_attention(unet, deltas=scale x ΔW)`, which puts W0 back bit for bit
after the batch, so base and other arms of the same run draw the unedited model. The spec records the file's
sha256; a run resumed with a changed file is refused (the fingerprint covers the spec), and a spec rebuilt with
a `sha256` checks the file still has it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field

from fairdiff.audit.arm_specs import ArmName, ArmSpecModel, register_arm_spec
from fairdiff.audit.arms import Arm, ArmRuntime, register_arm
from fairdiff.config import ConfigValueError, Expected
from fairdiff.errors import FairdiffError


def _edit_path(text: str) -> str:
    try:
        exists = Path(text).expanduser().is_file()
    except OSError as exc:
        raise ConfigValueError(f"edit {text[:80]!r}: not a usable path ({exc.strerror or exc})") from None
    if not exists:
        raise ConfigValueError(f"edit file {text!r}: no such file")
    return text


Sha256 = Annotated[str, Expected("the edit file's sha256 (64 hex digits)"), Field(pattern=r"^[0-9a-f]{64}$")]


@register_arm_spec("edit")
class EditArmSpec(ArmSpecModel):
    """The model with an edit file's weight deltas, times `scale`."""

    kind: Literal["edit"] = "edit"
    name: ArmName = "edit"
    edit: Annotated[
        str, Expected("the path of an edit file (fairdiff mitigate edit --out)"), AfterValidator(_edit_path)
    ]
    scale: Annotated[float, Expected("a finite number")] = 1.0
    sha256: Sha256 | None = None


@register_arm("edit")
@dataclass
class EditArm(Arm):
    """The model plus an edit file's ΔW (scaled), installed around each batch and removed after it."""

    name: str = "edit"
    edit: str = ""
    scale: float = 1.0
    sha256: str | None = None

    def __post_init__(self) -> None:
        self._loaded_edit = None
        self._deltas = None
        self._sha = None

    def check(self) -> None:
        """The spec, then the file itself (format, keys, values): one `FairdiffError` before any model loads."""
        super().check()
        self._file()

    def _file(self):
        if self._loaded_edit is None:
            from fairdiff.mitigate.edit_file import read_edit

            edit = read_edit(self.edit)
            if self.sha256 is not None and edit.sha256 != self.sha256:
                raise FairdiffError(
                    f"arm {self.name}: edit file {self.edit!r} has sha256 {edit.sha256[:12]}..., the spec records "
                    f"{self.sha256[:12]}... (the file changed)"
                )
            self._loaded_edit = edit
        return self._loaded_edit

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "edit": self.edit, "scale": self.scale, "sha256": self._file_sha()}

    def _file_sha(self) -> str | None:
        """The spec's sha256, else the file's (hashed once), else None for a file that is not there."""
        if self.sha256 is not None:
            return self.sha256
        if self._sha is None and self.edit and Path(self.edit).expanduser().is_file():
            from fairdiff.files import file_sha256

            self._sha = file_sha256(Path(self.edit).expanduser())
        return self._sha

    def batch_key(self, run_guidance: float | None) -> tuple:
        g = self.guidance if self.guidance is not None else run_guidance
        return ("edit", self._file_sha(), float(self.scale), g)

    def setup(self, runtime: ArmRuntime) -> None:
        """Read the edit once and check it fits the run's model (keys, shapes, the weights it was made for)."""
        from fairdiff.mitigate.edit_file import check_edit_fits

        edit = self._file()
        loaded = self.model(runtime)
        check_edit_fits(edit, loaded.pipeline.unet, loaded.weight_hashes())
        self._deltas = edit.scaled(self.scale)

    @contextmanager
    def sampling(self, runtime: ArmRuntime, jobs: Sequence[Any]) -> Iterator[dict[str, Any]]:
        from fairdiff.models.attention import edit_attention

        if self._deltas is None:
            self.setup(runtime)
        with edit_attention(self.model(runtime).pipeline.unet, deltas=self._deltas):
            yield {}
