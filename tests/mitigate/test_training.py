"""The shared training loop: resume equals an uninterrupted run, config changes are refused by key, the pipeline is
given back as it was, and the exported adapter loads in `generate` (and goes away bit for bit)."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from fairdiff.cli import app
from fairdiff.errors import FairdiffError
from fairdiff.generate import GenerateConfig, generate
from fairdiff.mitigate.training import MitigateConfig, TrainPrompt, train_mitigation

PROMPTS = [TrainPrompt(f"a photo of the face of a {o}", {"occupation": o}, "photo") for o in ("doctor", "nurse")]
runner = CliRunner()


@pytest.fixture(scope="module")
def tiny():
    from fairdiff.models.loading import load_pipeline

    return load_pipeline("tiny")


def _cfg(**kw) -> MitigateConfig:
    base = dict(method="balanced", steps=4, batch_size=2, checkpoint_every=2, rank=2, alpha=2.0, autocast="off")
    return MitigateConfig(**{**base, **kw})


def _weights(path) -> dict[str, torch.Tensor]:
    files = sorted(path.rglob("*.safetensors"))
    return {f"{f.relative_to(path)}:{k}": v for f in files for k, v in load_file(f).items()}


def _state_digest(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        h.update(name.encode() + t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _pngs(directory) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.glob("0*.png"))}


class Stop(Exception):
    pass


@pytest.mark.parametrize("mode", ["lora", "finetune"])
def test_resume_after_a_kill_equals_an_uninterrupted_run(tmp_path, tiny, mode):
    before = _state_digest(tiny.pipeline.unet)
    straight = train_mitigation(_cfg(mode=mode), "tiny", tmp_path / "a", loaded=tiny, prompts=PROMPTS)

    def kill(step, stats):
        if step == 2:
            raise Stop  # after the checkpoint of step 2, like a kill

    with pytest.raises(Stop):
        train_mitigation(_cfg(mode=mode), "tiny", tmp_path / "b", on_step=kill, loaded=tiny, prompts=PROMPTS)
    assert not (tmp_path / "b" / straight.name).exists()
    resumed = train_mitigation(_cfg(mode=mode), "tiny", tmp_path / "b", loaded=tiny, prompts=PROMPTS)

    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys() and a
    assert all(torch.equal(a[k], b[k]) for k in a)  # bit for bit
    log = [json.loads(line) for line in (tmp_path / "b" / "train.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    assert {"loss", "stats", "lr", "elapsed_s"} <= set(log[0])
    card = json.loads((tmp_path / "b" / "card.json").read_text())
    assert card["steps"] == 4 and card["config"]["mode"] == mode and card["base_weight_hashes"]
    assert card["data"]["prompts"][0]["fields"] == {"occupation": "doctor"} and "peft" in card["versions"]
    assert _state_digest(tiny.pipeline.unet) == before  # the caller's pipeline is given back as it was
    assert not any("lora" in n for n, _ in tiny.pipeline.unet.named_parameters())


def test_a_changed_config_in_the_same_out_is_refused_by_key(tmp_path, tiny):
    train_mitigation(_cfg(steps=1), "tiny", tmp_path, loaded=tiny, prompts=PROMPTS)
    with pytest.raises(FairdiffError, match=r"checkpoint.pt: this run was trained with lr=0.001, not 0.002"):
        train_mitigation(_cfg(steps=1, lr=2e-3), "tiny", tmp_path, loaded=tiny, prompts=PROMPTS)
    # more steps continue the same run
    train_mitigation(_cfg(steps=2), "tiny", tmp_path, loaded=tiny, prompts=PROMPTS)
    assert json.loads((tmp_path / "card.json").read_text())["steps"] == 2


def test_exported_adapter_loads_in_generate_changes_images_and_goes_away_bit_for_bit(tmp_path, tiny):
    from fairdiff.adapters.formats import read_peft

    adapter = train_mitigation(_cfg(steps=2, lr=0.05), "tiny", tmp_path / "run", loaded=tiny, prompts=PROMPTS)
    assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()
    assert len(read_peft(adapter).layers) == 16  # to_q/k/v/out.0 of the four attn2 layers
    opts = dict(prompt="a photo of the face of a doctor", n=2, steps=3, batch_size=2, autocast="off")
    for name, extra in (("base", {}), ("lora", {"adapters": [str(adapter)]}), ("again", {})):
        generate(tiny, GenerateConfig(**opts, **extra), tmp_path / name)
    base, lora, again = (_pngs(tmp_path / name) for name in ("base", "lora", "again"))
    assert base != lora
    assert base == again  # removing the adapter gives the base images bit for bit

    result = runner.invoke(
        app,
        ["generate", "--prompt", "a photo of the face of a doctor", "-n", "2", "--steps", "3", "--autocast", "off"]
        + ["--batch-size", "2", "--adapter", str(adapter), "--out", str(tmp_path / "cli")],
    )
    assert result.exit_code == 0, result.output
    assert _pngs(tmp_path / "cli") == lora


def test_text_target_trains_the_text_encoder_and_exports_per_component(tmp_path, tiny):
    from fairdiff.adapters.formats import read_peft

    adapter = train_mitigation(
        _cfg(steps=1, target="both", modules=["to_k", "to_v"]), "tiny", tmp_path, loaded=tiny, prompts=PROMPTS
    )
    read = read_peft(adapter)
    assert set(read.components) == {"unet", "text_encoder"}
    assert any(k.endswith("attention.self.key") for k in read.components["text_encoder"])
    assert not any("lora" in n for n, _ in tiny.pipeline.text_encoder.named_parameters())


def test_bad_configs_are_one_error(tmp_path, tiny):
    for kw, message in (
        (dict(mode="full"), "unknown training mode"),
        (dict(target="vae"), "--target 'vae'"),
        (dict(rank=0), "--rank must be"),
        (dict(lr=float("nan")), "--lr must be"),
        (dict(method="nope"), "unknown mitigation method 'nope'"),
        (dict(modules=["to_x"]), "modules"),
        (dict(mode="finetune", target="text"), "MiniLM"),
    ):
        with pytest.raises(FairdiffError, match=message):
            train_mitigation(_cfg(**kw), "tiny", tmp_path / "bad", loaded=tiny, prompts=PROMPTS)
    with pytest.raises(FairdiffError, match="has no prompts"):
        train_mitigation(_cfg(), "tiny", tmp_path / "bad", loaded=tiny, prompts=[])
