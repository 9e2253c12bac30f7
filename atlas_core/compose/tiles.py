"""XYZ tiles of a multi-level atlas, drawn region by region from the icons: no whole canvas.

The map is a square of ``tile * 2**z`` pixels at zoom ``z`` (Leaflet's ``CRS.Simple`` with
``tile``-pixel tiles; tile ``(x, y)`` of zoom ``z`` is the file ``<z>/<x>/<y>``, y down). Every
grid level covers the whole square, so a layout point is the same place at every level. A level is
shown over a range of zooms (:func:`zoom_ranges`): the next finer level takes over where this
one's icons would be drawn larger than their rendered size.

Each kept cell's icon is drawn centred in its cell at ``cell px x min(1, sqrt(count / mean
count))`` (the article's density sizing; ``density=False`` fills the cell). Pixel edges of cells
are rounded from exact fractions, so neighbouring tiles and strips meet without seams.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Level:
    """One grid level: its size, the zooms it is shown at, and which zoom is its native one."""

    size: int
    zmin: int
    zmax: int  # tiles exist up to this zoom; the viewer upsamples them beyond (finest level)

    @property
    def zooms(self) -> range:
        return range(self.zmin, self.zmax + 1)


def zoom_ranges(sizes: tuple[int, ...] | list[int], icon_px: int, tile: int = 256) -> list[Level]:
    """Zoom range of each grid size (coarse to fine); every level gets at least one zoom.

    A level is shown while its cells are at most ``icon_px`` wide on screen; the finest level
    runs to the first zoom at which its icons are drawn at least at their rendered size.
    """
    out, zlo = [], 0
    ordered = sorted(set(int(s) for s in sizes))
    for i, g in enumerate(ordered):
        native = g * icon_px / tile  # map width (in tiles) at which a cell is icon_px wide
        if i == len(ordered) - 1:
            zhi = max(zlo, math.ceil(math.log2(native)) if native > 1 else 0)
        else:
            zhi = max(zlo, math.floor(math.log2(native)) if native >= 1 else 0)
        out.append(Level(g, zlo, zhi))
        zlo = zhi + 1
    return out


def edges(n: int, width: int) -> np.ndarray:
    """Pixel edges of ``n`` equal cells over ``width`` pixels: (n + 1,) int, rounded."""
    return np.floor(np.arange(n + 1) * (width / n) + 0.5).astype(np.int64)


def density_scale(count: np.ndarray, enabled: bool = True) -> np.ndarray:
    """Each kept cell's icon scale: ``min(1, sqrt(count / mean count))``, or 1 when disabled."""
    count = np.asarray(count, np.float64)
    if not enabled or len(count) == 0:
        return np.ones(len(count))
    return np.minimum(1.0, np.sqrt(count / count.mean()))


def icon_boxes(cells: np.ndarray, scale: np.ndarray, size: int, width: int) -> np.ndarray:
    """Each icon's box (left, top, right, bottom) in map pixels at map width ``width``.

    cells: (M, 2) int (ix, iy), iy = 0 the bottom row; scale: (M,) from :func:`density_scale`.
    """
    e = edges(size, width)
    ix, iy = cells[:, 0], cells[:, 1]
    left, right = e[ix], e[ix + 1]
    top, bottom = e[size - 1 - iy], e[size - iy]
    w = np.maximum(1, np.floor((right - left) * scale + 0.5)).astype(np.int64)
    h = np.maximum(1, np.floor((bottom - top) * scale + 0.5)).astype(np.int64)
    x0 = left + (right - left - w) // 2
    y0 = top + (bottom - top - h) // 2
    return np.stack([x0, y0, x0 + w, y0 + h], axis=1)


def cell_rows_in(size: int, width: int, y0: int, y1: int) -> tuple[int, int]:
    """The grid rows ``iy`` (inclusive range lo..hi) whose cells meet map pixel rows [y0, y1)."""
    e = edges(size, width)
    r0 = int(np.searchsorted(e, y0, side="right")) - 1  # canvas row index, top = 0
    r1 = int(np.searchsorted(e, y1, side="left")) - 1
    r0, r1 = max(r0, 0), min(r1, size - 1)
    return size - 1 - r1, size - 1 - r0


def draw_region(
    boxes: np.ndarray,
    icons: np.ndarray,
    region: tuple[int, int, int, int],
    *,
    background: int = 255,
    cache: dict[tuple[int, int, int], Image.Image] | None = None,
    ids: np.ndarray | None = None,
) -> np.ndarray:
    """Draw the icons whose ``boxes`` meet ``region`` (left, top, right, bottom, map pixels).

    boxes: (M, 4) from :func:`icon_boxes`; icons: (M, px, px, 3) uint8 (row i draws box i).
    cache/ids: resized icons keyed by (id, w, h), reused across regions of one zoom.
    Returns (bottom - top, right - left, 3) uint8.
    """
    left, top, right, bottom = region
    out = Image.new("RGB", (right - left, bottom - top), (background,) * 3)
    hit = np.flatnonzero(
        (boxes[:, 0] < right) & (boxes[:, 2] > left) & (boxes[:, 1] < bottom) & (boxes[:, 3] > top)
    )
    for i in hit:
        x0, y0, x1, y1 = (int(v) for v in boxes[i])
        key = (int(ids[i]) if ids is not None else int(i), x1 - x0, y1 - y0)
        im = cache.get(key) if cache is not None else None
        if im is None:
            im = _resized(icons[i], x1 - x0, y1 - y0)
            if cache is not None:
                cache[key] = im
        out.paste(im, (x0 - left, y0 - top))  # PIL clips at the region's edges
    return np.asarray(out)


def _resized(icon: np.ndarray, w: int, h: int) -> Image.Image:
    im = Image.fromarray(np.ascontiguousarray(icon))
    if (w, h) == im.size:
        return im
    smaller = w < im.size[0]
    return im.resize((w, h), Image.Resampling.BOX if smaller else Image.Resampling.BICUBIC)


def sheet(icons: np.ndarray, columns: int, background: int = 255) -> np.ndarray:
    """Icons laid out row-major in a sheet of ``columns`` columns (the viewer's card sprites)."""
    n, h, w, _ = icons.shape
    rows = max(1, -(-n // columns))
    out = np.full((rows * h, columns * w, 3), background, np.uint8)
    for i in range(n):
        r, c = divmod(i, columns)
        out[r * h : (r + 1) * h, c * w : (c + 1) * w] = icons[i]
    return out
