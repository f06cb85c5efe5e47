from __future__ import annotations

import pytest
import torch

from fairdiff.errors import FairdiffError
from fairdiff.models.precision import bf16_is_native, sampling_autocast, use_bf16_autocast


@pytest.fixture
def native(monkeypatch):
    """Pretend the CPU has (True) or lacks (False) native bf16."""

    def set_native(value: bool) -> None:
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: value, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)

    return set_native


def _matmul_dtype() -> torch.dtype:
    a = torch.ones(4, 4)
    return (a @ a).dtype


def test_bf16_is_native_reads_the_cpu_probes(native, monkeypatch):
    native(True)
    assert bf16_is_native("cpu")
    native(False)
    assert not bf16_is_native(torch.device("cpu"))
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert bf16_is_native("cpu")  # AMX alone counts


def test_bf16_is_native_without_probes_is_false(monkeypatch):
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    assert not bf16_is_native("cpu")


def test_bf16_is_native_off_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert not bf16_is_native("cuda")
    assert not bf16_is_native("meta")


def test_auto_turns_autocast_on_only_with_native_bf16_and_fp32_weights(native):
    native(True)
    assert use_bf16_autocast("cpu")
    assert not use_bf16_autocast("cpu", torch.float16)  # weights already reduced: leave them alone
    assert not use_bf16_autocast("cpu", torch.bfloat16)
    assert not use_bf16_autocast("cuda")  # GPUs choose precision with --dtype
    native(False)  # AVX2-only: bf16 emulated, many times slower
    assert not use_bf16_autocast("cpu")


def test_on_and_off_override_the_probe(native):
    native(False)
    assert use_bf16_autocast("cpu", mode="on")
    native(True)
    assert not use_bf16_autocast("cpu", mode="off")


def test_on_refuses_what_it_cannot_do():
    with pytest.raises(FairdiffError, match="fp32 weights on the CPU"):
        use_bf16_autocast("cpu", torch.float16, mode="on")
    with pytest.raises(FairdiffError, match="fp32 weights on the CPU"):
        use_bf16_autocast("cuda", mode="on")


def test_unknown_mode_is_one_named_error():
    with pytest.raises(FairdiffError, match="unknown autocast mode 'fast'"):
        use_bf16_autocast("cpu", mode="fast")
    with pytest.raises(FairdiffError, match="unknown autocast mode"), sampling_autocast("cpu", mode="fast"):
        pass


def test_context_runs_matmuls_in_bf16_and_restores(native):
    native(True)
    assert _matmul_dtype() == torch.float32
    with sampling_autocast("cpu") as on:
        assert on
        assert torch.is_autocast_enabled("cpu")
        assert _matmul_dtype() == torch.bfloat16
    assert not torch.is_autocast_enabled("cpu")
    assert _matmul_dtype() == torch.float32


def test_context_is_a_no_op_where_bf16_is_emulated(native):
    native(False)
    with sampling_autocast("cpu") as on:
        assert not on
        assert not torch.is_autocast_enabled("cpu")
        assert _matmul_dtype() == torch.float32


def test_context_restores_after_an_exception(native):
    native(True)
    with pytest.raises(RuntimeError, match="boom"), sampling_autocast("cpu"):
        raise RuntimeError("boom")
    assert not torch.is_autocast_enabled("cpu")
