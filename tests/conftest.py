from __future__ import annotations

import os

# Busy-waiting OpenMP threads slow tests many times over when another process shares the 2 cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

# Tests share 2 cores with nothing else; one thread each keeps them deterministic and avoids oversubscription.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def minilm():
    from fairdiff.models.text_encoder import load_minilm

    return load_minilm()


@pytest.fixture(scope="session")
def world():
    from fairdiff.world.config import load_world_config

    return load_world_config()
