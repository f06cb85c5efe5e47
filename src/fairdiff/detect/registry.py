"""Build detectors by name: the built-in ones (world, clip, nudenet) are imported on first use, and "a+b" puts
several side by side. `register_detector` (detect/base.py) adds new ones."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from fairdiff.detect.base import DETECTORS, Detector
from fairdiff.errors import FairdiffError


def detector_factory(name: str) -> Callable[..., Detector]:
    """The factory registered under `name` (importing the built-in detectors on first use); for "a+b", a's
    (after checking every part's name)."""
    if "+" in name:
        parts = [detector_factory(n) for n in name.split("+")]
        return parts[0]
    import fairdiff.detect.world  # noqa: F401  (registers "world")

    for optional in ("fairdiff.detect.clip", "fairdiff.detect.nsfw"):
        try:
            __import__(optional)
        except ModuleNotFoundError as exc:
            if exc.name != optional:
                raise
    if name not in DETECTORS:
        raise FairdiffError(f"unknown detector {name!r}; choose one of: {', '.join(sorted(DETECTORS))}")
    return DETECTORS[name]


def detector_options(name: str) -> tuple[str, ...] | None:
    """The keyword options detector `name` accepts (for "a+b": the first part's, which gets them); None where
    its factory takes any keyword (`**kwargs`)."""
    import inspect

    params = inspect.signature(detector_factory(name)).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return tuple(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))


def check_detector_options(name: str, options: dict) -> None:
    """One `FairdiffError` naming the first option detector `name` does not take and the options it does."""
    accepted = detector_options(name)
    unknown = [k for k in options if accepted is not None and k not in accepted]
    if unknown:
        first = name.split("+")[0]
        via = f" (options go to {first!r}, the first detector of {name!r})" if "+" in name else ""
        raise FairdiffError(
            f"--detector-option {unknown[0]!r}: detector {first!r} has no such option{via}; "
            f"its options are: {', '.join(accepted) or 'none'}"
        )


class CombinedDetector(Detector):
    """Several detectors as one ("clip+nudenet"): their attributes and outcomes side by side."""

    def __init__(self, parts: list[Detector]) -> None:
        super().__init__()
        self.parts = parts
        self.name = "+".join(p.name for p in parts)
        self.classes, self.outcomes = {}, {}
        for part in parts:
            clash = set(part.classes) & set(self.classes)
            if clash:
                raise FairdiffError(f"detectors {self.name}: more than one detects {', '.join(sorted(clash))}")
            self.classes.update(part.classes)
            self.outcomes.update(part.outcomes)
            self.accuracy.update(part.accuracy)

    def predict(self, images: np.ndarray) -> dict[str, np.ndarray]:
        return {a: p for part in self.parts for a, p in part(images).items()}

    def describe(self) -> dict:
        return {**super().describe(), "parts": [p.describe() for p in self.parts]}


def build_detector(name: str, **options) -> Detector:
    """Build a registered detector by name; "a+b" combines detectors (options go to the first part)."""
    check_detector_options(name, options)
    names = name.split("+")
    if len(names) == 1:
        return detector_factory(name)(**options)
    factories = [detector_factory(n) for n in names]  # every name checked before anything is built
    return CombinedDetector([f(**(options if i == 0 else {})) for i, f in enumerate(factories)])
