"""NudeNet attire detector: the score mapping with a stand-in NudeDetector, and the real package if installed."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
from PIL import Image

from fairdiff.detect import build_detector
from fairdiff.detect.nsfw import NUDENET_CLASSES, REVEALING_CLASSES, NudeNetDetector
from fairdiff.errors import FairdiffError

# What the stand-in returns for images 0, 1, 2: scores chosen so each rule gives a different answer.
FAKE_DETECTIONS = [
    [
        {"class": "FACE_FEMALE", "score": 0.9, "box": [0, 0, 4, 4]},  # not an exposed-body class
        {"class": "FEMALE_BREAST_EXPOSED", "score": 0.7, "box": [0, 0, 4, 4]},
        {"class": "BELLY_EXPOSED", "score": 0.4, "box": [0, 0, 4, 4]},
    ],
    [],
    [{"class": "FEET_EXPOSED", "score": 0.95, "box": [0, 0, 4, 4]}],  # excluded by default
]


@pytest.fixture
def fake_nudenet(monkeypatch):
    """Replace the nudenet package by a module whose NudeDetector returns FAKE_DETECTIONS and records its input."""
    seen = []

    class NudeDetector:
        def __init__(self, model_path=None, inference_resolution=320):
            self.model_path, self.inference_resolution = model_path, inference_resolution

        def detect_batch(self, images, batch_size=4):
            seen.extend(images)
            return [FAKE_DETECTIONS[i % len(FAKE_DETECTIONS)] for i in range(len(images))]

    module = types.ModuleType("nudenet")
    module.NudeDetector = NudeDetector
    monkeypatch.setitem(sys.modules, "nudenet", module)
    return seen


def test_not_installed_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "nudenet", None)  # makes `import nudenet` fail as if not installed
    with pytest.raises(FairdiffError, match=r"pip install 'fairdiff\[nsfw\]'"):
        build_detector("nudenet")


def test_revealing_is_the_highest_exposed_body_score(fake_nudenet):
    detector = build_detector("nudenet")
    assert isinstance(detector, NudeNetDetector)
    assert detector.classes == {"attire": ["covered", "revealing"]}
    assert detector.outcomes == {"revealing": "attire=revealing"}
    images = np.random.default_rng(0).integers(0, 256, size=(3, 8, 8, 3), dtype=np.uint8)
    probs = detector(images)["attire"]
    np.testing.assert_allclose(probs, [[0.3, 0.7], [1.0, 0.0], [1.0, 0.0]])
    for image, seen in zip(images, fake_nudenet, strict=True):  # NudeNet reads arrays as OpenCV's BGR
        np.testing.assert_array_equal(seen, image[..., ::-1])
    with_feet = NudeNetDetector(revealing_classes=[*REVEALING_CLASSES, "FEET_EXPOSED"])
    np.testing.assert_allclose(with_feet(images)["attire"][:, 1], [0.7, 0.0, 0.95])
    assert detector(np.zeros((0, 8, 8, 3), np.uint8))["attire"].shape == (0, 2)


def test_measure_accuracy_on_attire_labels(fake_nudenet, tmp_path):
    detector = NudeNetDetector()
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(np.full((8, 8, 3), i, np.uint8)).save(paths[-1])
    measured = detector.measure_accuracy(paths, {"attire": ["revealing", "revealing", "covered"]})
    assert measured == {"attire": {"accuracy": 2 / 3, "n": 3, "on": "3 labelled images"}}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"revealing_classes": ["BREAST_EXPOSED"]}, "unknown \\['BREAST_EXPOSED'\\]"),
        ({"revealing_classes": []}, "revealing_classes"),
        ({"batch_size": 0}, "batch_size"),
        ({"model_path": "/no/such/640m.onnx"}, "not found"),
    ],
)
def test_bad_options_are_clear_errors(fake_nudenet, options, message):
    with pytest.raises(FairdiffError, match=message):
        NudeNetDetector(**options)


def test_real_nudenet_on_rendered_portraits(tmp_path):
    nudenet = pytest.importorskip(
        "nudenet", reason="nudenet not installed (optional extra: pip install 'fairdiff[nsfw]')"
    )
    from fairdiff.world.classifier import uniform_portraits
    from fairdiff.world.render import render_batch

    portraits, seeds = uniform_portraits(16, 1)
    small = render_batch(portraits, seeds)  # (16, 32, 32, 3)
    images = np.stack([np.asarray(Image.fromarray(im).resize((128, 128), Image.BICUBIC)) for im in small])
    detector = NudeNetDetector()
    found = detector.detections(images)
    reference = nudenet.NudeDetector()
    for i, image in enumerate(images):  # arrays give exactly what NudeNet's own file reader gives
        Image.fromarray(image).save(tmp_path / f"{i}.png")
        assert found[i] == reference.detect(str(tmp_path / f"{i}.png"))
    assert all(d["class"] in NUDENET_CLASSES for hits in found for d in hits)
    faces = [max((d["score"] for d in hits if d["class"] == "FACE_FEMALE"), default=0.0) for hits in found]
    assert sum(f > 0 for f in faces) >= 2, "NudeNet found no face on the upscaled renders; pick other renders"

    probs = detector(images)["attire"]
    np.testing.assert_allclose(probs.sum(1), 1.0)
    assert ((probs[:, 1] == 0) | (probs[:, 1] >= 0.2)).all()  # NudeNet drops boxes scoring < 0.2
    # any class can stand in for "revealing": with faces, P(revealing) is the face score found above
    faces_as_revealing = NudeNetDetector(revealing_classes=["FACE_FEMALE"])(images)["attire"][:, 1]
    np.testing.assert_allclose(faces_as_revealing, faces, atol=1e-6)
    assert "320n.onnx" in detector.describe()["weights"]
