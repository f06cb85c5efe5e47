"""diffusers and kohya LoRA files: the same file through diffusers' `load_lora_weights` and through fairdiff
gives the same UNet and text-encoder outputs (fp32, <= 1e-5), on tiny random SD 1.x and SDXL pipelines."""

from __future__ import annotations

import pytest
import torch
from _adapter_fixtures import TEXT_ATTN, UNET_ATTN, kohya_keys, outputs, random_lora, sgm_name
from safetensors.torch import save_file

from fairdiff.adapters import attach_adapters, load_adapter
from fairdiff.errors import FairdiffError
from fairdiff.models.random_pipelines import tiny_sd_pipeline, tiny_sdxl_pipeline


def _compare(make_pipe, path, **load_kwargs):
    """Outputs of diffusers' loader vs fairdiff on the file; also checks the adapter changes every output."""
    base = outputs(make_pipe())
    reference_pipe = make_pipe()
    reference_pipe.load_lora_weights(str(path))
    reference = outputs(reference_pipe)
    pipe = make_pipe()
    adapter = load_adapter(path, **load_kwargs)
    handle = attach_adapters(pipe, [adapter])
    handle.set_combination([1.0])
    got = outputs(pipe)
    assert set(got) == set(reference)
    for name in got:
        assert (reference[name] - base[name]).abs().max() > 1e-3, f"{name}: the adapter changes nothing"
        torch.testing.assert_close(got[name], reference[name], rtol=0, atol=1e-5, msg=name)
    return adapter


def _peft_state_dicts(pipe, unet_rank=4, text_rank=2):
    """Random non-zero PEFT LoRAs on the UNet (attention + the conv proj_in) and the text encoder."""
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict

    torch.manual_seed(3)
    unet_cfg = LoraConfig(
        r=unet_rank,
        lora_alpha=8,
        target_modules=["to_q", "to_k", "to_v", "to_out.0", "proj_in"],
        init_lora_weights=False,
    )
    text_cfg = LoraConfig(
        r=text_rank,
        lora_alpha=3,
        target_modules=["q_proj", "k_proj", "v_proj", "out_proj", "fc1"],
        init_lora_weights=False,
    )
    inject_adapter_in_model(unet_cfg, pipe.unet)
    inject_adapter_in_model(text_cfg, pipe.text_encoder)
    return get_peft_model_state_dict(pipe.unet), get_peft_model_state_dict(pipe.text_encoder), unet_cfg, text_cfg


@pytest.mark.parametrize("variant", ["metadata", "no-metadata", "old-keys"])
def test_diffusers_file_equals_diffusers(tmp_path, variant):
    from diffusers import StableDiffusionPipeline
    from diffusers.utils.state_dict_utils import convert_state_dict_to_diffusers

    unet_sd, text_sd, unet_cfg, text_cfg = _peft_state_dicts(tiny_sd_pipeline())
    kwargs = {}
    if variant == "metadata":  # alphas travel in the header: scale alpha / r
        kwargs = dict(
            unet_lora_adapter_metadata=unet_cfg.to_dict(), text_encoder_lora_adapter_metadata=text_cfg.to_dict()
        )
    if variant == "old-keys":  # `to_q.lora.down.weight` / `q_proj.lora_linear_layer.down.weight`
        # (without proj_in: diffusers maps only attention keys to the old names, and its loader then skips the
        # old-style keys of a file that mixes both; fairdiff reads mixed files)
        unet_sd = convert_state_dict_to_diffusers({k: v for k, v in unet_sd.items() if "proj_in" not in k})
        text_sd = convert_state_dict_to_diffusers(text_sd)
        assert any(".lora.down." in k for k in unet_sd) and any("lora_linear_layer" in k for k in text_sd)
    StableDiffusionPipeline.save_lora_weights(
        tmp_path, unet_lora_layers=unet_sd, text_encoder_lora_layers=text_sd, **kwargs
    )
    adapter = _compare(tiny_sd_pipeline, tmp_path / "pytorch_lora_weights.safetensors")
    assert adapter.format == "diffusers" and set(adapter.components) == {"unet", "text_encoder"}
    expected_scale = 8 / 4 if variant == "metadata" else 1.0
    assert {layer.scale for layer in adapter.components["unet"].values()} == {expected_scale}


