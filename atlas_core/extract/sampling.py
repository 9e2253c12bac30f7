"""Seeded spatial sampling: which positions of each image's feature map become samples.

Positions are a pure function of ``(seed, image index, j)`` through a counter-based hash
(splitmix64), so any subset of images can be re-sampled without the others, in any order, on any
worker, vectorised. Positions are drawn on the grid of the coarsest extracted layer and mapped to
finer grids by cell centre, so every layer of one pass sees the same place of the image.
"""

from __future__ import annotations

import numpy as np

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
SAMPLING = ("random", "centre", "all", "mean", "cls")


def _splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = x + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def _uniform(seed: int, image: np.ndarray, j: np.ndarray, stream: int) -> np.ndarray:
    with np.errstate(over="ignore"):
        base = np.uint64(seed) * np.uint64(0x100000001B3) + np.uint64(stream)
        key = _splitmix64(np.asarray(base))
        z = _splitmix64(key ^ _splitmix64(image.astype(np.uint64) * np.uint64(1 << 20) + j))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def sample_positions(
    images: np.ndarray,
    k: int,
    grid: tuple[int, int],
    *,
    seed: int,
    edge: int = 1,
    mode: str = "random",
) -> np.ndarray:
    """Positions for ``k`` samples of each image.

    images: shape (n,), int image indices (rows of the input manifest).
    grid: (H, W) of the coarsest layer. edge: cells to avoid at each border (the article avoids
        the edges; shrunk automatically for grids too small to keep any cell).
    mode: ``"random"`` (k seeded positions), ``"centre"`` (the middle cell, k times), ``"all"``
        (every cell, row-major: k must be H * W). The extractor's ``mean`` and ``cls`` modes
        sample no position: they are stored at the centre.
    Returns int16 array, shape (n * k, 2): (y, x), image-major (rows i*k .. i*k+k-1 are image i).
    """
    h, w = grid
    images = np.asarray(images, dtype=np.int64)
    img = np.repeat(images, k)
    j = np.tile(np.arange(k, dtype=np.uint64), len(images))
    if mode == "all":
        if k != h * w:
            raise ValueError(f"every position of a {h}x{w} grid needs k = {h * w}, not {k}")
        cells = np.stack(np.divmod(np.arange(h * w), w), 1)
        return np.tile(cells, (len(images), 1)).astype(np.int16)
    if mode in ("centre", "mean", "cls"):
        return np.stack([np.full(len(img), h // 2), np.full(len(img), w // 2)], 1).astype(np.int16)
    if mode != "random":
        raise ValueError(f"sampling mode must be one of {SAMPLING}, got {mode!r}")
    ey = min(edge, (h - 1) // 2)
    ex = min(edge, (w - 1) // 2)
    y = ey + np.floor(_uniform(seed, img, j, 0) * (h - 2 * ey)).astype(np.int64)
    x = ex + np.floor(_uniform(seed, img, j, 1) * (w - 2 * ex)).astype(np.int64)
    return np.stack([y, x], axis=1).astype(np.int16)


def map_positions(pos: np.ndarray, src: tuple[int, int], dst: tuple[int, int]) -> np.ndarray:
    """Map (y, x) cells of a ``src`` grid to the ``dst`` grid cell holding the same cell centre."""
    pos = np.asarray(pos, dtype=np.float64)
    y = np.floor((pos[:, 0] + 0.5) * dst[0] / src[0])
    x = np.floor((pos[:, 1] + 0.5) * dst[1] / src[1])
    return np.stack([y, x], axis=1).astype(np.int16)
