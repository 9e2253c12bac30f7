"""Hostile inputs made in code: the fuzzer's regression TIFFs and seed images of every format."""

from __future__ import annotations

import io
import struct

import numpy as np
from PIL import Image

LONG, RATIONAL, SRATIONAL = 4, 5, 10
SIDE = 16


def rgb_tiff(offset_type: int = LONG, *, tiled: bool = False) -> bytes:
    """A 16x16 RGB uncompressed little-endian TIFF whose strip (or tile) offset is stored with
    ``offset_type``. LONG is a valid file; RATIONAL or SRATIONAL give the offset as a fraction,
    which PIL hands to ``seek`` and fails on with ``TypeError: 'IFDRational' object cannot be
    interpreted as an integer`` (the two files the fuzzer found did the same)."""
    pixels = np.arange(SIDE * SIDE * 3, dtype=np.uint8).tobytes()
    if tiled:
        layout = {322: (3, 1, SIDE), 323: (3, 1, SIDE), 325: (LONG, 1, len(pixels))}
        offset_tag = 324
    else:
        layout = {278: (3, 1, SIDE), 279: (LONG, 1, len(pixels))}
        offset_tag = 273
    tags = {256: (3, 1, SIDE), 257: (3, 1, SIDE), 259: (3, 1, 1), 262: (3, 1, 2), 277: (3, 1, 3)}
    tags |= layout
    n = len(tags) + 2  # + bits per sample (out of line) + the offset tag
    extra_at = 8 + 2 + 12 * n + 4
    bps_at, rational_at = extra_at, extra_at + 8
    data_at = rational_at + 8
    entries: list[tuple[int, bytes]] = []
    for tag, (typ, count, value) in tags.items():
        packed = struct.pack("<H", value) if typ == 3 else struct.pack("<I", value)
        entries.append((tag, struct.pack("<HHI", tag, typ, count) + packed.ljust(4, b"\0")))
    entries.append((258, struct.pack("<HHII", 258, 3, 3, bps_at)))
    if offset_type == LONG:
        entries.append((offset_tag, struct.pack("<HHII", offset_tag, LONG, 1, data_at)))
    else:
        entries.append((offset_tag, struct.pack("<HHII", offset_tag, offset_type, 1, rational_at)))
    ifd = struct.pack("<H", n) + b"".join(e for _, e in sorted(entries)) + b"\0\0\0\0"
    extra = struct.pack("<HHH", 8, 8, 8).ljust(8, b"\0") + struct.pack("<II", data_at, 1)
    return b"II*\0" + struct.pack("<I", 8) + ifd + extra + pixels


REGRESSION_TIFFS = {
    "strip_offset_rational.tif": rgb_tiff(RATIONAL),
    "tile_offset_srational.tif": rgb_tiff(SRATIONAL, tiled=True),
}


def encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def seed_images(seed: int = 0) -> dict[str, bytes]:
    """One small valid file per format the fuzzer mutates (PNG, JPEG, GIF, TIFF, BMP, WebP,
    PPM), with the features that reach more decoder code: EXIF, palettes, alpha, frames."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, (24, 20, 3), dtype=np.uint8)
    img = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = 6
    frames = [img, Image.fromarray(255 - arr)]
    pal = img.convert("P")
    pal.info["transparency"] = 3
    return {
        "png": encoded(img.convert("RGBA"), "PNG"),
        "png_palette": encoded(pal, "PNG"),
        "png16": encoded(Image.fromarray(arr[..., 0].astype(np.uint16) * 257), "PNG"),
        "jpeg": encoded(img, "JPEG", quality=80, exif=exif.tobytes()),
        "jpeg_progressive": encoded(img, "JPEG", progressive=True),
        "gif": encoded(frames[0], "GIF", save_all=True, append_images=frames[1:]),
        "tiff": encoded(img, "TIFF", exif=exif),
        "tiff_lzw": encoded(img.convert("L"), "TIFF", compression="tiff_lzw"),
        "tiff_raw_handmade": rgb_tiff(),
        "bmp": encoded(img, "BMP"),
        "webp": encoded(img, "WEBP", quality=80),
        "webp_lossless": encoded(img.convert("RGBA"), "WEBP", lossless=True),
        "ppm": encoded(img, "PPM"),
    }
