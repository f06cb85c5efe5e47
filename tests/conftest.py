from __future__ import annotations

import os

import pytest
import torch

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
