"""Image grids: per suite, prompt and arm, the first images (by seed) embedded as data URIs.

Small images (the tiny model's 32x32 portraits) are embedded as their stored PNG bytes; larger ones (real
models) are shrunk to a thumbnail and embedded as JPEG, so that a report of a full SD audit stays a few MB.
Group-scene images (rows with a scene record) are shown with their layout's boxes outlined, green where the
detector sees the person as planned, red where not, grey where nothing was judged (`scene_thumbnail`), enlarged
to at least `SCENE_HEIGHT` pixels high; the tooltip lists each person's planned and detected attributes.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from fairdiff.report.runs import ReportRun
from fairdiff.report.tables import suite_names, suite_spec

logger = logging.getLogger(__name__)

EMBED_AS_IS = 64  # px: images up to this side are embedded unchanged (PNG)
THUMBNAIL = 128  # px: larger images are shrunk to this side (JPEG)
SCENE_HEIGHT = 64  # px: group-scene thumbnails are enlarged (nearest neighbour) to at least this height
OUTLINE = {True: (40, 200, 60), False: (230, 40, 40), None: (150, 150, 150)}  # as planned / not / not judged


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
    scenes: bool = False  # group-scene thumbnails (wide, boxes outlined)


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


def scene_thumbnail(run_dir: Path, image: str, people: list[dict]) -> str | None:
    """The group-scene image with every person's box outlined (see the module docstring) as a PNG data URI; None
    if the image is missing, unreadable or outside the run dir."""
    from PIL import ImageDraw

    path = (run_dir / image).resolve()
    if not path.is_relative_to(run_dir.resolve()):
        logger.warning("image %s is outside the run dir %s; not embedded", image, run_dir)
        return None
    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
    except (OSError, ValueError) as exc:
        logger.warning("image %s not embedded: %s", path, exc)
        return None
    scale = max(1, math.ceil(SCENE_HEIGHT / img.height)) if img.height < SCENE_HEIGHT else 1
    if max(img.size) * scale > 4 * THUMBNAIL:  # a real model's canvas: shrink it instead
        img.thumbnail((4 * THUMBNAIL, 4 * THUMBNAIL))
    elif scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    draw = ImageDraw.Draw(img)
    w, h = img.size
    for person in people:
        x0, y0, x1, y1 = person["box"]
        box = [x0 * w, y0 * h, max(x0 * w, x1 * w - 1), max(y0 * h, y1 * h - 1)]
        draw.rectangle(box, outline=OUTLINE.get(person.get("as_planned"), OUTLINE[None]), width=1)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _scene_alt(text: str, seed: int, people: list[dict]) -> str:
    def words(attrs: dict) -> str:
        return "/".join(str(v) for v in attrs.values()) or "-"

    parts = [
        f"{p['id']}: planned {words(p['planned'])}, seen {words(p['detected'])}"
        + {True: "", False: " ✗", None: ""}[p.get("as_planned")]
        for p in people
    ]
    return f"{text} — seed {seed} — " + "; ".join(parts)


def _thumbs(run_dir: Path, rows) -> tuple[list[Thumb], bool]:
    if "scene_people" not in rows.columns or rows["scene_people"].isna().all():
        thumbs = [
            Thumb(data_uri(run_dir, image), f"{text} — seed {seed}", int(seed))
            for text, seed, image in rows[["text", "seed", "image"]].values
        ]
        return thumbs, False
    thumbs = []
    for text, seed, image, raw in rows[["text", "seed", "image", "scene_people"]].values:
        people = json.loads(raw) if isinstance(raw, str) else []
        thumbs.append(Thumb(scene_thumbnail(run_dir, image, people), _scene_alt(text, int(seed), people), int(seed)))
    return thumbs, True


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
                    thumbs, scenes = _thumbs(r.run_dir, mine.head(images_per_grid))
                    grid.arms.append(ArmGrid(r.arm_label(arm), thumbs, len(mine), scenes))
            if grid.arms:
                suite.prompts.append(grid)
        out.append(suite)
    return out
