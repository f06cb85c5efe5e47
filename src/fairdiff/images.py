"""Images as uint8 arrays (N, H, W, 3): contact grids and PNG bytes."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def grid(images: np.ndarray, cols: int) -> np.ndarray:
    """(N, H, W, 3) -> one (rows*H, cols*W, 3) image, padding the last row with white."""
    n, h, w, c = images.shape
    rows = -(-n // cols)
    canvas = np.full((rows * h, cols * w, c), 255, dtype=np.uint8)
    for i, img in enumerate(images):
        r, k = divmod(i, cols)
        canvas[r * h : (r + 1) * h, k * w : (k + 1) * w] = img
    return canvas


def png_bytes(img: np.ndarray) -> bytes:
    """One (H, W, 3) uint8 image as PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()
