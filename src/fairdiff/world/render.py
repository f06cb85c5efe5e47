"""Render 32x32 portraits from attributes and a seed: flat shapes and colours, deterministic, vectorized.

A portrait is a head and shoulders on a background. Each attribute has one visual carrier:

- skin: face, neck (and bare shoulders) in the bin's mean Monk Skin Tone colour, nudged toward one of the
  bin's swatches
- gender presentation: hair silhouette, a short crop vs long hair falling to the shoulders
- age: hair colour, dark/brown/blond vs grey/silver/white
- attire: covered shoulders vs bare shoulders with a strapped top (nothing more is ever drawn)
- occupation: clothing colour and background colour, and a small prop on covered clothing

The seed sets only nuisance factors: head position (+-1 px), head size, lighting and colour jitter, so two
renders of the same attributes differ the way two photos of the same kind of person would.
`render_batch` paints a whole batch with numpy broadcasting (thousands of images per second on 2 cores) and
gives every image the same pixels `render_portrait` gives it alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fairdiff.world.schema import ATTIRES, GENDERS, OCCUPATIONS, SKINS, Portrait

SIZE = 32

# Monk Skin Tone swatches (sRGB), grouped into the four bins of `SKINS`
_MST = {
    "light": [(246, 237, 228), (243, 231, 219), (247, 234, 208)],  # MST 1-3
    "medium": [(234, 218, 186), (215, 189, 150)],  # MST 4-5
    "brown": [(160, 126, 86), (130, 92, 67)],  # MST 6-7
    "dark": [(96, 65, 52), (58, 49, 42), (41, 36, 32)],  # MST 8-10
}
_HAIR = {
    "young": [(30, 26, 24), (70, 45, 30), (115, 75, 45), (200, 165, 90)],
    "old": [(150, 150, 150), (190, 190, 195), (225, 225, 228)],
}
# occupation -> (background, clothing, prop colour); chosen so every (background, clothing) pair is distinct
_OCCUPATION_COLOURS = {
    "doctor": ((140, 185, 225), (210, 220, 232), (60, 60, 70)),  # pale coat, stethoscope
    "nurse": ((235, 215, 225), (40, 150, 140), (210, 30, 40)),  # teal scrubs, red cross badge
    "ceo": ((95, 95, 110), (30, 35, 75), (180, 30, 40)),  # navy suit, red tie
    "engineer": ((205, 185, 140), (235, 120, 25), (240, 230, 60)),  # hi-vis orange, reflective band
    "teacher": ((120, 160, 100), (130, 40, 55), (240, 240, 240)),  # maroon cardigan, chalk
    "housekeeper": ((200, 200, 170), (150, 120, 185), (250, 250, 250)),  # lavender, white apron
    "firefighter": ((70, 55, 50), (200, 35, 30), (240, 220, 60)),  # red jacket, yellow stripe
    "scientist": ((180, 230, 200), (95, 85, 160), (120, 200, 240)),  # indigo, goggles-blue badge
    "cashier": ((245, 200, 90), (30, 110, 60), (250, 250, 250)),  # green apron, name tag
    "pilot": ((55, 95, 150), (25, 25, 25), (220, 180, 60)),  # black uniform, gold epaulettes
}
_SKIN_MEAN = {k: np.mean(v, axis=0) for k, v in _MST.items()}
_N_NUISANCE = 12  # uniforms drawn per seed; fixed so a seed means the same render in any batch

_YY, _XX = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
_YY = _YY[None]  # (1, H, W)
_XX = _XX[None]


def _nuisance(seeds: Sequence[int]) -> np.ndarray:
    """(N, _N_NUISANCE) uniforms in [0, 1), one independent stream per seed."""
    return np.stack([np.random.default_rng(int(s)).random(_N_NUISANCE) for s in seeds]).astype(np.float32)


def _paint(img: np.ndarray, mask: np.ndarray, colour: np.ndarray) -> None:
    """img (N,H,W,3) float; mask (N,H,W) bool; colour (N,3): paint colour where mask, in place."""
    np.copyto(img, colour[:, None, None, :], where=mask[..., None])


def render_batch(portraits: Sequence[Portrait], seeds: Sequence[int]) -> np.ndarray:
    """Render portraits to a uint8 array (N, 32, 32, 3); image i depends only on portraits[i] and seeds[i]."""
    if len(portraits) != len(seeds):
        raise ValueError(f"`seeds` must have one seed per portrait, got {len(seeds)} for {len(portraits)}.")
    n = len(portraits)
    if n == 0:
        return np.zeros((0, SIZE, SIZE, 3), dtype=np.uint8)
    u = _nuisance(seeds)

    def col(values: np.ndarray) -> np.ndarray:  # (N,) -> (N,1,1) for broadcasting against the grid
        return values[:, None, None]

    gender = np.array([GENDERS.index(p.gender) for p in portraits])
    attire = np.array([ATTIRES.index(p.attire) for p in portraits])
    occ = [p.occupation for p in portraits]

    # geometry (N,1,1): head centre and radii, jittered by the seed
    cx = col(16.0 + np.floor(u[:, 0] * 3) - 1)
    cy = col(12.0 + np.floor(u[:, 1] * 3) - 1)
    rx = col(5.6 + 0.8 * u[:, 2])
    ry = col(7.0 + 0.8 * u[:, 3])

    # colours (N,3)
    skin = np.stack(
        [
            _SKIN_MEAN[p.skin] + 0.35 * (np.array(_MST[p.skin][int(u[i, 4] * len(_MST[p.skin]))]) - _SKIN_MEAN[p.skin])
            for i, p in enumerate(portraits)
        ]
    )
    hair = np.stack([np.array(_HAIR[p.age][int(u[i, 5] * len(_HAIR[p.age]))], float) for i, p in enumerate(portraits)])
    background = np.stack([np.array(_OCCUPATION_COLOURS[o][0], float) for o in occ])
    clothing = np.stack([np.array(_OCCUPATION_COLOURS[o][1], float) for o in occ])
    prop = np.stack([np.array(_OCCUPATION_COLOURS[o][2], float) for o in occ])
    background = background + (u[:, 6:7] - 0.5) * 16  # +-8 grey-level jitter
    clothing = clothing + (u[:, 7:8] - 0.5) * 12

    img = np.empty((n, SIZE, SIZE, 3), dtype=np.float32)
    img[:] = background[:, None, None, :]

    head = ((_XX - cx) / rx) ** 2 + ((_YY - cy) / ry) ** 2 <= 1.0
    torso = ((_XX - cx) / 14.0) ** 2 + ((_YY - 33.0) / 9.0) ** 2 <= 1.0
    neck = (np.abs(_XX - cx) <= 2.5) & (_YY >= cy + ry - 2) & (_YY <= 26)
    long_hair = col(gender == GENDERS.index("woman"))
    drapes = long_hair & (np.abs(_XX - cx) <= rx + 2.2) & (_YY >= cy - 1) & (_YY <= 27)
    cap = (((_XX - cx) / (rx + 1.2)) ** 2 + ((_YY - cy + 0.6) / (ry + 1.2)) ** 2 <= 1.0) & (_YY <= cy - 0.45 * ry)
    revealing = col(attire == ATTIRES.index("revealing"))

    _paint(img, drapes, hair)
    # covered: clothing over the whole torso; revealing: bare shoulders (skin), a top below y=29 with straps
    _paint(img, torso, clothing)
    bare = torso & revealing & (_YY < 29) & ~(np.abs(np.abs(_XX - cx) - 4.0) <= 0.5)
    _paint(img, bare, skin)
    _paint(img, neck, skin)
    _paint(img, drapes & (_YY < 25) & ~neck & ~(np.abs(_XX - cx) <= 2.5), hair)
    _paint(img, head, skin)
    _paint(img, cap, hair)
    eyes = (np.abs(np.abs(_XX - cx) - 2.5) <= 0.5) & (np.abs(_YY - cy) <= 0.5)
    _paint(img, eyes, np.full((n, 3), 25.0))
    # occupation prop: a 2x3 patch on the chest, only on covered clothing
    prop_mask = ~revealing & (_XX >= cx + 3) & (_XX <= cx + 4) & (_YY >= 27) & (_YY <= 29)
    _paint(img, prop_mask, prop)

    # lighting: overall brightness +-4% and a left-right gradient +-4%
    light = (0.96 + 0.08 * u[:, 8])[:, None, None] * (
        1.0 + (u[:, 9] - 0.5)[:, None, None] * 0.08 * (_XX[0] - 15.5) / 16
    )
    img *= light[..., None]
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def render_portrait(portrait: Portrait, seed: int) -> np.ndarray:
    """Render one portrait to a uint8 array (32, 32, 3)."""
    return render_batch([portrait], [seed])[0]


def all_portraits() -> list[Portrait]:
    """Every attribute combination once (for contact sheets and classifier checks)."""
    return [
        Portrait(gender=g, skin=s, age=a, attire=t, occupation=o)
        for o in OCCUPATIONS
        for g in GENDERS
        for s in SKINS
        for a in ("young", "old")
        for t in ATTIRES
    ]


#: A face patch every render's head covers, whatever the seed's jitter: rows 13-15, columns 14-18 (the head
#: centre moves +-1 px around (16, 12) and its radii are >= 5.6 x 7 px; eyes take at most 2 of its 15 pixels).
FACE_ROWS, FACE_COLS = slice(13, 16), slice(14, 19)
_BRIGHTNESS = (0.955, 1.045)  # the lighting's range over the face patch (overall +-4%, gradient <= 0.5%)


def face_colour(images: np.ndarray) -> np.ndarray:
    """(N, 32, 32, 3) uint8 -> (N, 3) float: the median colour of the face patch."""
    patch = images[:, FACE_ROWS, FACE_COLS].reshape(len(images), -1, 3).astype(np.float32)
    return np.median(patch, axis=1)


def skin_palette() -> np.ndarray:
    """(M, 3): every skin colour a render paints before lighting (each bin's swatches, nudged to its mean)."""
    return np.array([_SKIN_MEAN[k] + 0.35 * (np.array(c) - _SKIN_MEAN[k]) for k in SKINS for c in _MST[k]])


def palette_distance(images: np.ndarray) -> np.ndarray:
    """(N,) RGB distance from each image's face colour to the nearest colour a render's face can have (a palette
    colour under any lighting). Renders sit within rounding of 0; a generated face far from every palette
    colour is one the world never draws, e.g. a colour between two skin bins (mode interpolation)."""
    face = face_colour(images)  # (N, 3)
    palette = skin_palette()  # (M, 3)
    # nearest point of each segment {b * c : b in _BRIGHTNESS} to each face colour
    b = np.clip((face @ palette.T) / (palette**2).sum(1), *_BRIGHTNESS)  # (N, M)
    d = np.linalg.norm(face[:, None, :] - b[..., None] * palette[None], axis=2)
    return d.min(1)
