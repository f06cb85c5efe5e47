"""Write world renders to disk (PNGs + a JSONL manifest) and draw labelled contact sheets."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, ImageDraw

from fairdiff.world.captions import sample_world
from fairdiff.world.config import WorldConfig
from fairdiff.world.render import render_batch
from fairdiff.world.schema import AGES, ATTIRES, GENDERS, SKINS, Portrait

MANIFEST = "manifest.jsonl"


def render_dataset(world: WorldConfig, n: int, seed: int, out: Path, chunk: int = 2048) -> Path:
    """Render `n` world samples into `out/images/NNNNNN.png` and `out/manifest.jsonl` (one JSON row each:
    file, caption, context, render seed, attributes). Returns the manifest path."""
    images_dir = out / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    samples = sample_world(world, n, seed)
    manifest = out / MANIFEST
    tmp = manifest.with_suffix(".jsonl.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for start in range(0, n, chunk):
            part = samples[start : start + chunk]
            images = render_batch([s.portrait for s in part], [s.seed for s in part])
            for i, (s, img) in enumerate(zip(part, images, strict=True)):
                name = f"images/{start + i:06d}.png"
                Image.fromarray(img).save(out / name)
                row = {
                    "file": name,
                    "caption": s.caption,
                    "context": s.context,
                    "seed": s.seed,
                    **s.portrait.as_dict(),
                }
                f.write(json.dumps(row) + "\n")
    tmp.replace(manifest)
    (out / "world.json").write_text(
        json.dumps({"source": world.source, "config": world.raw, "seed": seed, "n": n}, indent=2) + "\n"
    )
    return manifest


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
