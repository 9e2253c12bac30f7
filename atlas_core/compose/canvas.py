"""The atlas canvas: each icon at its cell on a white background, y up."""

from __future__ import annotations

import numpy as np


def compose_canvas(
    cells: np.ndarray,
    icons: np.ndarray,
    size: int,
    *,
    present: np.ndarray | None = None,
    background: int = 255,
) -> np.ndarray:
    """Place icons on a (size * px, size * px, 3) uint8 canvas.

    cells: (M, 2) int (ix, iy) with iy = 0 the bottom row; icons: (M, px, px, 3) uint8.
    present: (M,) bool, icons to draw (missing ones leave the background).
    """
    m, px = len(cells), icons.shape[1]
    canvas = np.full((size * px, size * px, 3), background, dtype=np.uint8)
    if m == 0:
        return canvas
    keep = np.ones(m, bool) if present is None else np.asarray(present, bool)
    ix, iy = cells[keep, 0], cells[keep, 1]
    row = (size - 1 - iy) * px  # y up: the top canvas row holds the highest iy
    col = ix * px
    # one fancy-indexed assignment, no loop over cells
    r = row[:, None, None] + np.arange(px)[None, :, None]
    c = col[:, None, None] + np.arange(px)[None, None, :]
    canvas[r, c] = icons[keep]
    return canvas
