from __future__ import annotations

import json

import numpy as np
import pytest

from fairdiff.errors import FairdiffError
from fairdiff.models.loading import load_pipeline
from fairdiff.models.random_pipelines import tiny_sd_pipeline, tiny_sdxl_pipeline
from fairdiff.models.sampling import ImageOptions, SamplingRequest, draw


@pytest.fixture(scope="module", params=["sd", "sdxl"])
def saved_pipeline(request, tmp_path_factory):
    build = {"sd": tiny_sd_pipeline, "sdxl": tiny_sdxl_pipeline}[request.param]
    path = tmp_path_factory.mktemp(request.param)
    build().save_pretrained(path)
    return request.param, path


def test_loads_real_checkpoint_dirs_and_generates(saved_pipeline):
    kind, path = saved_pipeline
    loaded = load_pipeline(str(path))
    assert loaded.kind == kind
    hashes = loaded.weight_hashes()
    assert any(k.startswith("unet/") for k in hashes) and all(len(v) == 64 for v in hashes.values())
    doctor, nurse = ImageOptions("a doctor", "", 0, 5.0), ImageOptions("a nurse", "blurry", 1, 5.0)
    size = {"steps": 2, "height": 32, "width": 32, "autocast": "off"}  # fp32: batch shape changes bf16 kernels more
    images = draw(loaded, SamplingRequest([doctor, nurse], **size))
    assert images.shape == (2, 32, 32, 3) and images.dtype == np.uint8
    again = draw(loaded, SamplingRequest([nurse], **size))
    np.testing.assert_allclose(images[1].astype(int), again[0].astype(int), atol=1)


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("not a model", "unknown model 'not a model'"),
        ("./missing-dir", "unknown model"),
    ],
)
def test_unknown_models(model, message):
    with pytest.raises(FairdiffError, match=message):
        load_pipeline(model)


def test_unreachable_hub_id_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FairdiffError, match="could not be loaded"):
        load_pipeline("nobody-here/no-such-model-xyz")


def test_directory_without_index_and_bad_options(tmp_path):
    with pytest.raises(FairdiffError, match="no model_index.json"):
        load_pipeline(str(tmp_path))
    (tmp_path / "model_index.json").write_text("{not json")
    with pytest.raises(FairdiffError, match="unreadable model_index.json"):
        load_pipeline(str(tmp_path))
    (tmp_path / "model_index.json").write_text("[1, 2]")  # JSON, not an object
    with pytest.raises(FairdiffError, match="unreadable model_index.json"):
        load_pipeline(str(tmp_path))
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "NoSuchPipeline"}))  # a newer diffusers'
    with pytest.raises(FairdiffError, match="could not be loaded"):
        load_pipeline(str(tmp_path))
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    with pytest.raises(FairdiffError, match="--dtype"):
        load_pipeline(str(tmp_path), dtype="float8")
    with pytest.raises(FairdiffError, match="--device"):
        load_pipeline(str(tmp_path), device="cuda:7" if not __import__("torch").cuda.is_available() else "nope")


@pytest.mark.parametrize("device", ["xla", "ipu", "hpu", "meta", "xla:0"])
def test_devices_this_torch_cannot_use_are_one_clear_error(device):
    """torch.device() accepts these names; without their backends every later call would fail deep inside."""
    import torch

    from fairdiff.models.loading import resolve_device

    try:  # a machine with such a backend installed: then it must resolve
        torch.empty(1, device=device)
        usable = device != "meta"
    except Exception:
        usable = False
    if usable:
        assert resolve_device(device).type == torch.device(device).type
        return
    with pytest.raises(FairdiffError, match=rf"--device '{device}'"):
        resolve_device(device)


def test_usable_devices_still_resolve():
    import torch

    from fairdiff.models.loading import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(FairdiffError, match="CUDA is not available"):
            resolve_device("cuda")
    else:
        with pytest.raises(FairdiffError, match="CUDA device"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")
