"""What every output directory records: library versions and the machine it ran on."""

from __future__ import annotations

import importlib.metadata
import platform
import sys

_LIBRARIES = ("fairdiff", "torch", "diffusers", "transformers", "numpy", "pillow", "safetensors")


def library_versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0]}
    for name in _LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def machine() -> dict[str, str]:
    """Where a run ran. The CPU's vector capability is part of it: the same seed gives byte-identical images on
    one machine, but kernels differ between, say, AVX2 and AVX-512 CPUs (and bf16 is native only on some)."""
    import os

    import torch

    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_cores": str(os.cpu_count()),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": str(torch.get_num_threads()),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def machine_line() -> str:
    """`machine()` as the one line every benchmark result file starts its record with."""
    m = machine()
    line = (
        f"{m['platform']}, {m['processor']}, {m['cpu_cores']} cores ({m['cpu_capability']}), "
        f"{m['torch_threads']} torch threads"
    )
    return line + (f", GPU {m['gpu']}" if "gpu" in m else ", no GPU")
