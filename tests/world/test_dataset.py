from __future__ import annotations

import json

import numpy as np
from PIL import Image

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
