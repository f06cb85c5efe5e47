"""tools/gpu_train/kit.py: `restore` makes a trimmed BERT (kept word rows, first position rows, xz) a loadable
full-size model that encodes kept tokens exactly as the original did; the wheels travel packed and come back whole;
the size check counts what a device call sends."""

from __future__ import annotations

import importlib.util
import json
import lzma
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save
from transformers import BertConfig, BertModel

KIT = Path(__file__).parents[2] / "tools" / "gpu_train" / "kit.py"


def _kit_module():
    spec = importlib.util.spec_from_file_location("gpu_kit", KIT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_restore_rebuilds_a_model_that_encodes_kept_tokens_exactly(tmp_path):
    kit = _kit_module()
    config = BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    )
    torch.manual_seed(0)
    original = BertModel(config, add_pooling_layer=False).eval()
    state = original.state_dict()
    kept = torch.tensor([0, 3, 7, 11, 42])
    small = {k: v for k, v in state.items() if k not in (kit.WORD_EMBEDDINGS, kit.POSITION_EMBEDDINGS)}
    small.pop("embeddings.position_ids", None)
    small["word_embeddings.ids"] = kept
    small["word_embeddings.rows"] = state[kit.WORD_EMBEDDINGS][kept].clone()
    small["position_embeddings.rows"] = state[kit.POSITION_EMBEDDINGS][:6].clone()
    (tmp_path / "kit" / "minilm").mkdir(parents=True)
    (tmp_path / "kit" / "minilm" / kit.TRIMMED).write_bytes(lzma.compress(save(small)))
    (tmp_path / "kit" / "minilm" / "config.json").write_text(json.dumps(config.to_dict()))
    for name in kit.TOKENIZER_FILES[1:]:
        (tmp_path / "kit" / "minilm" / name).write_text("{}")

    restored_dir = kit.restore(tmp_path / "kit", tmp_path / "restored")
    restored = BertModel.from_pretrained(restored_dir, add_pooling_layer=False).eval()
    ids = torch.tensor([[0, 42, 7, 3, 11, 0]])  # kept tokens only, 6 positions
    with torch.no_grad():
        assert torch.equal(restored(input_ids=ids).last_hidden_state, original(input_ids=ids).last_hidden_state)
    weights = restored.state_dict()
    assert weights[kit.WORD_EMBEDDINGS][5].abs().sum() == 0  # a dropped row is zero
    assert weights[kit.POSITION_EMBEDDINGS].shape == (32, 16) and weights[kit.POSITION_EMBEDDINGS][6:].abs().sum() == 0


def _wheel(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as whl:
        for name, data in files.items():
            whl.writestr(name, data)
    return path


def test_packed_wheels_come_back_with_the_same_files_and_much_smaller(tmp_path):
    kit = _kit_module()
    source = "".join(f"def f{i}(x):\n    return x * {i} + {i % 7}\n\n" for i in range(3000)).encode()
    wheels = [
        _wheel(tmp_path / f"pkg{n}-1.0-py3-none-any.whl", {f"pkg{n}/__init__.py": source, "pkg.dist-info/RECORD": b"r"})
        for n in range(3)
    ]
    (tmp_path / "kit").mkdir()
    kit.pack_wheels(wheels, tmp_path / "kit" / kit.WHEELS_TAR)
    assert (tmp_path / "kit" / kit.WHEELS_TAR).stat().st_size < sum(w.stat().st_size for w in wheels) / 2

    back = kit.unpack_wheels(tmp_path / "kit", tmp_path / "out")
    assert sorted(p.name for p in back) == sorted(w.name for w in wheels)
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as a, zipfile.ZipFile(tmp_path / "out" / wheel.name) as b:
            assert b.testzip() is None
            assert [(i.filename, a.read(i)) for i in a.infolist()] == [(i.filename, b.read(i)) for i in b.infolist()]


def test_unpack_refuses_a_tar_that_holds_more_than_wheels(tmp_path):
    kit = _kit_module()
    (tmp_path / "kit").mkdir()
    (tmp_path / "evil").mkdir()
    (tmp_path / "evil" / "run.sh").write_text("echo hi")
    with tarfile.open(tmp_path / "kit" / kit.WHEELS_TAR, "w:xz") as tar:
        tar.add(tmp_path / "evil" / "run.sh", arcname="sub/run.sh")
    with pytest.raises(SystemExit, match="holds more than wheels"):
        kit.unpack_wheels(tmp_path / "kit", tmp_path / "out")


def test_check_fits_counts_tracked_and_untracked_files_but_not_ignored_ones(tmp_path):
    kit = _kit_module()
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / ".gitignore").write_text("/.gpu-kit/\n/big/\n")
    (repo / "tracked.bin").write_bytes(b"t" * 3000)
    subprocess.run(["git", "-C", str(repo), "add", "tracked.bin", ".gitignore"], check=True)
    (repo / "untracked.bin").write_bytes(b"u" * 2000)
    (repo / "big").mkdir()
    (repo / "big" / "ignored.bin").write_bytes(b"i" * 100_000)
    (repo / ".gpu-kit").mkdir()
    (repo / ".gpu-kit" / "wheels.tar.xz").write_bytes(b"k" * 1000)
    expected = 3000 + 2000 + (repo / ".gitignore").stat().st_size + 1000  # not big/
    assert kit.check_fits(repo / ".gpu-kit", repo, limit=expected) == expected
    with pytest.raises(SystemExit, match="over the device call's"):
        kit.check_fits(repo / ".gpu-kit", repo, limit=expected - 1)
