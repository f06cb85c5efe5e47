"""The detector interface and registry."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

import numpy as np

from fairdiff.errors import FairdiffError


class Detector(ABC):
    """Per-image class probabilities for a fixed set of attributes.

    Subclasses set `name`, `classes` ({attribute: [class, ...]}) and implement `predict`. `accuracy` holds the
    measured accuracy per attribute ({attribute: {"accuracy": float, "n": int, "on": str}}) or stays empty
    where nothing was measured; reports print "not measured" then, never a guess."""

    name: str = "detector"
    classes: dict[str, list[str]]
    outcomes: dict[str, str] = {}  # outcome name -> "attribute=class" it is read from (e.g. revealing)

    def __init__(self) -> None:
        self.accuracy: dict[str, dict] = {}

    @abstractmethod
    def predict(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """uint8 images (N, H, W, 3) -> {attribute: float probabilities (N, K)}, rows summing to 1."""

    def describe(self) -> dict:
        """What a run dir records about this detector (name, classes, accuracy, weights)."""
        return {"name": self.name, "classes": self.classes, "outcomes": self.outcomes, "accuracy": self.accuracy}

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise FairdiffError(
                f"detector {self.name}: expects uint8 images (N, H, W, 3), got {images.dtype} {tuple(images.shape)}"
            )
        probs = self.predict(images)
        for attribute, p in probs.items():
            if p.shape != (len(images), len(self.classes[attribute])) or not np.isfinite(p).all():
                raise FairdiffError(f"detector {self.name}: bad probabilities for {attribute!r}: shape {p.shape}")
        return probs


DETECTORS: dict[str, Callable[..., Detector]] = {}


def register_detector(name: str) -> Callable:
    """Class decorator: make a detector buildable by name (`--detector NAME`)."""

    def wrap(factory: Callable[..., Detector]) -> Callable[..., Detector]:
        DETECTORS[name] = factory
        return factory

    return wrap
