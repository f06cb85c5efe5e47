"""The real-checkpoint path of an audit: a saved SD 1.x pipeline directory, the real-model suites, the CLIP
detector from a checkpoint directory, and an adapter arm from a kohya file — all tiny and random, no download."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from fairdiff.cli import app
from fairdiff.models.random_pipelines import save_tiny_clip, tiny_sd_pipeline


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("real")
    pipe = tiny_sd_pipeline(seed=0)
    pipe.save_pretrained(root / "sd")
    save_tiny_clip(root / "clip")
    # a kohya LoRA on two attention projections of the UNet (non-zero, so the arm differs from base)
    g = torch.Generator().manual_seed(3)
    tensors = {}
    for name, module in pipe.unet.named_modules():
        if name.endswith(("attn1.to_q", "attn2.to_v")):
            key = "lora_unet_" + name.replace(".", "_")
            tensors[f"{key}.lora_down.weight"] = torch.randn(4, module.in_features, generator=g) * 0.3
            tensors[f"{key}.lora_up.weight"] = torch.randn(module.out_features, 4, generator=g) * 0.3
            tensors[f"{key}.alpha"] = torch.tensor(4.0)
    from safetensors.torch import save_file

    save_file(tensors, str(root / "style.safetensors"))
    return root


def test_audit_of_an_sd_directory_with_clip_and_an_adapter_arm(dirs, tmp_path):
    out = tmp_path / "run"
    args = ["audit", "-m", str(dirs / "sd"), "-s", "occupations", "-s", "paraphrases", "--max-prompts", "2"]
    args += ["-n", "2", "--steps", "2", "--detector", "clip", "--detector-option", f"checkpoint={dirs / 'clip'}"]
    result = CliRunner().invoke(app, [*args, "--adapter", str(dirs / "style.safetensors"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "occupations: normalized bias" in result.stdout and "style" in result.stdout
    assert "detector accuracy: not measured" in result.stdout
    record = json.loads((out / "audit.json").read_text())
    assert record["model"]["kind"] == "sd" and record["detector"]["name"] == "clip"
    assert [a["name"] for a in record["arms"]] == ["base", "style"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["suites"]) == {"occupations", "paraphrases"}
    refused = CliRunner().invoke(app, [*args, "-s", "avatars", "--out", str(tmp_path / "run2")])
    assert refused.exit_code == 1 and "measures the outcome 'revealing'" in refused.stderr
