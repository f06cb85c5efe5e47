from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from fairdiff.errors import FairdiffError
from fairdiff.generate import GenerateConfig, generate
from fairdiff.models.loading import load_pipeline
from fairdiff.models.tiny import build_tiny_pipeline, build_tiny_unet


@pytest.fixture(scope="module")
def random_tiny_dir(tmp_path_factory, minilm):
    path = tmp_path_factory.mktemp("tiny-random")
    build_tiny_pipeline(build_tiny_unet(seed=2), text=minilm).save_pretrained(path)
    return path


def _digests(out):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.glob("*.png"))}


def test_generate_writes_pngs_grid_and_sidecar(random_tiny_dir, tmp_path):
    loaded = load_pipeline(str(random_tiny_dir))
    cfg = GenerateConfig(prompt='a woman -revealing -"bare shoulders"', n=5, seed=10, steps=2, batch_size=2)
    sidecar = generate(loaded, cfg, tmp_path / "a")
    assert sorted(sidecar["files"]) == [f"{s:06d}.png" for s in range(10, 15)]
    assert (tmp_path / "a" / "grid.png").is_file()
    on_disk = json.loads((tmp_path / "a" / "generate.json").read_text())
    assert on_disk["positive_prompt"] == "a woman" and on_disk["negative_prompt"] == "revealing, bare shoulders"
    assert on_disk["seeds"] == list(range(10, 15)) and on_disk["steps"] == 2
    assert on_disk["guidance"] == 3.0  # the tiny pipeline's default, recorded although not given
    assert on_disk["scheduler"]["class"] == "DPMSolverMultistepScheduler"
    assert {"torch", "diffusers", "transformers", "fairdiff"} <= set(on_disk["versions"])
    assert "unet/diffusion_pytorch_model.safetensors" in on_disk["weight_hashes"]

    # same config and seed -> byte-identical PNGs
    generate(loaded, cfg, tmp_path / "a2")
    assert _digests(tmp_path / "a") == _digests(tmp_path / "a2")
    # another batch size: the same images, up to CPU kernels that pick their algorithm by batch shape (on an
    # AVX2-only CPU a batch of 1 differs from a batch of 5 by one grey level in a pixel or two)
    generate(loaded, GenerateConfig(prompt=cfg.prompt, n=5, seed=10, steps=2, batch_size=5), tmp_path / "b")
    for name in _digests(tmp_path / "a"):
        a, b = (np.asarray(Image.open(tmp_path / d / name), dtype=int) for d in ("a", "b"))
        assert np.abs(a - b).max() <= 1, name


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(n=0), "-n must be >= 1"),
        (dict(steps=0), "--steps must be >= 1"),
        (dict(prompt="  "), "--prompt is empty"),
        (dict(guidance=float("inf")), "--guidance"),
    ],
)
def test_config_checks(kwargs, message):
    with pytest.raises(FairdiffError, match=message):
        GenerateConfig(**{"prompt": "a doctor", **kwargs}).check()


def test_a_failed_adapter_setup_leaves_the_pipeline_unwrapped(random_tiny_dir, tmp_path, monkeypatch):
    import torch

    from fairdiff.adapters import LoRAAdapter, LoRALayer, LoRASlots, write_peft
    from fairdiff.adapters.engine import AdapterHandle

    loaded = load_pipeline(str(random_tiny_dir))
    name, module = next((n, m) for n, m in loaded.pipeline.unet.named_modules() if n.endswith("attn2.to_k"))
    layer = LoRALayer(torch.ones(2, module.in_features), torch.ones(module.out_features, 2), 2.0, 1.0)
    peft = write_peft(LoRAAdapter({"model": {name: layer}}), tmp_path / "lora")

    def fail(self, weights):
        raise FairdiffError("combination failed")

    monkeypatch.setattr(AdapterHandle, "set_combination", fail)  # fails after the layers are wrapped
    cfg = GenerateConfig(prompt="a doctor", n=1, steps=1, adapters=[str(peft)])
    with pytest.raises(FairdiffError, match="combination failed"):
        generate(loaded, cfg, tmp_path / "out")
    assert not any(isinstance(m, LoRASlots) for m in loaded.pipeline.unet.modules())
