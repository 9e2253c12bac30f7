"""Sheets: many small images in one JPEG, on a grid of equal cells, row-major.

The exemplars stage writes its patches and its source thumbnails as sheets (one of each per
task), so a source image is stored once, compressed, and the viewer reads the same files (a cell
of a sheet is a CSS sprite); nothing copies the images again. Cell ``i`` of a sheet of ``cols``
columns and ``side`` px cells is at ``((i % cols) * side, (i // cols) * side)``.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

SHEET_COLUMNS = 16  # cells per row of a sheet; a sheet holds at most SHEET_COLUMNS ** 2 cells


def pack(
    images: list[np.ndarray | None], side: int, cols: int = SHEET_COLUMNS, background: int = 255
) -> np.ndarray:
    """(rows * side, cols * side, 3) uint8 with image i (at most side x side, top-left aligned)
    in cell i; None leaves a cell blank."""
    rows = max(1, -(-len(images) // cols))
    out = np.full((rows * side, cols * side, 3), background, np.uint8)
    for i, im in enumerate(images):
        if im is not None:
            y, x = (i // cols) * side, (i % cols) * side
            out[y : y + im.shape[0], x : x + im.shape[1]] = im[:side, :side]
    return out


def jpeg(array: np.ndarray, quality: int = 85) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def cell(
    sheet: Image.Image | np.ndarray,
    i: int,
    side: int,
    cols: int = SHEET_COLUMNS,
    size: tuple[int, int] | None = None,
) -> np.ndarray:
    """Cell ``i`` of a sheet as (h, w, 3) uint8 (``size``: (width, height) of what it holds,
    default the whole cell)."""
    a = np.asarray(sheet.convert("RGB") if isinstance(sheet, Image.Image) else sheet)
    y, x = (i // cols) * side, (i % cols) * side
    w, h = size or (side, side)
    return a[y : y + h, x : x + w]


def fit(image: Image.Image, side: int) -> np.ndarray:
    """The image shrunk to at most ``side`` on its longer side: (h, w, 3) uint8."""
    im = image.convert("RGB")
    im.thumbnail((side, side), Image.Resampling.BICUBIC)
    return np.asarray(im, np.uint8)
