from __future__ import annotations

import json

import numpy as np
import pytest

from fairdiff.errors import FairdiffError
from fairdiff.models.loading import load_pipeline
from fairdiff.models.random_pipelines import tiny_sd_pipeline, tiny_sdxl_pipeline
from fairdiff.models.sampling import run_pipeline


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
    images = run_pipeline(
        loaded, ["a doctor", "a nurse"], ["", "blurry"], [0, 1], steps=2, guidance=5.0, height=32, width=32
    )
    assert images.shape == (2, 32, 32, 3) and images.dtype == np.uint8
    again = run_pipeline(loaded, ["a nurse"], ["blurry"], [1], steps=2, guidance=5.0, height=32, width=32)
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
