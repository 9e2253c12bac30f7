"""Decoding policy: every input ends with a status, never an exception.

Normalization policy (recorded in the run manifest):
- EXIF orientation is applied (``ImageOps.exif_transpose``);
- multi-frame images (GIF, TIFF) use their first frame;
- alpha and palette transparency are composited over ``background`` (white by default);
- 16-bit and 32-bit greyscale are scaled to 8 bits by their full range; CMYK, greyscale and
  palette images are converted to RGB;
- a decompression bomb (a header of more than ``max_pixels``) is an error, never a warning,
  checked before decoding with no global state (PIL's limit and warning filters untouched);
- a file over ``max_bytes`` is refused from its size, never read;
- any exception a decoder raises on a file is that file's status (DECODER_ERROR at worst);
- truncated files are errors: PIL's LOAD_TRUNCATED_IMAGES is never enabled.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
from dataclasses import dataclass
from enum import IntEnum
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from atlas_core.data.uri import uri_path, uri_text


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
    TOO_LARGE = 11  # more bytes than DecodePolicy.max_bytes (from stat: never read)
    DECODER_ERROR = 12  # the decoder failed in a way it does not document (a bug it has)

    @classmethod
    def table(cls) -> dict[str, int]:
        return {s.name.lower(): int(s) for s in cls}


# What the decoder does to every input, recorded in the run store (DESIGN section 7).
DECODE_POLICY = (
    "EXIF orientation applied; first frame of multi-frame images; alpha composited "
    "over white; 16-bit scaled to 8 bits by range; CMYK/grey/palette converted to RGB; "
    "decompression bombs (by the header's size), files over the byte limit and truncated "
    "files are errors; any decoder failure is a status, never an exception"
)

# Files larger than this are identified from their header before they are read: a huge file
# that is no image is classified without ever being held in memory.
SNIFF_BYTES = 16 * 2**20
_HASH_BLOCK = 2**20
# PIL's message names the file object by its repr (a memory address): not the same twice
_UNIDENTIFIED = "cannot identify image file: no decoder recognises its header"


@dataclass(frozen=True)
class DecodePolicy:
    """Limits of the decoder.

    max_pixels: images whose header says more pixels (width x height) are decompression bombs;
        checked before any pixel is decoded, the same on the PIL and the nvJPEG paths, with no
        global state (PIL's own process-wide limit, 2 x ``PIL.Image.MAX_IMAGE_PIXELS``, about
        179 MP by default, still refuses anything above it: a larger setting cannot admit more).
    min_side: images with a shorter side are refused (TOO_SMALL).
    max_bytes: files larger than this (256 MiB by default) are refused from ``stat`` (or the
        object store's size) without being read (TOO_LARGE).
    background: what alpha is composited over.
    """

    max_pixels: int = 64_000_000
    min_side: int = 8
    background: tuple[int, int, int] = (255, 255, 255)
    max_bytes: int = 256 * 2**20


@dataclass
class Decoded:
    status: Status
    image: Image.Image | None = None
    detail: str = ""
    content_hash: int = 0


def header_refusal(width: int, height: int, policy: DecodePolicy) -> Decoded | None:
    """The status an image of this header size gets before decoding (a bomb, too small), or
    None if it may be decoded. The one check both decoders apply."""
    if width * height > policy.max_pixels:
        return Decoded(
            Status.DECOMPRESSION_BOMB,
            detail=f"{width}x{height} = {width * height} pixels, over the limit of "
            f"{policy.max_pixels}",
        )
    if min(width, height) < policy.min_side:
        return Decoded(Status.TOO_SMALL, detail=f"{width}x{height} px")
    return None


def decode(
    uri: str,
    crop: np.ndarray | None = None,
    *,
    policy: DecodePolicy = DecodePolicy(),
    root: str | None = None,
) -> Decoded:
    """Read and decode one input into an RGB PIL image, or classify why it cannot be used.

    uri: a URI text (:mod:`atlas_core.data.uri`): a local path or an fsspec URL.
    crop: (left, top, right, bottom) in source pixels, or None / -1 entries for the whole image.
    root: local paths must resolve (symlinks followed) inside this directory (a URI text too).
    Never raises for anything about the file: every outcome is a :class:`Status`.
    """
    data = read_bytes(uri, root, policy=policy)
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


def read_bytes(
    uri: str, root: str | None = None, *, policy: DecodePolicy = DecodePolicy()
) -> bytes | Decoded:
    """A file's bytes, or a Decoded with the status that says why they cannot be used: missing,
    not a regular file, outside ``root``, over ``policy.max_bytes`` (from its size, never read),
    a large file that is no image (identified from its header, its hash streamed), unreadable."""
    try:
        path = uri_path(uri)
        top = uri_path(root) if root is not None else None
    except ValueError as exc:
        return Decoded(Status.READ_ERROR, detail=as_text(str(exc)))
    if "://" in path and not path.startswith("file://"):
        return _read_url(path, policy)
    return _read_local(path.removeprefix("file://"), top, policy)


def cropped(d: Decoded, crop: np.ndarray | None) -> Decoded:
    """``d`` with its image cut to ``crop`` (left, top, right, bottom); -1 or None: unchanged.
    A new Decoded: a cached whole-image result can be cropped many times."""
    if d.image is None or crop is None or int(crop[0]) < 0:
        return d
    box = (int(crop[0]), int(crop[1]), int(crop[2]), int(crop[3]))
    return Decoded(d.status, d.image.crop(box), d.detail, d.content_hash)


def _error(exc: BaseException) -> str:
    return as_text(f"{type(exc).__name__}: {exc}")


def as_text(detail: str) -> str:
    """``detail`` as valid UTF-8 (a file name's undecodable bytes as ``\\xNN``): what the
    store's ``images/error`` can hold."""
    return detail.encode("utf-8", "backslashreplace").decode("utf-8")


def _too_large(size: int, policy: DecodePolicy) -> Decoded:
    return Decoded(
        Status.TOO_LARGE, detail=f"{size} bytes, over the limit of {policy.max_bytes} bytes"
    )


def _read_url(uri: str, policy: DecodePolicy) -> bytes | Decoded:
    import fsspec

    try:
        with fsspec.open(uri, "rb") as f:
            size = getattr(f, "size", None)
            if isinstance(size, int) and size > policy.max_bytes:
                return _too_large(size, policy)
            return _read_open(f, size if isinstance(size, int) else None, policy)
    except FileNotFoundError as exc:
        return Decoded(Status.MISSING, detail=as_text(str(exc)))
    except Exception as exc:  # each store's client raises its own errors: all are this file's
        return Decoded(Status.READ_ERROR, detail=_error(exc))


def _read_local(path: str, root: str | None, policy: DecodePolicy) -> bytes | Decoded:
    if root is not None:
        real = os.path.realpath(path)
        if os.path.commonpath([real, root]) != root:
            where = f"resolves to {uri_text(real)}, outside {uri_text(root)}"
            return Decoded(Status.OUTSIDE_ROOT, detail=where)
    try:
        st = os.stat(path)  # follows symlinks; never open() before this: a FIFO would block
    except FileNotFoundError:
        return Decoded(Status.MISSING, detail="no such file")
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the name
        return Decoded(Status.READ_ERROR, detail=_error(exc))
    if not stat.S_ISREG(st.st_mode):
        return Decoded(Status.NOT_REGULAR_FILE, detail=f"mode {stat.filemode(st.st_mode)}")
    if st.st_size > policy.max_bytes:
        return _too_large(st.st_size, policy)
    try:
        with open(path, "rb") as f:
            return _read_open(f, st.st_size, policy)
    except OSError as exc:
        return Decoded(Status.READ_ERROR, detail=_error(exc))


def _read_open(f: BinaryIO, size: int | None, policy: DecodePolicy) -> bytes | Decoded:
    """The bytes of an open file of ``size`` bytes (None: unknown). Above SNIFF_BYTES the header
    is identified first: what PIL cannot identify is classified, its hash streamed in blocks."""
    if size is not None and size > SNIFF_BYTES and f.seekable():
        try:
            with Image.open(f):  # the header only; f stays open (PIL does not own it)
                pass
        except UnidentifiedImageError:
            f.seek(0)
            h = hashlib.blake2b(digest_size=8)
            while block := f.read(_HASH_BLOCK):
                h.update(block)
            return Decoded(
                Status.UNIDENTIFIED,
                detail=f"{size} bytes, {_UNIDENTIFIED}",
                content_hash=int.from_bytes(h.digest(), "little"),
            )
        except Exception:  # anything else: an image PIL knows; decoding will classify it
            pass
        f.seek(0)
    data = f.read(policy.max_bytes + 1)
    if len(data) > policy.max_bytes:  # the size grew since it was taken, or was unknown
        return _too_large(len(data), policy)
    return data


def _decode_bytes(data: bytes, policy: DecodePolicy) -> Decoded:
    if not data:
        return Decoded(Status.TRUNCATED, detail="empty file")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.seek(0)
            # the limit is checked on the header's size, before any pixel is decoded, and
            # again after loading (a frame may grow the canvas); PIL's global limit untouched
            refused = header_refusal(*img.size, policy)
            if refused is not None:
                return refused
            img.load()
            refused = header_refusal(*img.size, policy)
            if refused is not None:
                return refused
            rgb = _to_rgb(img, policy)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return Decoded(Status.DECOMPRESSION_BOMB, detail=f"PIL's own limit: {exc}")
    except UnidentifiedImageError:
        return Decoded(Status.UNIDENTIFIED, detail=_UNIDENTIFIED)
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        msg = _error(exc)
        trunc = "truncat" in msg.lower() or isinstance(exc, EOFError)
        return Decoded(Status.TRUNCATED if trunc else Status.UNIDENTIFIED, detail=msg)
    except Exception as exc:  # a decoder bug on a hostile file (a TypeError deep in a plugin)
        return Decoded(Status.DECODER_ERROR, detail=_error(exc))
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
