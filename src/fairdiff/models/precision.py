"""Mixed precision for sampling: bf16 autocast where the hardware runs bf16 natively, fp32 everywhere else.

On a CPU with AVX512_BF16 or AMX, bf16 autocast over fp32 weights draws the bundled model's images about 1.6-1.9x
faster, and every classifier label of 128 paired images matched fp32's (bench/results/sampling_speed.md).
On an AVX2-only CPU bf16 is emulated and many times slower (bench/results/train_step.md), so "auto" leaves it
off there, and on every other device (CUDA / MPS pipelines pick their precision with `--dtype` instead).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from fairdiff.errors import FairdiffError
from fairdiff.models.defaults import check_autocast


def bf16_is_native(device: torch.device | str) -> bool:
    """Whether bf16 matmuls run natively on `device`: CUDA with bf16 support, or a CPU with avx512_bf16 or AMX.

    The CPU probes are private functions of `torch.cpu`; a torch that lacks them counts as emulated."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)
    return False


def use_bf16_autocast(device: torch.device | str, dtype: torch.dtype = torch.float32, mode: str = "auto") -> bool:
    """Whether `sampling_autocast(device, dtype, mode)` turns bf16 autocast on.

    "auto": only on a CPU with native bf16 and fp32 weights; "on": on a CPU whatever its bf16 support (for
    benchmarks; slow where bf16 is emulated); "off": never."""
    check_autocast(mode, "mode")
    device = torch.device(device)
    if mode == "off":
        return False
    if device.type != "cpu" or dtype != torch.float32:
        if mode == "on":
            raise FairdiffError(
                f"autocast mode 'on' needs fp32 weights on the CPU, got {dtype} on {device}; "
                "other devices choose their precision with --dtype"
            )
        return False
    return mode == "on" or bf16_is_native(device)


@contextlib.contextmanager
def sampling_autocast(
    device: torch.device | str, dtype: torch.dtype = torch.float32, mode: str = "auto"
) -> Iterator[bool]:
    """Context manager around sampling calls: bf16 autocast when `use_bf16_autocast` says so, else nothing.

    Yields whether autocast is on. Weights stay in `dtype`; only the matmuls and convolutions run in bf16."""
    enabled = use_bf16_autocast(device, dtype, mode)
    if not enabled:
        yield False
        return
    with torch.autocast("cpu", dtype=torch.bfloat16):
        yield True
