"""Write world renders to disk (PNGs + a JSONL manifest) and draw labelled contact sheets."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from PIL import Image, ImageDraw

from fairdiff.errors import FairdiffError
from fairdiff.files import swap_in_dir
from fairdiff.world.captions import sample_world
from fairdiff.world.config import WorldConfig
from fairdiff.world.render import render_batch
from fairdiff.world.schema import AGES, ATTIRES, GENDERS, SKINS, Portrait

MANIFEST = "manifest.jsonl"
RECORD = "world.json"
IMAGES = "images"
_RENDER_ENTRIES = frozenset({IMAGES, MANIFEST, RECORD, MANIFEST + ".tmp"})  # .tmp: older versions' partial manifest


def check_render_target(out: Path) -> None:
    """`out` may be rendered into: absent, empty, or a previous render (images/, manifest.jsonl, world.json and
    nothing else), which a new render replaces whole. Anything else is refused, so nothing is deleted by mistake."""
    if not out.exists():
        return
    if not out.is_dir():
        raise FairdiffError(f"--out {out}: exists and is not a directory")
    entries = {p.name for p in out.iterdir()}
    if not entries:
        return
    others = sorted(entries - _RENDER_ENTRIES)
    if others or not entries & {MANIFEST, RECORD}:
        shown = ", ".join(others[:5] or sorted(entries)[:5]) + (" ..." if len(others) > 5 else "")
        raise FairdiffError(
            f"--out {out}: not empty and not a previous world render (it holds {shown}); "
            "render into a new or empty folder"
        )


def render_dataset(world: WorldConfig, n: int, seed: int, out: Path, chunk: int = 2048) -> Path:
    """Render `n` world samples into `out/images/NNNNNN.png` and `out/manifest.jsonl` (one JSON row each:
    file, caption, context, render seed, attributes), plus `out/world.json`. Returns the manifest path.

    The render is built in a sibling folder and swapped in whole once complete: a previous render in `out` is
    replaced entirely (no stale images or rows), and a failed or interrupted render leaves it as it was."""
    check_render_target(out)
    target = out.resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.rendering-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        (tmp / IMAGES).mkdir(parents=True)
        record = {"source": world.source, "config": world.raw, "seed": seed, "n": n}
        record_text = json.dumps(record, indent=2, default=str) + "\n"  # YAML dates and the like as text
        samples = sample_world(world, n, seed)
        with (tmp / MANIFEST).open("w", encoding="utf-8") as f:
            for start in range(0, n, chunk):
                part = samples[start : start + chunk]
                images = render_batch([s.portrait for s in part], [s.seed for s in part])
                for i, (s, img) in enumerate(zip(part, images, strict=True)):
                    name = f"{IMAGES}/{start + i:06d}.png"
                    Image.fromarray(img).save(tmp / name)
                    row = {
                        "file": name,
                        "caption": s.caption,
                        "context": s.context,
                        "seed": s.seed,
                        **s.portrait.as_dict(),
                    }
                    f.write(json.dumps(row) + "\n")
        (tmp / RECORD).write_text(record_text, encoding="utf-8")
        swap_in_dir(tmp, target)
    except OSError as exc:
        raise FairdiffError(f"--out {out}: could not write the render ({exc.strerror or exc})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out / MANIFEST


def contact_sheet(occupations: list[str], seed: int = 0, scale: int = 3) -> Image.Image:
    """One row per occupation; columns sweep gender x skin x age x attire, each cell labelled on top."""
    combos = [(g, s, a, t) for t in ATTIRES for a in AGES for g in GENDERS for s in SKINS]
    portraits = [
        Portrait(gender=g, skin=s, age=a, attire=t, occupation=o) for o in occupations for g, s, a, t in combos
    ]
    images = render_batch(portraits, [seed + i for i in range(len(portraits))])
    cell, label_w, header = 32 * scale, 90, 34
    sheet = Image.new("RGB", (label_w + len(combos) * cell, header + len(occupations) * cell), "white")
    draw = ImageDraw.Draw(sheet)
    for k, (g, s, a, t) in enumerate(combos):
        x = label_w + k * cell + 2
        draw.text((x, 1), f"{g} {s}", fill="black")
        draw.text((x, 12), f"{a}", fill="black")
        draw.text((x, 23), f"{t}", fill="black")
    for r, occ in enumerate(occupations):
        draw.text((4, header + r * cell + cell // 2 - 5), occ, fill="black")
        for k in range(len(combos)):
            img = Image.fromarray(images[r * len(combos) + k]).resize((cell, cell), Image.NEAREST)
            sheet.paste(img, (label_w + k * cell, header + r * cell))
    return sheet
