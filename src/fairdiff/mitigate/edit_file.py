"""Edit files: a closed-form attention edit (`fairdiff mitigate edit`) as a small safetensors file.

The file holds only the weight deltas of the edited projections, one float32 tensor per key
`<cross-attention layer>.to_k` / `.to_v` (the names `fairdiff.models.attention.edit_attention` takes), and its
safetensors metadata has one key, `fairdiff_edit`: JSON with `format: fairdiff-edit`, `version` and `edit`, the
record of how the edit was made
(concepts, attributes, mix, lambda, alpha per concept with the re-estimation history, the base model's weight
hashes). Drawing with it is `edit_attention(unet, deltas=scaled)`, which restores W0 bit for bit afterwards.

Reading is strict: anything but a readable safetensors file (a pickle, a truncated or corrupt file), a file
without the fairdiff-edit metadata, unknown keys, tensors of another shape than this UNet's projection, integer
dtypes or NaN/Inf is one `FairdiffError` naming the file and the key. Nothing is executed while reading
(safetensors holds no code).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fairdiff.errors import FairdiffError
from fairdiff.files import file_sha256, write_atomic

FORMAT = "fairdiff-edit"
VERSION = "1"
META_KEY = "fairdiff_edit"
_KEY = re.compile(r"^(?P<layer>.+)\.(?P<proj>to_k|to_v|to_q|to_out\.0)$")


@dataclass
class EditFile:
    """An edit in memory: {projection key: float32 delta (out, in)}, its record and (once on disk) its sha256."""

    deltas: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)
    path: str = ""
    sha256: str = ""

    def scaled(self, scale: float) -> dict[str, torch.Tensor]:
        """The deltas times `scale` (1.0: the tensors themselves)."""
        if scale == 1.0:
            return dict(self.deltas)
        return {k: v * float(scale) for k, v in self.deltas.items()}


def edit_bytes(edit: EditFile) -> bytes:
    """The safetensors bytes of `edit` (keys sorted, metadata JSON with sorted keys: the same edit gives the same
    bytes)."""
    from safetensors.torch import save

    if not edit.deltas:
        raise FairdiffError("an edit file needs at least one weight delta")
    tensors = {k: edit.deltas[k].detach().to(torch.float32).contiguous().cpu() for k in sorted(edit.deltas)}
    # one metadata key: safetensors writes its metadata map in no fixed order, and the bytes must not vary
    record = {"format": FORMAT, "version": VERSION, "edit": edit.meta}
    return save(tensors, metadata={META_KEY: json.dumps(record, sort_keys=True)})


def write_edit(edit: EditFile, path: str | Path) -> Path:
    """Write `edit` to `path` atomically (a failed write leaves what was there); sets `edit.path` and `.sha256`."""
    path = Path(path)
    data = edit_bytes(edit)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, data)
    except OSError as exc:
        raise FairdiffError(f"could not write edit file {path} ({exc.strerror or exc})") from None
    edit.path, edit.sha256 = str(path), file_sha256(path)
    return path


def read_edit(path: str | Path) -> EditFile:
    """Read and check an edit file (format, keys, dtypes, finite values); see `check_edit_fits` for a model."""
    from safetensors import safe_open

    path = Path(path).expanduser()
    where = f"edit file {str(path)!r}"
    if not path.is_file():
        raise FairdiffError(f"{where}: no such file")
    try:
        handle = safe_open(str(path), framework="pt")
        keys = list(handle.keys())
        metadata = dict(handle.metadata() or {})
    except Exception as exc:  # SafetensorError, OSError, a pickle's bytes read as a header
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise FairdiffError(
            f"{where}: not a readable safetensors file (truncated, corrupt, or a pickle, which is refused: {first})"
        ) from None
    try:
        record = json.loads(metadata[META_KEY]) if META_KEY in metadata else None
    except ValueError as exc:
        raise FairdiffError(f"{where}: its {META_KEY!r} metadata is not valid JSON ({exc})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise FairdiffError(f"{where}: not a fairdiff edit file (no {META_KEY!r} metadata of format {FORMAT!r})")
    if record.get("version") != VERSION:
        raise FairdiffError(f"{where}: edit file version {record.get('version')!r}; this fairdiff reads {VERSION}")
    meta = record.get("edit")
    if not isinstance(meta, dict):
        raise FairdiffError(f"{where}: the edit record is not a JSON object")
    if not keys:
        raise FairdiffError(f"{where}: holds no weight deltas")
    deltas = {}
    for key in keys:
        if not _KEY.match(key):
            raise FairdiffError(f"{where}: unknown key {key!r}; expected '<attention layer>.to_k' or '.to_v'")
        try:
            tensor = handle.get_tensor(key)
        except Exception as exc:
            raise FairdiffError(f"{where}: tensor {key!r} unreadable, truncated or corrupt ({exc})") from None
        if not tensor.is_floating_point() or tensor.dim() != 2:
            raise FairdiffError(
                f"{where}: tensor {key!r} is {tensor.dtype} {tuple(tensor.shape)}; expected a floating point matrix"
            )
        if not torch.isfinite(tensor.float()).all():
            raise FairdiffError(f"{where}: tensor {key!r} {tuple(tensor.shape)} contains NaN or Inf")
        deltas[key] = tensor.to(torch.float32)
    return EditFile(deltas=deltas, meta=meta, path=str(path), sha256=file_sha256(path))


def check_edit_fits(edit: EditFile, unet, weight_hashes: dict[str, str] | None = None) -> None:
    """The edit's keys name cross-attention projections of `unet` with the delta's shape, and (where both the
    edit and `weight_hashes` record a weight file) it was made for these weights; else one `FairdiffError`."""
    from fairdiff.models.attention import cross_attention_layers

    where = f"edit file {edit.path!r}" if edit.path else "edit"
    layers = {layer.name: layer for layer in cross_attention_layers(unet)}
    for key, delta in edit.deltas.items():
        m = _KEY.match(key)
        layer = layers.get(m["layer"]) if m else None
        if layer is None:
            some = ", ".join(list(layers)[:2]) + (", ..." if len(layers) > 2 else "")
            raise FairdiffError(f"{where}: {key!r} is not a cross-attention projection of this model ({some})")
        module = layer.module
        for part in m["proj"].split("."):
            module = getattr(module, part)
        weight = getattr(module, "base_layer", module).weight
        if tuple(delta.shape) != tuple(weight.shape):
            raise FairdiffError(
                f"{where}: {key!r} has shape {tuple(delta.shape)}; this model's weight is {tuple(weight.shape)} "
                f"(an edit made for another model)"
            )
    made_for = (edit.meta.get("base_model") or {}).get("weight_hashes") or {}
    for name in sorted(set(made_for) & set(weight_hashes or {})):
        if made_for[name] != weight_hashes[name]:
            raise FairdiffError(
                f"{where}: made for other weights ({name} sha256 {made_for[name][:12]}..., this model's "
                f"{weight_hashes[name][:12]}...); recompute the edit for this model"
            )
