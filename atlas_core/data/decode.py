"""Decoding policy: every input ends with a status, never an exception.

Normalization policy (recorded in the run manifest):
- EXIF orientation is applied (``ImageOps.exif_transpose``);
- multi-frame images (GIF, TIFF) use their first frame;
- alpha and palette transparency are composited over ``background`` (white by default);
- 16-bit and 32-bit greyscale are scaled to 8 bits by their full range; CMYK, greyscale and
  palette images are converted to RGB;
- a decompression bomb (more than ``max_pixels``) is an error, never a warning;
- truncated files are errors: PIL's LOAD_TRUNCATED_IMAGES is never enabled.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import warnings
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError


class Status(IntEnum):
    """Per-image status codes stored in ``images/status`` (0 marks a hole: never written)."""

    PENDING = 0
    OK = 1
    UNIDENTIFIED = 2
    TRUNCATED = 3
    DECOMPRESSION_BOMB = 4
    TOO_SMALL = 5
    NOT_REGULAR_FILE = 6
    OUTSIDE_ROOT = 7
    DUPLICATE = 8
    MISSING = 9
    READ_ERROR = 10

    @classmethod
    def table(cls) -> dict[str, int]:
        return {s.name.lower(): int(s) for s in cls}


# What the decoder does to every input, recorded in the run store (DESIGN section 7).
DECODE_POLICY = (
    "EXIF orientation applied; first frame of multi-frame images; alpha composited "
    "over white; 16-bit scaled to 8 bits by range; CMYK/grey/palette converted to RGB; "
    "decompression bombs and truncated files are errors"
)


@dataclass(frozen=True)
class DecodePolicy:
    """Limits of the decoder. max_pixels: bomb threshold; min_side: smaller images are refused."""

    max_pixels: int = 64_000_000
    min_side: int = 8
    background: tuple[int, int, int] = (255, 255, 255)


@dataclass
class Decoded:
    status: Status
    image: Image.Image | None = None
    detail: str = ""
    content_hash: int = 0


def decode(
    uri: str,
    crop: np.ndarray | None = None,
    *,
    policy: DecodePolicy = DecodePolicy(),
    root: str | None = None,
) -> Decoded:
    """Read and decode one input into an RGB PIL image, or classify why it cannot be used.

    crop: (left, top, right, bottom) in source pixels, or None / -1 entries for the whole image.
    root: local paths must resolve (symlinks followed) inside this directory.
    """
    data = _read(uri, root)
    if isinstance(data, Decoded):
        return data
    return cropped(decode_bytes(data, policy), crop)


def decode_bytes(data: bytes, policy: DecodePolicy = DecodePolicy()) -> Decoded:
    """Decode an image held in memory (a tar member, an object-store blob), with its hash."""
    result = _decode_bytes(data, policy)
    result.content_hash = content_hash(data)
    return result


def content_hash(data: bytes) -> int:
    """blake2b-64 of a file's bytes, as stored in ``images/content_hash``."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def read_bytes(uri: str, root: str | None = None) -> bytes | Decoded:
    """A file's bytes, or a Decoded with the status that says why they cannot be read."""
    return _read(uri, root)


def cropped(d: Decoded, crop: np.ndarray | None) -> Decoded:
    """``d`` with its image cut to ``crop`` (left, top, right, bottom); -1 or None: unchanged.
    A new Decoded: a cached whole-image result can be cropped many times."""
    if d.image is None or crop is None or int(crop[0]) < 0:
        return d
    box = (int(crop[0]), int(crop[1]), int(crop[2]), int(crop[3]))
    return Decoded(d.status, d.image.crop(box), d.detail, d.content_hash)


def _read(uri: str, root: str | None) -> bytes | Decoded:
    if "://" in uri and not uri.startswith("file://"):
        import fsspec

        try:
            with fsspec.open(uri, "rb") as f:
                return f.read()
        except FileNotFoundError as exc:
            return Decoded(Status.MISSING, detail=str(exc))
        except OSError as exc:
            return Decoded(Status.READ_ERROR, detail=f"{type(exc).__name__}: {exc}")
    path = Path(uri.removeprefix("file://"))
    if root is not None:
        real = os.path.realpath(path)
        if os.path.commonpath([real, root]) != root:
            return Decoded(Status.OUTSIDE_ROOT, detail=f"resolves to {real}, outside {root}")
    try:
        st = os.stat(path)  # follows symlinks; never open() before this: a FIFO would block
    except FileNotFoundError:
        return Decoded(Status.MISSING, detail="no such file")
    except OSError as exc:
        return Decoded(Status.READ_ERROR, detail=f"{type(exc).__name__}: {exc}")
    if not stat.S_ISREG(st.st_mode):
        return Decoded(Status.NOT_REGULAR_FILE, detail=f"mode {stat.filemode(st.st_mode)}")
    try:
        return path.read_bytes()
    except OSError as exc:
        return Decoded(Status.READ_ERROR, detail=f"{type(exc).__name__}: {exc}")


def _decode_bytes(data: bytes, policy: DecodePolicy) -> Decoded:
    if not data:
        return Decoded(Status.TRUNCATED, detail="empty file")
    old_limit = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = policy.max_pixels // 2  # PIL raises (not warns) above 2x this
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                img.seek(0)
                img.load()
                rgb = _to_rgb(img, policy)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return Decoded(Status.DECOMPRESSION_BOMB, detail=str(exc))
    except UnidentifiedImageError as exc:
        return Decoded(Status.UNIDENTIFIED, detail=str(exc))
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        msg = f"{type(exc).__name__}: {exc}"
        trunc = "truncat" in msg.lower() or isinstance(exc, EOFError)
        return Decoded(Status.TRUNCATED if trunc else Status.UNIDENTIFIED, detail=msg)
    finally:
        Image.MAX_IMAGE_PIXELS = old_limit
    if min(rgb.size) < policy.min_side:
        return Decoded(Status.TOO_SMALL, detail=f"{rgb.size[0]}x{rgb.size[1]} px")
    return Decoded(Status.OK, image=rgb)


def _to_rgb(img: Image.Image, policy: DecodePolicy) -> Image.Image:
    img = ImageOps.exif_transpose(img) or img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        img = Image.fromarray(arr.astype(np.uint8), mode="L")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        img = img.convert("RGBA")
        base = Image.new("RGBA", img.size, (*policy.background, 255))
        img = Image.alpha_composite(base, img)
    return img.convert("RGB")
