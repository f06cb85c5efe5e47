"""Arm kinds: finetune (registered on import of fairdiff.audit).

`{kind: finetune, name: w-balanced, pipeline: runs/ft/pipeline}`: the audit draws this arm with another pipeline
directory (a fine-tuned W, as `fairdiff mitigate finetune` writes it), loaded once per run on the run model's
device and in its dtype, on the same prompts and seeds as the other arms. Its spec records the directory and the
sha256 of every weight file in it (`weight_hashes`); a spec rebuilt from a run dir checks them, so a pipeline
changed since is refused rather than audited under the old name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator

from fairdiff.audit.arm_specs import ArmName, ArmSpecModel, register_arm_spec
from fairdiff.audit.arms import Arm, ArmRuntime, register_arm
from fairdiff.config import ConfigValueError, Expected
from fairdiff.errors import FairdiffError

_DTYPE_NAMES = {"torch.float32": "float32", "torch.float16": "float16", "torch.bfloat16": "bfloat16"}


def _pipeline_dir(text: str) -> str:
    try:
        ok = (Path(text) / "model_index.json").is_file()
    except OSError as exc:  # a name too long for the filesystem, ...
        raise ConfigValueError(f"pipeline {text[:80]!r}: not a usable path ({exc.strerror or exc})") from None
    if not ok:
        raise ConfigValueError(f"pipeline {text!r}: not a pipeline directory (no model_index.json)")
    return text


def pipeline_weight_hashes(directory: str | Path) -> dict[str, str]:
    """sha256 of every weight file of a pipeline directory (`LoadedModel.weight_hashes`, without loading it)."""
    from fairdiff.models.loading import LoadedModel

    root = Path(directory)
    try:
        class_name = json.loads((root / "model_index.json").read_text()).get("_class_name", "")
    except (OSError, ValueError, AttributeError):
        return {}
    kind = "tiny" if class_name == "TinyPortraitPipeline" else class_name
    return LoadedModel(pipeline=None, name=str(root), kind=kind, source=str(root.resolve())).weight_hashes()


@register_arm_spec("finetune")
class FinetuneArmSpec(ArmSpecModel):
    """Another pipeline directory (a fine-tuned W), drawn on the same prompts and seeds."""

    kind: Literal["finetune"] = "finetune"
    name: ArmName = "finetune"
    pipeline: Annotated[str, Expected("a pipeline directory (with model_index.json)"), AfterValidator(_pipeline_dir)]
    weight_hashes: dict[str, str] | None = None


@register_arm("finetune")
@dataclass
class FinetuneArm(Arm):
    """The arm's own pipeline (see the module docstring)."""

    name: str = "finetune"
    pipeline: str = ""
    weight_hashes: dict[str, str] | None = None  # as recorded; checked against the directory
    _loaded: Any = field(default=None, init=False, repr=False, compare=False)

    def check(self) -> None:
        super().check()
        if self.weight_hashes is not None:
            now = pipeline_weight_hashes(self.pipeline)
            changed = sorted(k for k in set(now) | set(self.weight_hashes) if now.get(k) != self.weight_hashes.get(k))
            if changed:
                raise FairdiffError(
                    f"arm {self.name}: pipeline {self.pipeline} is not the one recorded (weight file {changed[0]} "
                    f"differs); it was changed since"
                )

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "pipeline": self.pipeline, "weight_hashes": pipeline_weight_hashes(self.pipeline)}

    def batch_key(self, run_guidance: float | None) -> tuple:
        g = self.guidance if self.guidance is not None else run_guidance
        return ("finetune", str(Path(self.pipeline).resolve()), g)

    def model(self, runtime: ArmRuntime):
        """The arm's pipeline, loaded on first use on the run model's device and in its dtype."""
        if self._loaded is None:
            from fairdiff.models.loading import load_pipeline

            base = runtime.loaded.pipeline
            unet = getattr(base, "unet", None)
            dtype = _DTYPE_NAMES.get(str(getattr(unet, "dtype", "torch.float32")), "float32")
            device = str(getattr(unet, "device", "cpu"))
            self._loaded = load_pipeline(self.pipeline, device=device, dtype=dtype)
        return self._loaded
