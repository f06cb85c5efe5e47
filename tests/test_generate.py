from __future__ import annotations

import hashlib
import json

import pytest

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

    # same seed -> byte-identical PNGs, whatever the batch size
    generate(loaded, GenerateConfig(prompt=cfg.prompt, n=5, seed=10, steps=2, batch_size=5), tmp_path / "b")
    a, b = _digests(tmp_path / "a"), _digests(tmp_path / "b")
    assert {k: v for k, v in a.items() if k != "grid.png"} == {k: v for k, v in b.items() if k != "grid.png"}
    assert a["grid.png"] == b["grid.png"]


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
