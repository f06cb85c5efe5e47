"""Draw group-scene layouts and verify them: the detector on each person's box, plan adherence and mix error.

`verify_image(image, layout, detector)` crops every box (pixel bounds: floor of the start, ceiling of the end),
resizes the crop to the detector's input (32 x 32 for the world classifier; bilinear, none when already that
size) and compares the detected class of every planned attribute with the plan. A person is "drawn as planned"
when every planned attribute the detector reads is detected as planned; `adherence` is the share of such people
among those with planned attributes (None when nobody has any). The image's `mix_error` is, per attribute of
the wanted mix (the layout's `planner.mix`; without one, the planned attributes' own shares), the largest
|detected share - wanted share| over the classes, and its maximum over the attributes; `planned_mix_error` is
the same for the plan itself (what exact counts allow: 5 people cannot be 1/4 each of 4 skin tones).

`draw_scenes(...)` draws a list of layouts in batches through `fairdiff.scene.regional` and writes, per image i,
`image-<i>.png`, `layout-<i>.json`, `verify-<i>.json`, plus `scene.json` (the summary: adherence over all people
with a Wilson 95% CI, mean mix error, mode, model, seeds) into an output folder built aside and swapped in, so a
failed run leaves what was there before.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fairdiff.errors import FairdiffError
from fairdiff.files import ensure_writable_dir, swap_in_dir, write_atomic, write_json_atomic
from fairdiff.images import png_bytes
from fairdiff.scene.layout import Layout, check_attributes, layout_json
from fairdiff.scene.regional import draw_layouts

if TYPE_CHECKING:
    from fairdiff.detect.base import Detector
    from fairdiff.models.loading import LoadedModel

CONFIDENCE = 0.95


def crop_size(detector: Detector) -> int:
    """The square size box crops are resized to: the world classifier reads 32 x 32, CLIP-type detectors 224."""
    return 32 if detector.name.split("+")[0] == "world" else 224


def box_pixels(box: Sequence[float], height: int, width: int) -> tuple[int, int, int, int]:
    """A normalized box as pixel bounds (x0, y0, x1, y1), at least one pixel each way."""
    x0, y0 = math.floor(box[0] * width), math.floor(box[1] * height)
    x1, y1 = max(x0 + 1, math.ceil(box[2] * width)), max(y0 + 1, math.ceil(box[3] * height))
    return x0, y0, min(x1, width), min(y1, height)


def box_crops(image: np.ndarray, layout: Layout, size: int) -> np.ndarray:
    """(people, size, size, 3) uint8: each person's box cropped from `image` and resized."""
    from PIL import Image

    h, w = image.shape[:2]
    crops = []
    for person in layout.people:
        x0, y0, x1, y1 = box_pixels(person.box, h, w)
        crop = image[y0:y1, x0:x1]
        if crop.shape[:2] != (size, size):
            crop = np.asarray(Image.fromarray(crop).resize((size, size), Image.BILINEAR))
        crops.append(crop)
    return np.stack(crops)


def _shares(values: Sequence[str], classes: Sequence[str]) -> dict[str, float]:
    n = len(values)
    return {c: (sum(v == c for v in values) / n if n else 0.0) for c in classes}


def mix_error(
    values: Mapping[str, Sequence[str]], wanted: Mapping[str, Mapping[str, float]], classes: Mapping[str, Sequence[str]]
) -> dict[str, float]:
    """Per attribute of `wanted`: max over its classes of |share of `values[attribute]` - wanted share|."""
    out = {}
    for attribute, target in wanted.items():
        shares = _shares(values.get(attribute, []), classes[attribute])
        out[attribute] = round(max(abs(shares[c] - float(target.get(c, 0.0))) for c in classes[attribute]), 6)
    return out


def wanted_mix(layout: Layout, classes: Mapping[str, Sequence[str]]) -> dict[str, dict[str, float]]:
    """The mix an image is measured against: the planner's, else the shares of the planned attributes."""
    if layout.planner is not None and layout.planner.mix:
        return {a: dict(p) for a, p in layout.planner.mix.items() if a in classes}
    planned: dict[str, list[str]] = {}
    for person in layout.people:
        for attribute, value in person.attributes.items():
            planned.setdefault(attribute, []).append(value)
    return {a: _shares(v, classes[a]) for a, v in planned.items() if a in classes}


