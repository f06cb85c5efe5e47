from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import fairdiff.models.sampling
from fairdiff.adapters.formats import LoRAAdapter, LoRALayer, write_peft
from fairdiff.adapters.slots import LoRASlots
from fairdiff.audit.results import load_run
from fairdiff.audit.runner import AuditConfig, run_audit

TARGETS = ("attn1.to_q", "attn1.to_v", "attn2.to_k", "attn2.to_v")


def _random_adapter(unet, seed: int, rank: int) -> LoRAAdapter:
    g = torch.Generator().manual_seed(seed)
    layers = {}
    for name, module in unet.named_modules():
        if isinstance(module, torch.nn.Linear) and name.endswith(TARGETS):
            A = torch.randn(rank, module.in_features, generator=g) * 0.3
            B = torch.randn(module.out_features, rank, generator=g) * 0.3
            layers[name] = LoRALayer(A, B, alpha=float(rank), scale=1.0)
    return LoRAAdapter(components={"unet": layers}, source=f"random-{seed}")


@pytest.fixture(scope="module")
def tiny():
    from fairdiff.detect import build_detector
    from fairdiff.models.loading import load_pipeline

    return load_pipeline("tiny"), build_detector("world", measure_accuracy=False)


def _pixels(run_dir, arm: str) -> dict[str, np.ndarray]:
    rows = load_run(run_dir).rows
    rows = rows[rows["arm"] == arm]
    return {f"{p}/{s}": np.asarray(Image.open(run_dir / i)) for p, s, i in rows[["prompt", "seed", "image"]].values}


def test_adapter_arms_run_in_one_batch_and_equal_each_adapter_alone(tmp_path, tiny, monkeypatch):
    loaded, detector = tiny
    files = []
    for seed, rank in ((1, 4), (2, 8)):  # different ranks share the slots
        files.append(write_peft(_random_adapter(loaded.pipeline.unet, seed, rank), tmp_path / f"lora{seed}"))
    arms = [{"kind": "base", "name": "base"}] + [
        {"kind": "adapter", "name": f"lora{i}", "adapters": [str(f)]} for i, f in enumerate(files, 1)
    ]
    cfg = dict(suites=["world-occupations"], images_per_prompt=2, max_prompts=2, steps=2, batch_size=12)
    calls = []
    real = fairdiff.models.sampling.draw
    monkeypatch.setattr(fairdiff.models.sampling, "draw", lambda lo, r: calls.append(len(r.images)) or real(lo, r))
    run_audit(AuditConfig(arms=arms, **cfg), tmp_path / "together", loaded=loaded, detector=detector)
    assert calls == [12]  # base + two adapter arms x 2 prompts x 2 seeds: one forward per step, not three
    assert not any(isinstance(m, LoRASlots) for m in loaded.pipeline.unet.modules())  # the pipeline is restored

    base = _pixels(tmp_path / "together", "base")
    for i, f in enumerate(files, 1):
        alone = tmp_path / f"alone{i}"
        run_audit(
            AuditConfig(arms=[{"kind": "adapter", "name": f"lora{i}", "adapters": [str(f)]}], **cfg),
            alone,
            loaded=loaded,
            detector=detector,
        )
        together, solo = _pixels(tmp_path / "together", f"lora{i}"), _pixels(alone, f"lora{i}")
        assert together.keys() == solo.keys() == base.keys()
        for key in solo:
            diff = np.abs(together[key].astype(int) - solo[key].astype(int)).max()
            assert diff <= 1, (key, diff)  # the same image up to float summation order in a bigger batch
        assert any(np.abs(solo[k].astype(int) - base[k].astype(int)).max() > 10 for k in solo)  # it does act
    record = load_run(tmp_path / "together").record
    assert set(record["adapter_hashes"]) == {str(f) for f in files}