def test_kohya_sd1_file_equals_diffusers(tmp_path):
    pipe = tiny_sd_pipeline()
    unet = random_lora(pipe.unet, rf"{UNET_ATTN}|.*resnets\.0\.conv1|.*proj_in", rank=4, seed=1)  # LoCon convs too
    text = random_lora(pipe.text_encoder, rf"{TEXT_ATTN}|.*mlp\.fc1", rank=2, seed=2)
    tensors = {
        **kohya_keys("lora_unet_", unet, alpha=2.0),
        # kohya writes the text encoder as transformers 4 named it: text_model.encoder.layers...
        **kohya_keys("lora_te_", text, alpha=1.0, rename=lambda m: f"text_model.{m}"),
    }
    save_file(tensors, str(tmp_path / "kohya.safetensors"))
    adapter = _compare(tiny_sd_pipeline, tmp_path / "kohya.safetensors")
    assert adapter.format == "kohya"
    assert {layer.scale for layer in adapter.components["unet"].values()} == {0.5}  # alpha 2 / rank 4


def test_kohya_sdxl_file_equals_diffusers(tmp_path):
    pipe = tiny_sdxl_pipeline()
    lpb = pipe.unet.config.layers_per_block
    unet = random_lora(pipe.unet, UNET_ATTN, rank=4, seed=1)
    te1 = random_lora(pipe.text_encoder, TEXT_ATTN, rank=2, seed=2)
    te2 = random_lora(pipe.text_encoder_2, TEXT_ATTN, rank=3, seed=3)
    tensors = {
        **kohya_keys("lora_unet_", unet, alpha=2.0, rename=lambda m: sgm_name(m, lpb)),  # input_blocks_3_1_...
        **kohya_keys("lora_te1_", te1, alpha=1.0, rename=lambda m: f"text_model.{m}"),
        **kohya_keys("lora_te2_", te2, alpha=3.0),  # CLIPTextModelWithProjection keeps text_model.
    }
    assert any(k.startswith("lora_unet_input_blocks_3_1_") for k in tensors)
    save_file(tensors, str(tmp_path / "sdxl.safetensors"))
    adapter = _compare(tiny_sdxl_pipeline, tmp_path / "sdxl.safetensors", unet_config=pipe.unet.config)
    assert set(adapter.components) == {"unet", "text_encoder", "text_encoder_2"}


def test_kohya_alpha_per_module_and_default(tmp_path):
    A, B = torch.randn(4, 6), torch.randn(5, 4)
    tensors = {
        "lora_unet_mid_block_attentions_0_proj_in.lora_down.weight": A,
        "lora_unet_mid_block_attentions_0_proj_in.lora_up.weight": B,
        "lora_unet_mid_block_attentions_0_proj_in.alpha": torch.tensor(1.0),
        "lora_unet_mid_block_attentions_0_proj_out.lora_down.weight": A.clone(),
        "lora_unet_mid_block_attentions_0_proj_out.lora_up.weight": B.clone(),  # no alpha: alpha = rank
        "lora_unet_mid_block_attentions_0_to_out_0.lora_down.weight": A.clone(),
        "lora_unet_mid_block_attentions_0_to_out_0.lora_up.weight": B.clone(),
        "lora_unet_mid_block_attentions_0_to_out_0.alpha": torch.tensor(2),  # saved as an integer
    }
    save_file(tensors, str(tmp_path / "k.safetensors"))
    layers = load_adapter(tmp_path / "k.safetensors").components["unet"]
    assert layers["mid_block.attentions.0.proj_in"].scale == 0.25
    assert layers["mid_block.attentions.0.proj_out"].scale == 1.0
    assert layers["mid_block.attentions.0.to_out.0"].scale == 0.5


def _write(tmp_path, name, tensors, metadata=None):
    path = tmp_path / name
    save_file(tensors, str(path), metadata=metadata)
    return path


