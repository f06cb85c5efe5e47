"""`fairdiff world ...` on bad input and failures: one red line, exit 1, and nothing that was there before lost."""

from __future__ import annotations

import json
import os

import pytest
import yaml
from typer.testing import CliRunner

from cli_helpers import error_line
from fairdiff.cli import app
from fairdiff.world.config import DEFAULT_WORLD

runner = CliRunner()


def _world_without(tmp_path, occupation: str):
    data = yaml.safe_load(DEFAULT_WORLD.read_text())
    del data["occupations"][occupation]
    path = tmp_path / f"no-{occupation}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_render_refuses_a_folder_that_is_not_a_render_and_replaces_one_that_is(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    result = runner.invoke(app, ["world", "render", "--n", "2", "--out", str(tmp_path / "mine")])
    assert "not a previous world render" in error_line(result)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    for n in ("5", "2"):
        result = runner.invoke(app, ["world", "render", "--n", n, "--out", str(tmp_path / "w")])
        assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "w" / "images").iterdir())) == 2
    assert len((tmp_path / "w" / "manifest.jsonl").read_text().splitlines()) == 2


def test_sheet_without_an_extension_writes_png_and_bad_extensions_are_one_error(tmp_path):
    result = runner.invoke(app, ["world", "sheet", "--out", str(tmp_path / "sheet")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "sheet.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and not (tmp_path / "sheet").exists()
    result = runner.invoke(app, ["world", "sheet", "--out", str(tmp_path / "sheet.nope")])
    assert "unknown image extension '.nope'; use .png" in error_line(result)
    (tmp_path / "d.png").mkdir()
    assert "is a directory" in error_line(runner.invoke(app, ["world", "sheet", "--out", str(tmp_path / "d.png")]))


def test_gates_with_a_world_lacking_an_occupation_fail_before_loading_the_model(tmp_path, monkeypatch):
    import fairdiff.models.loading as loading

    monkeypatch.setattr(loading, "load_pipeline", lambda *a, **k: pytest.fail("model loaded before the check"))
    config = _world_without(tmp_path, "ceo")
    result = runner.invoke(app, ["world", "gates", "-c", str(config), "--out", str(tmp_path / "g.json")])
    line = error_line(result)
    assert "no-ceo.yaml" in line and "measure the occupations doctor, nurse, ceo, housekeeper" in line
    assert "this world has no ceo" in line and not (tmp_path / "g.json").exists()


def test_train_classifier_bad_sizes_and_paths_are_one_error(tmp_path):
    result = runner.invoke(app, ["world", "train-classifier", "--n-train", "5", "--out", str(tmp_path / "c.st")])
    assert "--n-train 5 is below the batch size 128" in error_line(result)
    result = runner.invoke(app, ["world", "train-classifier", "--n-train", "256", "--out", str(tmp_path / "c.json")])
    assert "cannot end in .json" in error_line(result)
    assert list(tmp_path.iterdir()) == []


def _fake_bundle(tmp_path, monkeypatch):
    import fairdiff.models.tiny as tiny

    bundled = tmp_path / "assets" / "tiny-portrait"
    bundled.mkdir(parents=True)
    (bundled / "model_index.json").write_text('{"old": true}')
    monkeypatch.setattr(tiny, "bundled_model_dir", lambda: bundled)
    return bundled


_TRAIN = ["world", "train-model", "--steps", "1", "--batch-size", "2", "--checkpoint-every", "1", "--bundle"]


def test_train_model_bundle_failing_mid_copy_keeps_the_bundled_model(tmp_path, monkeypatch):
    import shutil

    import fairdiff.world.train_model as train_model

    bundled = _fake_bundle(tmp_path, monkeypatch)
    real_copytree = shutil.copytree

    def copy_then_disk_full(src, dst, *args, **kw):
        real_copytree(src, dst, *args, **kw)  # all of it written (copytree recurses through this too) ...
        if dst == bundled.parent / f".tiny-portrait.bundling-{os.getpid()}":
            raise OSError(28, "No space left on device")  # ... then the disk fills

    monkeypatch.setattr(train_model.shutil, "copytree", copy_then_disk_full)
    result = runner.invoke(app, [*_TRAIN, "--out", str(tmp_path / "run")])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    line = result.stderr.splitlines()[-1]  # after the training progress bar
    assert "No space left on device" in line and "the bundled model is unchanged" in line
    assert json.loads((bundled / "model_index.json").read_text()) == {"old": True}
    assert sorted(p.name for p in bundled.parent.iterdir()) == ["tiny-portrait"]  # no half copy beside it

    monkeypatch.setattr(train_model.shutil, "copytree", real_copytree)
    result = runner.invoke(app, [*_TRAIN, "--out", str(tmp_path / "run")])  # resumes at step 1, then bundles
    assert result.exit_code == 0, result.output
    index = json.loads((bundled / "model_index.json").read_text())
    assert index["_class_name"] == "TinyPortraitPipeline" and (bundled / "unet").is_dir()
    assert sorted(p.name for p in bundled.parent.iterdir()) == ["tiny-portrait"]
