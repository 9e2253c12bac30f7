"""Failure-mode patches: paste a square patch into images at a corner, or a noise control.

Corners are ``tl``, ``tr``, ``bl``, ``br`` (a margin of ``margin`` pixels from the edges) and
``centre``. Images are the model's input arrays (H, W, 3) uint8, so a patch of side ``p`` covers
``(p / H)^2`` of what the model sees, whatever the source's size.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

CORNERS = ("tl", "tr", "bl", "br", "centre")


def patch_origin(corner: str, size: int, side: int, margin: int = 0) -> tuple[int, int]:
    """(top, left) of a ``side`` patch at ``corner`` of a ``size`` square image."""
    if corner not in CORNERS:
        raise ValueError(f"corner must be one of {CORNERS}, not {corner!r}")
    if side > size:
        raise ValueError(f"a {side} px patch does not fit a {size} px image")
    far = size - side - margin
    lo = min(margin, far)
    return {
        "tl": (lo, lo),
        "tr": (lo, far),
        "bl": (far, lo),
        "br": (far, far),
        "centre": ((size - side) // 2, (size - side) // 2),
    }[corner]


def paste(images: np.ndarray, patch: np.ndarray, corner: str, margin: int = 0) -> np.ndarray:
    """A copy of ``images`` (B, H, W, 3) with ``patch`` (p, p, 3) pasted at ``corner``."""
    out = np.array(images, copy=True)
    side = patch.shape[0]
    top, left = patch_origin(corner, out.shape[1], side, margin)
    out[:, top : top + side, left : left + side] = patch
    return out


def noise_patch(side: int, seed: int) -> np.ndarray:
    """The control: uniform random pixels, (side, side, 3) uint8, from ``seed``."""
    return np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)


def resized(patch: np.ndarray, side: int) -> np.ndarray:
    """A patch at ``side`` pixels (bicubic), unchanged when it already is."""
    from PIL import Image

    if patch.shape[0] == side:
        return patch
    return np.asarray(Image.fromarray(patch).resize((side, side), Image.Resampling.BICUBIC))


def count_flips(
    predict: Callable[[np.ndarray], np.ndarray],
    images: np.ndarray,
    patches: list[np.ndarray] | np.ndarray,
    sizes: tuple[int, ...],
    corners: tuple[str, ...],
    target: int,
    noise_seeds: tuple[int, ...],
    margin: int = 0,
) -> np.ndarray:
    """Images whose top-1 (``predict``: arrays (B, H, W, 3) -> classes (B,)) becomes ``target``
    with each patch pasted: (P + 1, sizes, corners) int64, the last row the noise control."""
    counts = np.zeros((len(patches) + 1, len(sizes), len(corners)), np.int64)
    if not len(images):
        return counts
    for si, side in enumerate(sizes):
        candidates = [resized(p, side) for p in patches] + [noise_patch(side, noise_seeds[si])]
        for ci, corner in enumerate(corners):
            for pi, patch in enumerate(candidates):
                top1 = predict(paste(images, patch, corner, margin))
                counts[pi, si, ci] = int((np.asarray(top1) == target).sum())
    return counts