def test_bad_pipeline_files_name_the_key(tmp_path):
    down = "lora_unet_mid_block_attentions_0_proj_in.lora_down.weight"
    up = down.replace("down", "up")
    ok = {down: torch.randn(2, 32), up: torch.randn(32, 2)}

    cases = [
        ({**ok, "lora_unet_mid_block_attentions_0_proj_in.hada_w1_a": torch.zeros(1)}, "unknown key '.*hada_w1_a'"),
        ({down: ok[down]}, rf"'{down}' has no '.*lora_up.weight'"),
        ({down: torch.randn(2, 32), up: torch.randn(32, 3)}, r"\(2, 32\) and .* \(32, 3\) do not form a LoRA pair"),
        ({down: torch.randn(2, 32), up: torch.randn(32, 2).half()}, "is torch.float32 but .* is torch.float16"),
        ({down: torch.ones(2, 32, dtype=torch.int64), up: torch.randn(32, 2)}, r"\(2, 32\) has dtype torch.int64"),
        ({down: torch.full((2, 32), float("inf")), up: torch.randn(32, 2)}, rf"'{down}' \(2, 32\) contains NaN or Inf"),
        ({"unet.mid_block.proj_in.lora_A.weight": torch.randn(2, 3), "vae.x": torch.zeros(1)}, "unknown key 'vae.x'"),
        ({"unet.mid_block.proj_in.lora_A.weight": torch.randn(2, 3)}, "has lora down but no lora up"),
    ]
    for i, (tensors, message) in enumerate(cases):
        with pytest.raises(FairdiffError, match=message):
            load_adapter(_write(tmp_path, f"bad{i}.safetensors", tensors))

    truncated = _write(tmp_path, "trunc.safetensors", ok)
    truncated.write_bytes(truncated.read_bytes()[:-40])
    with pytest.raises(FairdiffError, match="truncated or corrupt"):
        load_adapter(truncated)
    pickled = tmp_path / "k.bin"
    torch.save(ok, pickled)
    with pytest.raises(FairdiffError, match="pickled weights are refused"):
        load_adapter(pickled)
    assert load_adapter(pickled, allow_pickle=True).format == "kohya"

    # a module the pipeline lacks, and a shape that does not fit the module it names
    missing = _write(tmp_path, "missing.safetensors", {k.replace("mid_block", "mid_blok"): v for k, v in ok.items()})
    with pytest.raises(
        FairdiffError,
        match=r"target 'mid\.blok\.attentions\.0\.proj_in' does not exist in the unet \(key 'lora_unet_mid_blok_",
    ):
        attach_adapters(tiny_sd_pipeline(), [load_adapter(missing)])
    wrong = _write(tmp_path, "wrong.safetensors", {down: torch.randn(2, 31), up: torch.randn(32, 2)})
    with pytest.raises(FairdiffError, match=rf"'{down}'.*A \(2, 31\) / B \(32, 2\) does not fit"):
        attach_adapters(tiny_sd_pipeline(), [load_adapter(wrong)])


@pytest.mark.parametrize("metadata", [True, False])
def test_unet_save_lora_adapter_file_equals_peft(tmp_path, metadata):
    """diffusers' per-model save (`unet.save_lora_adapter`, keys without `unet.`) reads to the same UNet output
    as the PEFT adapter it was saved from; rank and alpha patterns included."""
    from _adapter_fixtures import unet_inputs
    from peft import LoraConfig
    from safetensors import safe_open

    torch.manual_seed(5)
    peft_pipe = tiny_sd_pipeline()
    config = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=["to_q", "to_k", "to_v", "to_out.0", "proj_in"],
        rank_pattern={"attn2.to_k": 2},
        alpha_pattern={"to_v": 3},
        init_lora_weights=False,
    )
    peft_pipe.unet.add_adapter(config)
    with torch.no_grad():
        if not metadata:  # an older diffusers' file without a LoraConfig: alpha = rank, so scale 1 in PEFT too
            for module in peft_pipe.unet.modules():
                if hasattr(module, "scaling"):
                    module.scaling = {k: 1.0 for k in module.scaling}
        want = peft_pipe.unet(**unet_inputs(peft_pipe.unet)).sample
    peft_pipe.unet.save_lora_adapter(tmp_path)
    path = tmp_path / "pytorch_lora_weights.safetensors"
    with safe_open(str(path), "pt") as f:
        keys = list(f.keys())
    assert keys and not any(k.startswith("unet.") for k in keys)  # what fairdiff refused before
    if not metadata:
        from safetensors.torch import load_file

        save_file(load_file(str(path)), str(path))  # the same tensors without the header's LoraConfig

    pipe = tiny_sd_pipeline()
    with torch.no_grad():
        base = pipe.unet(**unet_inputs(pipe.unet)).sample
    adapter = load_adapter(tmp_path)
    assert adapter.format == "diffusers" and list(adapter.components) == ["model"]
    handle = attach_adapters(pipe, [adapter])
    handle.set_combination([1.0])
    with torch.no_grad():
        got = pipe.unet(**unet_inputs(pipe.unet)).sample
    assert (want - base).abs().max() > 1e-3
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