def verify_image(image: np.ndarray, layout: Layout, detector: Detector) -> dict:
    """The verification record of one drawn image (see the module docstring)."""
    classes = detector.classes
    check_attributes(layout, classes)
    probs = detector(box_crops(image, layout, crop_size(detector)))
    people, planned_all, detected_all = [], {}, {}
    for k, person in enumerate(layout.people):
        detected = {a: classes[a][int(np.argmax(p[k]))] for a, p in probs.items()}
        confidence = {a: round(float(np.max(p[k])), 4) for a, p in probs.items()}
        matches = {a: detected[a] == v for a, v in person.attributes.items() if a in detected}
        for a, v in person.attributes.items():
            planned_all.setdefault(a, []).append(v)
        for a, v in detected.items():
            detected_all.setdefault(a, []).append(v)
        people.append(
            {
                "id": person.id,
                "box": list(person.box),
                "planned": dict(person.attributes),
                "detected": detected,
                "confidence": confidence,
                "matches": matches,
                "as_planned": all(matches.values()) if matches else None,
            }
        )
    judged = [p["as_planned"] for p in people if p["as_planned"] is not None]
    wanted = wanted_mix(layout, classes)
    errors = mix_error(detected_all, wanted, classes)
    planned_errors = mix_error(planned_all, wanted, classes)
    return {
        "adherence": (sum(judged) / len(judged)) if judged else None,
        "people_judged": len(judged),
        "people_as_planned": int(sum(judged)),
        "mix_error": max(errors.values()) if errors else None,
        "mix_error_by_attribute": errors,
        "planned_mix_error": max(planned_errors.values()) if planned_errors else None,
        "wanted_mix": wanted,
        "detector": detector.name,
        "crop_size": crop_size(detector),
        "people": people,
    }


def summarize(records: Sequence[dict]) -> dict:
    """Adherence over all judged people of `records` with a Wilson CI, and the mean image mix error."""
    from fairdiff.metrics.bootstrap import wilson_ci

    k = sum(r["people_as_planned"] for r in records)
    n = sum(r["people_judged"] for r in records)
    low, high = wilson_ci(np.array(k), np.array(n), CONFIDENCE) if n else (np.nan, np.nan)
    errors = [r["mix_error"] for r in records if r["mix_error"] is not None]
    return {
        "adherence": k / n if n else None,
        "adherence_ci": [round(float(low), 4), round(float(high), 4)] if n else None,
        "confidence": CONFIDENCE,
        "people_as_planned": k,
        "people_judged": n,
        "images": len(records),
        "mix_error_mean": round(float(np.mean(errors)), 6) if errors else None,
    }


def draw_scenes(
    loaded: LoadedModel,
    layouts: Sequence[Layout],
    seeds: Sequence[int],
    detector: Detector,
    out: Path,
    *,
    mode: str = "regional",
    steps: int | None = None,
    guidance: float | None = None,
    autocast: str | None = None,
    batch_size: int = 8,
    on_batch: Callable[[int], None] | None = None,
) -> dict:
    """Draw and verify `layouts` (image i with seeds[i]) into `out` (replaced whole when done); returns the
    summary also written to `out/scene.json`."""
    from fairdiff.models.sampling import autocast_used, effective_guidance

    if len(seeds) != len(layouts):
        raise FairdiffError(f"{len(seeds)} seeds for {len(layouts)} layouts")
    for i, layout in enumerate(layouts):
        check_attributes(layout, detector.classes, source=f"layout {i}")
    out = Path(out)
    ensure_writable_dir(out.parent if out.parent != out else out)
    build = Path(tempfile.mkdtemp(prefix=f".{out.name}.new-", dir=out.parent))
    t0 = time.time()
    try:
        records = []
        for start in range(0, len(layouts), batch_size):
            batch, batch_seeds = layouts[start : start + batch_size], seeds[start : start + batch_size]
            images = draw_layouts(
                loaded, batch, batch_seeds, mode=mode, steps=steps, guidance=guidance, autocast=autocast
            )
            for j, (layout, seed, image) in enumerate(zip(batch, batch_seeds, images, strict=True)):
                i = start + j
                record = {"index": i, "seed": int(seed), "mode": mode, **verify_image(image, layout, detector)}
                write_atomic(build / f"image-{i:04d}.png", png_bytes(image))
                write_atomic(build / f"layout-{i:04d}.json", layout_json(layout).encode())
                write_json_atomic(build / f"verify-{i:04d}.json", record)
                records.append(record)
            if on_batch is not None:
                on_batch(len(batch))
        summary = {
            **summarize(records),
            "mode": mode,
            "model": loaded.name,
            "model_kind": loaded.kind,
            "detector": detector.name,
            "steps": steps,
            "guidance": effective_guidance(loaded, guidance),
            "bf16_autocast": autocast_used(loaded, autocast or "auto"),
            "seeds": [int(s) for s in seeds],
            "canvas": layouts[0].canvas.model_dump(),
            "seconds": round(time.time() - t0, 2),
            "files": {"images": "image-*.png", "layouts": "layout-*.json", "verification": "verify-*.json"},
        }
        write_json_atomic(build / "scene.json", summary)
        os.chmod(build, 0o755)
        swap_in_dir(build, out)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    return summary
