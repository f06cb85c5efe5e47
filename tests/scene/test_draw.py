"""Verification of drawn scenes (box crops, adherence, mix error) and `fairdiff scene draw`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from cli_helpers import error_line
from fairdiff.cli import app
from fairdiff.detect.base import Detector
from fairdiff.scene.draw import box_crops, box_pixels, summarize, verify_image
from fairdiff.scene.layout import Layout

runner = CliRunner()


class BrightnessDetector(Detector):
    """skin = dark for a dark crop, light for a bright one (and the crop size is checked)."""

    name = "world"

    def __init__(self) -> None:
        super().__init__()
        self.classes = {"skin": ["light", "medium", "brown", "dark"], "gender": ["man", "woman"]}
        self.sizes: list[tuple[int, int]] = []

    def predict(self, images):
        self.sizes.append(images.shape[1:3])
        dark = images.reshape(len(images), -1).mean(1) < 128
        skin = np.zeros((len(images), 4))
        skin[dark, 3], skin[~dark, 0] = 1, 1
        return {"skin": skin, "gender": np.tile([0.2, 0.8], (len(images), 1))}


def _layout(skins, mix=None) -> Layout:
    k = len(skins)
    return Layout.model_validate(
        {
            "canvas": {"width": 32 * k, "height": 32},
            "prompt": "a team",
            "people": [
                {"id": f"p{i}", "box": [i / k, 0, (i + 1) / k, 1], "attributes": {"skin": s}, "prompt": f"a {s} one"}
                for i, s in enumerate(skins)
            ],
            "planner": {"type": "rules", "mix": mix} if mix else None,
        }
    )


def test_verify_compares_each_box_with_its_plan():
    image = np.full((32, 96, 3), 255, np.uint8)
    image[:, :32] = 0  # box 1 dark, boxes 2 and 3 bright
    det = BrightnessDetector()
    mix = {"skin": {"light": 0.5, "dark": 0.5, "medium": 0.0, "brown": 0.0}}
    record = verify_image(image, _layout(["dark", "dark", "light"], mix), det)
    assert det.sizes == [(32, 32)]
    assert [p["as_planned"] for p in record["people"]] == [True, False, True]
    assert record["adherence"] == pytest.approx(2 / 3)
    assert record["people"][1]["detected"]["skin"] == "light"
    assert record["mix_error"] == pytest.approx(abs(2 / 3 - 0.5), abs=1e-6)  # detected 1 dark, 2 light of 3
    assert record["planned_mix_error"] == pytest.approx(abs(2 / 3 - 0.5), abs=1e-6)
    summary = summarize([record, {**record, "people_as_planned": 3}])
    assert summary["adherence"] == pytest.approx(5 / 6)
    low, high = summary["adherence_ci"]
    assert low < 5 / 6 < high


def test_crops_are_resized_to_the_detector_input():
    image = np.zeros((32, 160, 3), np.uint8)
    lay = Layout.model_validate(
        {
            "canvas": {"width": 160, "height": 32},
            "prompt": "",
            "people": [{"id": "a", "box": [0.1, 0.0, 0.3, 0.5], "prompt": "x"}],
        }
    )
    assert box_pixels(lay.people[0].box, 32, 160) == (16, 0, 48, 16)
    assert box_crops(image, lay, 32).shape == (1, 32, 32, 3)


def test_scene_draw_writes_image_layout_and_verification(tmp_path):
    layout = tmp_path / "l.json"
    layout.write_text(_layout(["dark", "light"]).model_dump_json())
    out = tmp_path / "out"
    result = runner.invoke(app, ["scene", "draw", str(layout), "--out", str(out), "--steps", "1", "-n", "2"])
    assert result.exit_code == 0, result.output
    assert "adherence" in result.output
    for i in range(2):
        record = json.loads((out / f"verify-{i:04d}.json").read_text())
        assert "adherence" in record and len(record["people"]) == 2 and record["seed"] == i
        assert (out / f"image-{i:04d}.png").stat().st_size > 0
        assert json.loads((out / f"layout-{i:04d}.json").read_text())["people"][0]["id"] == "p0"
    summary = json.loads((out / "scene.json").read_text())
    assert summary["people_judged"] == 4 and summary["mode"] == "regional"


def test_scene_draw_plans_a_prompt_first(tmp_path):
    out = tmp_path / "out"
    args = ["scene", "draw", "a team of 3 women", "--mix", "skin=uniform", "--steps", "1", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    layout = json.loads((out / "layout-0000.json").read_text())
    assert len(layout["people"]) == 3 and {p["attributes"]["gender"] for p in layout["people"]} == {"woman"}
    assert json.loads((out / "verify-0000.json").read_text())["people_judged"] == 3


def test_a_box_out_of_range_is_one_line_and_nothing_is_lost(tmp_path):
    data = json.loads(_layout(["dark", "light"]).model_dump_json())
    data["people"][1]["box"] = [0.5, 0.0, 1.5, 1.0]
    layout = tmp_path / "bad.json"
    layout.write_text(json.dumps(data))
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("earlier")
    line = error_line(runner.invoke(app, ["scene", "draw", str(layout), "--out", str(out), "--steps", "1"]))
    assert 'people[1] (id "p1").box' in line
    assert (out / "keep.txt").read_text() == "earlier"
