from __future__ import annotations

import numpy as np
import pytest

from fairdiff.detect import build_detector
from fairdiff.detect.base import Detector
from fairdiff.detect.registry import CombinedDetector
from fairdiff.errors import FairdiffError


class _Fixed(Detector):
    def __init__(self, name: str, classes: dict, outcomes: dict | None = None) -> None:
        super().__init__()
        self.name, self.classes, self.outcomes = name, classes, outcomes or {}

    def predict(self, images):
        return {a: np.full((len(images), len(c)), 1 / len(c)) for a, c in self.classes.items()}


def test_combined_detector_puts_attributes_and_outcomes_side_by_side():
    both = CombinedDetector(
        [
            _Fixed("a", {"gender": ["man", "woman"]}),
            _Fixed("b", {"attire": ["covered", "revealing"]}, {"revealing": "attire=revealing"}),
        ]
    )
    probs = both(np.zeros((3, 8, 8, 3), np.uint8))
    assert both.name == "a+b" and set(probs) == {"gender", "attire"} and probs["attire"].shape == (3, 2)
    assert both.outcomes == {"revealing": "attire=revealing"}
    with pytest.raises(FairdiffError, match="more than one detects gender"):
        CombinedDetector([_Fixed("a", {"gender": ["m", "w"]}), _Fixed("c", {"gender": ["m", "w"]})])


def test_unknown_detector_and_bad_images_are_clear_errors():
    with pytest.raises(FairdiffError, match="unknown detector 'oracle'"):
        build_detector("world+oracle")
    with pytest.raises(FairdiffError, match=r"expects uint8 images \(N, H, W, 3\)"):
        _Fixed("a", {"g": ["x", "y"]})(np.zeros((2, 8, 8), np.float32))


def test_unknown_detector_options_name_the_key_and_the_accepted_ones():
    from fairdiff.detect.registry import detector_options

    assert detector_options("world") == ("weights", "measure_accuracy")
    with pytest.raises(
        FairdiffError,
        match=r"--detector-option 'checkpoint': detector 'world' has no such option; "
        r"its options are: weights, measure_accuracy",
    ):
        build_detector("world", checkpoint="x")
    with pytest.raises(FairdiffError, match=r"'wieghts'.*'world', the first detector of 'world\+nudenet'"):
        build_detector("world+nudenet", wieghts="x")


def test_audit_refuses_an_unknown_detector_option_before_loading_a_model(tmp_path, monkeypatch):
    import fairdiff.models.loading as loading
    from fairdiff.audit.runner import AuditConfig, run_audit

    monkeypatch.setattr(loading, "load_pipeline", lambda *a, **k: pytest.fail("model loaded before the check"))
    cfg = AuditConfig(detector="world", detector_options={"treshold": 0.5}, max_prompts=1, images_per_prompt=1)
    with pytest.raises(FairdiffError, match="'treshold': detector 'world' has no such option"):
        run_audit(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()
