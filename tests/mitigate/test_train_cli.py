"""`fairdiff mitigate lora` / `finetune` on the bundled model and, at one step and tiny size, on random SD 1.x and
SDXL pipelines (so they work unchanged on real checkpoints); bad options are one red line."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from cli_helpers import error_line
from fairdiff.cli import app

runner = CliRunner()
QUICK = ["--steps", "1", "--batch-size", "2", "--autocast", "off"]


@pytest.fixture(scope="module")
def random_pipelines(tmp_path_factory):
    from fairdiff.models.random_pipelines import tiny_sd_pipeline, tiny_sdxl_pipeline

    root = tmp_path_factory.mktemp("random")
    tiny_sd_pipeline().save_pretrained(root / "sd")
    tiny_sdxl_pipeline().save_pretrained(root / "sdxl")
    return root


@pytest.mark.parametrize("kind", ["sd", "sdxl"])
def test_lora_balanced_and_finetune_run_on_random_sd_pipelines(tmp_path, random_pipelines, kind):
    from fairdiff.adapters.engine import attach_adapters
    from fairdiff.adapters.loading import load_adapter
    from fairdiff.models.loading import load_pipeline

    model = str(random_pipelines / kind)
    lora = runner.invoke(
        app,
        [
            "mitigate",
            "lora",
            "--method",
            "balanced",
            "--model",
            model,
            "--target",
            "both",
            "--rank",
            "2",
            *QUICK,
            "-o",
            tmp_path / "l",
        ],
    )
    assert lora.exit_code == 0, lora.output
    card = json.loads((tmp_path / "l" / "card.json").read_text())
    assert card["model"]["kind"] == kind and card["steps"] == 1 and card["config"]["mix"]["skin"]["dark"] == 0.25
    components = {"sd": {"unet", "text_encoder"}, "sdxl": {"unet", "text_encoder", "text_encoder_2"}}[kind]
    assert {p.name for p in (tmp_path / "l" / "adapter").iterdir()} == components
    loaded = load_pipeline(model)
    handle = attach_adapters(loaded.pipeline, [load_adapter(tmp_path / "l" / "adapter")])  # every target exists
    handle.detach()

    ft = runner.invoke(
        app, ["mitigate", "finetune", "--model", model, "--target", "both", *QUICK, "-o", tmp_path / "f"]
    )
    assert ft.exit_code == 0, ft.output
    assert load_pipeline(str(tmp_path / "f" / "pipeline")).kind == kind


def test_lora_balanced_on_the_bundled_model_prints_a_summary(tmp_path):
    result = runner.invoke(app, ["mitigate", "lora", "--method", "balanced", "--rank", "2", *QUICK, "-o", tmp_path])
    assert result.exit_code == 0, result.output
    assert "--adapter" in result.output and (tmp_path / "adapter" / "adapter_config.json").is_file()
    log = (tmp_path / "train.jsonl").read_text().splitlines()
    assert len(log) == 1 and json.loads(log[0])["step"] == 1
    prompts = json.loads((tmp_path / "card.json").read_text())["data"]["prompts"]
    assert len(prompts) == 6 and prompts[0]["fields"]["occupation"] == "doctor"  # the world-train suite


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["lora", "--method", "nope"], "unknown mitigation method 'nope'"),
        (["lora", "--target", "vae"], "--target 'vae'"),
        (["lora", "--rank", "0"], "--rank must be a whole number >= 1"),
        (["lora", "--steps", "0"], "--steps must be a whole number >= 1"),
        (["lora", "--lr", "-1"], "--lr must be a finite number > 0"),
        (["lora", "--mix", "gender=alien"], "unknown gender value 'alien'"),
        (["lora", "--mix", "hat=uniform"], "unknown attribute 'hat'"),
        (["lora", "--suite", "no-such-suite"], "suite 'no-such-suite'"),
        (["lora", "--autocast", "maybe"], "unknown autocast mode"),
        (["lora", "--method-option", "x"], "expected KEY=VALUE"),
        (["lora", "--method", "balanced", "--method-option", "x=1"], "unknown method option(s) x"),
        (["finetune", "--target", "text"], "MiniLM"),
        (["finetune", "--model", "no/such-model-here"], "no/such-model-here"),
    ],
)
def test_bad_options_are_one_error_line(tmp_path, args, message):
    result = runner.invoke(app, ["mitigate", args[0], *QUICK, *args[1:], "-o", str(tmp_path / "out")])
    assert message in error_line(result)
    assert not (tmp_path / "out" / "adapter").exists() and not (tmp_path / "out" / "pipeline").exists()
