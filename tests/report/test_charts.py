from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from fairdiff.report.charts import Bar, BarRow, ChartLayout, hbar_chart, series_colors, with_ci
from fairdiff.report.runs import accuracy_cell, detector_accuracy, run_labels

INF, NAN = math.inf, math.nan


@pytest.mark.parametrize(
    "args, expected",
    [
        ((0.42, 0.35, 0.49), "0.42 [0.35, 0.49]"),
        ((0.4166, 0.0, 1.0), "0.42 [0.00, 1.00]"),
        ((INF, 1.0, INF), "∞ [1.00, ∞]"),
        ((0.5, NAN, NAN), "0.50"),
        ((NAN, 0.1, 0.2), "—"),
        ((None, None, None), "—"),
    ],
)
def test_with_ci_formats_estimate_and_interval(args, expected):
    assert with_ci(*args) == expected


def test_hbar_chart_geometry_and_escaping():
    layout = ChartLayout(plot_width=200)
    rows = [
        BarRow("a<b>&c", [Bar("base", 0.5, 0.25, 0.75, n=8), Bar("arm2", 1.0, 1.0, 1.0)], target=0.5, truth=0.25),
        BarRow("empty", [Bar("base", NAN), Bar("arm2", NAN)]),
    ]
    colors = series_colors(["base", "arm2"])
    svg = ET.fromstring(str(hbar_chart(rows, colors, title="t <x>", chart_id="c1", kind="shares", layout=layout)))
    assert svg.get("id") == "c1" and svg.get("class") == "fd-chart fd-shares"
    left = float(svg.find("g[@class='fd-target']/line").get("x1")) - 0.5 * 200  # target 0.5 sits mid-axis
    bars = svg.findall("g[@class='fd-bar']")
    assert len(bars) == 2  # the empty row draws no bar
    rect = bars[0].find("rect")
    assert float(rect.get("x")) == left and float(rect.get("width")) == 100  # 0.5 of 200 px
    assert rect.get("fill") == colors["base"]
    whisker = bars[0].find("line")
    assert (float(whisker.get("x1")), float(whisker.get("x2"))) == (left + 50, left + 150)
    assert bars[0].find("title").text == "base · a<b>&c: 0.50 [0.25, 0.75] (n=8)"
    assert float(bars[1].find("rect").get("width")) == 200
    labels = [g.find("text").text for g in svg.findall("g[@class='fd-row-label']")]
    assert labels == ["a<b>&c", "empty"]  # escaped in the markup, the same text once parsed
    assert [t.text for t in svg.findall("g[@class='fd-empty']/text")] == ["no images"]
    truth = svg.find("g[@class='fd-truth']/polygon").get("points").split()
    assert float(truth[0].split(",")[0]) == pytest.approx(left + 50)
    assert svg.find("title").text == "t <x>"


def test_series_colors_are_distinct_and_stable():
    colors = series_colors(["a", "b", "a", "c"])
    assert list(colors) == ["a", "b", "c"] and len(set(colors.values())) == 3


RECORD = {
    "detector": {
        "name": "world",
        "classes": {"gender": ["man", "woman"], "skin": ["light", "dark"]},
        "accuracy": {"gender": {"accuracy": 0.98765, "n": 2000, "on": "world renders"}},
    }
}


def test_detector_accuracy_line_names_measured_and_unmeasured_heads():
    assert detector_accuracy(RECORD, ["gender"]) == "world detector accuracy on world renders: gender 0.988 (n=2000)"
    line = detector_accuracy(RECORD, ["gender×skin"])
    assert line == "world detector accuracy on world renders: gender 0.988 (n=2000); skin not measured"
    assert detector_accuracy(RECORD, ["skin"]) == "world detector accuracy: not measured"
    empty = {"detector": {"name": "clip", "classes": {"gender": ["man", "woman"]}, "accuracy": {}}}
    assert detector_accuracy(empty) == "clip detector accuracy: not measured"
    assert accuracy_cell(RECORD, "gender") == "0.988"
    assert accuracy_cell(RECORD, "gender×skin") == "0.988 / not measured"
    assert accuracy_cell(empty, "gender") == "not measured"


def test_run_labels_are_unique(tmp_path):
    assert run_labels([tmp_path / "a" / "run", tmp_path / "b" / "other"]) == ["run", "other"]
    assert run_labels([tmp_path / "a" / "run", tmp_path / "b" / "run"]) == ["a/run", "b/run"]
    same = Path(tmp_path / "x")
    assert run_labels([same, same]) == [f"{tmp_path.name}/x", f"{tmp_path.name}/x#2"]
