"""Property tests: any mutation of an adapter file (PEFT directory, diffusers or kohya .safetensors, a pickle) either
loads or fails with one FairdiffError, never another exception. Truncations, corrupted headers, wrong dtypes and
shapes, NaN/Inf, regex-like rank patterns and config values of every JSON type."""

from __future__ import annotations

import json
import struct
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save, save_file

from fairdiff.adapters.formats import PEFT_CONFIG, PEFT_WEIGHTS
from fairdiff.adapters.loading import load_adapter
from fairdiff.adapters.summary import summarize
from fairdiff.errors import FairdiffError

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MODULE = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
PEFT_A, PEFT_B = f"base_model.model.{MODULE}.lora_A.weight", f"base_model.model.{MODULE}.lora_B.weight"
KOHYA = "lora_unet_" + MODULE.replace(".", "_")
CONFIG = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["to_q"], "rank_pattern": {}}


def _pair(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 8, generator=g), torch.randn(8, 2, generator=g)


def _files() -> dict[str, tuple[dict[str, torch.Tensor], dict[str, str] | None]]:
    """The valid tensors (and header metadata) of each format."""
    A, B = _pair()
    meta = {"lora_adapter_metadata": json.dumps({"unet.r": 2, "unet.lora_alpha": 2})}
    return {
        "peft": ({PEFT_A: A, PEFT_B: B}, None),
        "diffusers": ({f"unet.{MODULE}.lora_A.weight": A, f"unet.{MODULE}.lora_B.weight": B}, meta),
        "kohya": (
            {f"{KOHYA}.lora_down.weight": A, f"{KOHYA}.lora_up.weight": B, f"{KOHYA}.alpha": torch.tensor(2.0)},
            None,
        ),
    }


FILES = _files()
BLOBS = {kind: save(tensors, metadata=meta) for kind, (tensors, meta) in FILES.items()}


def _place(root: Path, kind: str, data: bytes, config: dict | str | bytes = CONFIG) -> Path:
    """Write weights bytes as `kind`: a PEFT dir (with `config`) or a single .safetensors file."""
    root.mkdir(parents=True, exist_ok=True)
    if kind != "peft":
        path = root / f"{kind}.safetensors"
        path.write_bytes(data)
        return path
    (root / PEFT_WEIGHTS).write_bytes(data)
    text = config if isinstance(config, str | bytes) else json.dumps(config)
    (root / PEFT_CONFIG).write_bytes(text.encode() if isinstance(text, str) else text)
    return root


def _load_or_refuse(path: Path, **kwargs) -> None:
    """Load and summarize (what `adapters inspect` does); only success or a FairdiffError is allowed."""
    try:
        summarize(load_adapter(path, **kwargs), path)
    except FairdiffError as exc:
        assert str(exc).strip() and "\n" not in str(exc).strip()


@pytest.mark.parametrize("kind", list(FILES))
def test_the_unmutated_files_load(kind, tmp_path):
    adapter = load_adapter(_place(tmp_path / kind, kind, BLOBS[kind]))
    assert adapter.num_parameters() == 32


kinds = st.sampled_from(list(FILES))


@SETTINGS
@given(kind=kinds, data=st.data())
def test_truncated_or_flipped_bytes(kind, data):
    blob = bytearray(BLOBS[kind])
    if data.draw(st.booleans(), "truncate"):
        blob = blob[: data.draw(st.integers(0, len(blob) - 1), "cut")]
    for _ in range(data.draw(st.integers(0, 4), "flips")):
        if blob:
            i = data.draw(st.integers(0, len(blob) - 1), "at")
            blob[i] = data.draw(st.integers(0, 255), "byte")
    with tempfile.TemporaryDirectory() as tmp:
        _load_or_refuse(_place(Path(tmp) / "a", kind, bytes(blob)))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


def _with_header(kind: str, mutate) -> bytes:
    """The file with its header JSON replaced by `mutate(header)` (lengths kept consistent)."""
    blob = BLOBS[kind]
    n = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8 : 8 + n])
    text = json.dumps(mutate(header)).encode()
    return struct.pack("<Q", len(text)) + text + blob[8 + n :]


@SETTINGS
@given(kind=kinds, data=st.data())
def test_corrupted_header_json(kind, data):
    """A header of any JSON shape, or one whose entries (dtype, shape, data_offsets, metadata) are of any type."""

    def mutate(header):
        if data.draw(st.booleans(), "replace whole"):
            return data.draw(json_values, "header")
        key = data.draw(st.sampled_from(sorted(header)), "entry")
        if key != "__metadata__" and data.draw(st.booleans(), "one field"):
            field = data.draw(st.sampled_from(["dtype", "shape", "data_offsets"]), "field")
            choices = {
                "dtype": st.sampled_from(["F32", "F16", "BF16", "F64", "I64", "BOOL", "U8", "F8_E4M3", "X"]),
                "shape": st.lists(st.integers(-2, 2**40), max_size=5),
                "data_offsets": st.lists(st.integers(-2, 2**40), max_size=3),
            }
            header[key][field] = data.draw(choices[field] | json_values, field)
        else:
            header[key] = data.draw(json_values, "value")
        return header

    with tempfile.TemporaryDirectory() as tmp:
        _load_or_refuse(_place(Path(tmp) / "a", kind, _with_header(kind, mutate)))


