"""Geometry of an exemplar patch: from a sample's feature-map position to pixels of its source.

A sample sits at cell (y, x) of its layer's (H, W) grid over the model's square input. Its patch
is the square of the layer's receptive field centred on that cell (shifted to stay inside the
input), mapped back through the model's preprocessing (resize, centre crop) to the source image
as the extract stage read it (after the manifest's crop, if any), and resampled from the source
pixels at full resolution.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from atlas_core.models.preprocess import Preprocess


def patch_box(
    pos: tuple[int, int], grid: tuple[int, int], side: float, input_px: int
) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) in model-input pixels of the field around cell ``pos``."""
    side = float(min(side, input_px))
    cy = (pos[0] + 0.5) * input_px / grid[0]
    cx = (pos[1] + 0.5) * input_px / grid[1]
    left = min(max(cx - side / 2, 0.0), input_px - side)
    top = min(max(cy - side / 2, 0.0), input_px - side)
    return left, top, left + side, top + side


def source_box(
    box: tuple[float, float, float, float], width: int, height: int, pre: Preprocess
) -> tuple[float, float, float, float]:
    """``box`` in model-input pixels -> the same region in a ``width x height`` source image
    (the inverse of :meth:`Preprocess.to_array`)."""
    x0, y0, x1, y1 = box
    if pre.mode == "squash":
        sx, sy = width / pre.size, height / pre.size
        return x0 * sx, y0 * sy, x1 * sx, y1 * sy
    scale = pre.resize / min(width, height)
    nw, nh = max(pre.size, round(width * scale)), max(pre.size, round(height * scale))
    ox, oy = (nw - pre.size) // 2, (nh - pre.size) // 2
    sx, sy = width / nw, height / nh
    return (x0 + ox) * sx, (y0 + oy) * sy, (x1 + ox) * sx, (y1 + oy) * sy


def take_patch(image: Image.Image, box: tuple[float, float, float, float], px: int) -> np.ndarray:
    """The region ``box`` of ``image`` resampled to (px, px, 3) uint8."""
    patch = image.convert("RGB").resize((px, px), Image.Resampling.BICUBIC, box=box)
    return np.asarray(patch, np.uint8)


def thumbnail(image: Image.Image, max_side: int) -> tuple[np.ndarray, tuple[int, int]]:
    """The image shrunk to at most ``max_side`` on its longer side, padded to a square
    (max_side, max_side, 3) uint8 array; and its (width, height) before padding."""
    im = image.convert("RGB")
    im.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
    out = np.full((max_side, max_side, 3), 255, np.uint8)
    out[: im.size[1], : im.size[0]] = np.asarray(im, np.uint8)
    return out, im.size


def thumbnail_jpeg(
    image: Image.Image, max_side: int, max_bytes: int
) -> tuple[bytes, tuple[int, int]]:
    """The image shrunk to at most ``max_side`` on its longer side, as JPEG bytes of at most
    ``max_bytes`` (quality 85, lowered until it fits); and its (width, height)."""
    im = image.convert("RGB")
    im.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
    for quality in (85, 70, 50, 30, 15):
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=quality)
        if buf.tell() <= max_bytes:
            break
    else:  # a pathological image: smaller still, until it fits
        while buf.tell() > max_bytes and max(im.size) > 8:
            im = im.resize((max(1, im.width // 2), max(1, im.height // 2)))
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=15)
    return buf.getvalue(), im.size
