from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from fairdiff.errors import FairdiffError
from fairdiff.images import grid
from fairdiff.world.dataset import contact_sheet, render_dataset
from fairdiff.world.render import render_portrait
from fairdiff.world.schema import Portrait


def test_render_dataset_writes_images_and_manifest(world, tmp_path):
    manifest = render_dataset(world, 30, seed=5, out=tmp_path, chunk=8)
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert len(rows) == 30 and len(list((tmp_path / "images").glob("*.png"))) == 30
    row = rows[7]
    img = np.asarray(Image.open(tmp_path / row["file"]))
    portrait = Portrait(**{k: row[k] for k in ("gender", "skin", "age", "attire", "occupation")})
    assert np.array_equal(img, render_portrait(portrait, row["seed"]))
    assert row["caption"] and row["context"] in world.contexts
    assert json.loads((tmp_path / "world.json").read_text())["seed"] == 5


def test_grid_and_sheet():
    imgs = np.zeros((5, 4, 4, 3), dtype=np.uint8)
    g = grid(imgs, cols=3)
    assert g.shape == (8, 12, 3) and g[4:, 8:].min() == 255
    sheet = contact_sheet(["doctor", "nurse"], scale=1)
    assert sheet.size == (90 + 32 * 32, 34 + 2 * 32)


def _snapshot(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_rerender_replaces_a_previous_render_whole(world, tmp_path):
    out = tmp_path / "w"
    render_dataset(world, 10, seed=1, out=out, chunk=4)
    render_dataset(world, 4, seed=2, out=out, chunk=4)  # a shorter run: no stale PNGs, rows or record
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and sorted(p.name for p in (out / "images").iterdir()) == [f"{i:06d}.png" for i in range(4)]
    assert json.loads((out / "world.json").read_text())["n"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w"]  # nothing left beside it


def test_failed_rerender_leaves_the_previous_render_as_it_was(world, tmp_path, monkeypatch):
    import fairdiff.world.dataset as dataset

    out = tmp_path / "w"
    render_dataset(world, 6, seed=1, out=out, chunk=3)
    before = _snapshot(out)
    real, calls = dataset.render_batch, []

    def dies_on_second_chunk(portraits, seeds):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # a Ctrl-C mid-render
        return real(portraits, seeds)

    monkeypatch.setattr(dataset, "render_batch", dies_on_second_chunk)
    with pytest.raises(KeyboardInterrupt):
        render_dataset(world, 6, seed=9, out=out, chunk=3)
    assert _snapshot(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["w"]


def test_render_refuses_a_folder_that_is_not_a_render(world, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FairdiffError, match=r"not a previous world render \(it holds notes.txt\)"):
        render_dataset(world, 2, seed=0, out=tmp_path)
    # a render with a file of the user's added is refused too: replacing it would delete that file
    out = tmp_path / "w"
    render_dataset(world, 2, seed=0, out=out)
    (out / "labels.csv").write_text("x")
    with pytest.raises(FairdiffError, match="labels.csv"):
        render_dataset(world, 2, seed=0, out=out)
    assert (tmp_path / "notes.txt").read_text() == "mine" and (out / "labels.csv").read_text() == "x"


def test_world_record_takes_yaml_dates(world, tmp_path):
    import copy
    import datetime

    dated = copy.copy(world)
    object.__setattr__(dated, "raw", {**world.raw, "written": datetime.date(2024, 5, 1)})  # what YAML makes of it
    render_dataset(dated, 2, seed=0, out=tmp_path / "w")
    assert json.loads((tmp_path / "w" / "world.json").read_text())["config"]["written"] == "2024-05-01"
