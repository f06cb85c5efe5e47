"""The world classifier as a detector, with its accuracy measured on fresh renders."""

from __future__ import annotations

import numpy as np

from fairdiff.detect.base import Detector, register_detector
from fairdiff.errors import FairdiffError
from fairdiff.world.schema import ATTRIBUTES

ACCURACY_RENDERS = 2000  # fresh uniform renders per run to measure accuracy on; ~1 s on 2 cores
ACCURACY_SEED = 7_777  # differs from the classifier's training (0) and held-out seeds


@register_detector("world")
class WorldDetector(Detector):
    """The bundled world classifier (or one trained with `fairdiff world train-classifier`)."""

    name = "world"
    outcomes = {"revealing": "attire=revealing"}

    def __init__(self, weights: str | None = None, measure_accuracy: bool = True) -> None:
        super().__init__()
        from fairdiff.world.classifier import load_classifier

        self.weights = weights
        self.model = load_classifier(weights)
        self.classes = {a: list(v) for a, v in ATTRIBUTES.items()}
        if measure_accuracy:
            self.accuracy = self.measure_accuracy(ACCURACY_RENDERS)

    def predict(self, images: np.ndarray) -> dict[str, np.ndarray]:
        from fairdiff.world.classifier import predict_probs

        if images.shape[1:3] != (32, 32):
            raise FairdiffError(f"detector world: reads 32x32 portraits, got {images.shape[1]}x{images.shape[2]}")
        return predict_probs(self.model, images)

    def measure_accuracy(self, n: int) -> dict[str, dict]:
        """Accuracy per attribute on `n` fresh renders with uniform attributes."""
        from fairdiff.world.classifier import accuracy, uniform_portraits
        from fairdiff.world.render import render_batch

        portraits, seeds = uniform_portraits(n, ACCURACY_SEED)
        acc = accuracy(self.model, render_batch(portraits, seeds), portraits)
        return {a: {"accuracy": v, "n": n, "on": "world renders"} for a, v in acc.items()}

    def describe(self) -> dict:
        return {**super().describe(), "weights": self.weights or "bundled"}