DTYPES = [
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.float64,
    torch.int64,
    torch.int8,
    torch.uint8,
    torch.bool,
    torch.float8_e4m3fn,
    torch.float8_e5m2,
]
shapes = st.lists(st.integers(0, 4), min_size=0, max_size=4).map(tuple)
special = st.sampled_from([None, float("nan"), float("inf"), -float("inf")])


def _tensor(data, label: str) -> torch.Tensor:
    shape = data.draw(shapes, f"{label} shape")
    dtype = data.draw(st.sampled_from(DTYPES), f"{label} dtype")
    t = torch.randn(shape).to(dtype) if dtype.is_floating_point else torch.ones(shape, dtype=dtype)
    value = data.draw(special, f"{label} special")
    if value is not None and t.numel() and dtype.is_floating_point:
        t.view(-1)[0] = value
    return t


@SETTINGS
@given(kind=kinds, data=st.data())
def test_tensors_of_any_shape_and_dtype(kind, data):
    """Rank-0 and 1-D LoRA tensors, rank 0 (an empty dimension), mismatched pairs, integer/bool/fp8 dtypes, NaN/Inf."""
    tensors = dict(FILES[kind][0])
    for key in data.draw(st.lists(st.sampled_from(sorted(tensors)), min_size=1, max_size=3, unique=True), "keys"):
        tensors[key] = _tensor(data, key)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "weights.safetensors"
        save_file(tensors, str(path), metadata=FILES[kind][1])
        _load_or_refuse(_place(Path(tmp) / "a", kind, path.read_bytes()))


regex_like = st.sampled_from(["[", "(a", ".*", "to_q)", "*", "a{2,1}", "\\", "(?P<x", "to_q", ""]) | st.text(
    alphabet="[](){}.*+?\\^$|ato_q", max_size=6
)


@SETTINGS
@given(data=st.data())
def test_mutated_peft_config(data):
    """adapter_config.json with any key set to any JSON value, regex-like rank/alpha pattern keys, or not a mapping."""
    config = json.loads(json.dumps(CONFIG))
    how = data.draw(st.sampled_from(["value", "pattern", "whole", "bytes"]), "how")
    if how == "value":
        key = data.draw(st.sampled_from([*CONFIG, "alpha_pattern", "use_rslora", "use_dora", "lora_bias"]), "key")
        config[key] = data.draw(json_values, "value")
    elif how == "pattern":
        which = data.draw(st.sampled_from(["rank_pattern", "alpha_pattern"]), "which")
        values = st.integers(-2, 4) | json_values
        config[which] = data.draw(st.dictionaries(regex_like, values, min_size=1, max_size=3), "patterns")
    elif how == "whole":
        config = data.draw(json_values, "config")
    else:
        config = data.draw(st.binary(max_size=40), "bytes")
    with tempfile.TemporaryDirectory() as tmp:
        _load_or_refuse(_place(Path(tmp) / "a", "peft", BLOBS["peft"], config))


@SETTINGS
@given(metadata=st.dictionaries(st.sampled_from(["lora_adapter_metadata", "format", "x"]), st.text(max_size=30)))
def test_diffusers_metadata_of_any_text(metadata):
    """The diffusers header's `lora_adapter_metadata` as any text, or JSON of any shape."""
    tensors = FILES["diffusers"][0]
    with tempfile.TemporaryDirectory() as tmp:
        for meta in (metadata, {k: json.dumps(v) for k, v in metadata.items()}):
            path = Path(tmp) / "d.safetensors"
            save_file(tensors, str(path), metadata=meta)
            _load_or_refuse(path)


@SETTINGS
@given(meta=json_values)
def test_diffusers_metadata_json_of_any_shape(meta):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "d.safetensors"
        save_file(FILES["diffusers"][0], str(path), metadata={"lora_adapter_metadata": json.dumps(meta)})
        _load_or_refuse(path)


@settings(max_examples=30, deadline=None)
@given(blob=st.binary(max_size=200), name=st.sampled_from(["w.bin", "w.pt", "w.ckpt"]))
def test_a_pickle_is_refused_unless_allowed_and_garbage_is_refused_when_allowed(blob, name):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(blob)
        with pytest.raises(FairdiffError, match="pickled weights are refused"):
            load_adapter(path)
        _load_or_refuse(path, allow_pickle=True)


def test_a_real_pickle_of_non_tensors_is_refused_when_allowed(tmp_path):
    path = tmp_path / "w.bin"
    torch.save({"a": [1, 2]}, path)
    with pytest.raises(FairdiffError):
        load_adapter(path, allow_pickle=True)


def test_an_adapter_path_too_long_for_the_filesystem_is_one_error():
    from fairdiff.adapters.loading import load_adapter
    from fairdiff.errors import FairdiffError

    with pytest.raises(FairdiffError, match="not a usable path"):
        load_adapter("x" * 300)
