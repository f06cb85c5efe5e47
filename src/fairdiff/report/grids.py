"""Image grids: per suite, prompt and arm, the first images (by seed) embedded as data URIs.

Small images (the tiny model's 32x32 portraits) are embedded as their stored PNG bytes; larger ones (real
models) are shrunk to a thumbnail and embedded as JPEG, so that a report of a full SD audit stays a few MB.
"""

from __future__ import annotations

import base64
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from fairdiff.report.runs import ReportRun
from fairdiff.report.tables import suite_names, suite_spec

logger = logging.getLogger(__name__)

EMBED_AS_IS = 64  # px: images up to this side are embedded unchanged (PNG)
THUMBNAIL = 128  # px: larger images are shrunk to this side (JPEG)


@dataclass
class Thumb:
    src: str | None  # data URI; None: the file is missing
    alt: str
    seed: int


@dataclass
class ArmGrid:
    arm: str
    thumbs: list[Thumb]
    total: int  # images of this prompt and arm (the grid shows at most `images_per_grid`)


@dataclass
class PromptGrid:
    prompt_id: str
    text: str
    arms: list[ArmGrid] = field(default_factory=list)


@dataclass
class SuiteGrids:
    name: str
    prompts: list[PromptGrid] = field(default_factory=list)


def data_uri(run_dir: Path, image: str) -> str | None:
    """The image (a path inside `run_dir`) as a data URI: PNG as stored when small, else a JPEG thumbnail;
    None if it is missing, unreadable or outside the run dir."""
    path = (run_dir / image).resolve()
    if not path.is_relative_to(run_dir.resolve()):
        logger.warning("image %s is outside the run dir %s; not embedded", image, run_dir)
        return None
    try:
        raw = path.read_bytes()
        with Image.open(io.BytesIO(raw)) as img:
            img.load()
            if max(img.size) <= EMBED_AS_IS and img.format == "PNG":
                return "data:image/png;base64," + base64.b64encode(raw).decode("ascii")
            img = img.convert("RGB")
            if max(img.size) > EMBED_AS_IS:
                img.thumbnail((THUMBNAIL, THUMBNAIL))
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=85)
            return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
    except (OSError, ValueError) as exc:
        logger.warning("image %s not embedded: %s", path, exc)
        return None


def image_grids(runs: list[ReportRun], images_per_grid: int) -> list[SuiteGrids]:
    out = []
    for name in suite_names(runs):
        spec = suite_spec(runs, name)
        suite = SuiteGrids(name)
        for p in spec["prompts"]:
            grid = PromptGrid(p["id"], p["text"])
            for r in runs:
                rows = r.results.rows
                rows = rows[(rows["suite"] == name) & (rows["prompt"] == p["id"])]
                for arm in r.results.arms:
                    mine = rows[rows["arm"] == arm].sort_values("seed")
                    if mine.empty:
                        continue
                    thumbs = [
                        Thumb(data_uri(r.run_dir, image), f"{text} — seed {seed}", int(seed))
                        for text, seed, image in mine[["text", "seed", "image"]].head(images_per_grid).values
                    ]
                    grid.arms.append(ArmGrid(r.arm_label(arm), thumbs, len(mine)))
            if grid.arms:
                suite.prompts.append(grid)
        out.append(suite)
    return out
