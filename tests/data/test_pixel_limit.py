"""Issue 26, the decompression-bomb limit: the header's size against the setting itself, the
same on the PIL and the nvJPEG paths, and no process-wide state (PIL's limit, the warnings
filters) touched, so decodes on several threads cannot let a bomb through."""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

from atlas_core.data import DecodePolicy, Status
from atlas_core.data.decode import decode_bytes, header_refusal
from atlas_core.data.jpeg import _acceptable
from tests.data.hostile import encoded


def png_claiming(width: int, height: int) -> bytes:
    """A small PNG whose IHDR says ``width`` x ``height`` (CRC fixed): a header to check that
    cannot be decoded."""
    data = bytearray(encoded(Image.new("L", (16, 16)), "PNG"))
    ihdr = 8 + 8  # signature, then the chunk's length and type
    data[ihdr : ihdr + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr - 4 : ihdr + 13]))
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", crc)
    return bytes(data)


def jpeg_claiming(width: int, height: int) -> bytes:
    """A small baseline JPEG whose SOF0 says ``width`` x ``height``."""
    data = bytearray(encoded(Image.new("RGB", (16, 16), (9, 99, 199)), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def test_a_36_mp_photo_passes_and_a_65_mp_header_is_a_bomb_on_both_paths() -> None:
    policy = DecodePolicy()  # 64 MP
    assert header_refusal(6000, 6000, policy) is None
    assert header_refusal(8125, 8000, policy).status == Status.DECOMPRESSION_BOMB
    # nvJPEG's check, from the JPEG header
    assert Image.open(io.BytesIO(jpeg_claiming(6000, 6000))).size == (6000, 6000)
    assert _acceptable(jpeg_claiming(6000, 6000), policy)
    assert not _acceptable(jpeg_claiming(8125, 8000), policy)
    # PIL's path: a real 36 MP image decodes; a 65 MP header is refused before decoding
    limit, filters = Image.MAX_IMAGE_PIXELS, list(warnings.filters)
    real = decode_bytes(encoded(Image.new("1", (6000, 6000)), "PNG"), policy)
    assert real.status == Status.OK and real.image is not None and real.image.size == (6000, 6000)
    for bomb in (png_claiming(8125, 8000), jpeg_claiming(8125, 8000)):
        d = decode_bytes(bomb, policy)
        assert d.status == Status.DECOMPRESSION_BOMB and "65000000 pixels" in d.detail
    assert Image.MAX_IMAGE_PIXELS == limit and list(warnings.filters) == filters


def test_every_bomb_is_a_bomb_when_decodes_run_on_several_threads() -> None:
    """Decodable images around a 10,000-pixel limit on four threads: a process-wide limit set
    and restored per decode lets some bombs through (and refuses some good images)."""
    policy = DecodePolicy(max_pixels=10_000, min_side=8)
    rng = np.random.default_rng(0)
    sides = {"bomb": 120, "good_small": 48, "good_near": 96}  # 14,400 / 2,304 / 9,216 pixels
    blobs = {
        k: encoded(Image.fromarray(rng.integers(0, 255, (s, s), dtype=np.uint8)), "PNG")
        for k, s in sides.items()
    }
    kinds = [("bomb", "good_small", "good_near")[i % 3] for i in range(1500)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        got = list(pool.map(lambda k: decode_bytes(blobs[k], policy).status, kinds))
    wrong = [(k, s.name) for k, s in zip(kinds, got, strict=True) if (k == "bomb") != (s == 4)]
    assert wrong == []
    assert got.count(Status.OK) == 1000
