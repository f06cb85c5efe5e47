"""Detectors: perceived attributes per image, as class probabilities (docs/detectors.md).

Every detector maps uint8 images (N, H, W, 3) to {attribute: probabilities (N, K)} over its own classes, and
says how accurate it is where that was measured, so every number built on it can carry that accuracy.
"""

from fairdiff.detect.base import DETECTORS, Detector, register_detector
from fairdiff.detect.registry import build_detector, detector_factory

__all__ = ["DETECTORS", "Detector", "build_detector", "detector_factory", "register_detector"]
