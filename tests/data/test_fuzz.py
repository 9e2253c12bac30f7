"""Issue 26, fuzzing the decoder: mutated PNG/JPEG/GIF/TIFF/BMP/WebP/PPM files (seeds made in
code, mutated by bit flips, byte writes, truncations, header-field overwrites with boundary
values and chunk splices between files) never make ``decode_bytes`` or the nvJPEG path's
checks raise, and every outcome is a known status.

Seeded (Hypothesis, derandomized) and bounded: ``make test`` runs ATLAS_FUZZ_EXAMPLES (300 by
default) examples; ``make fuzz`` runs many more and writes its figures (files tried, count per
status and per seed, crashes) to ATLAS_FUZZ_REPORT (benchmarks/results/fuzz.json).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import PIL
import pytest
import torch
import torchvision
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from atlas_core.data import DecodePolicy, Status
from atlas_core.data.decode import Decoded, decode_bytes
from atlas_core.data.jpeg import _acceptable, decode_jpegs, is_jpeg
from tests.data.hostile import REGRESSION_TIFFS, seed_images

log = logging.getLogger(__name__)

EXAMPLES = int(os.environ.get("ATLAS_FUZZ_EXAMPLES", "300"))
REPORT = os.environ.get("ATLAS_FUZZ_REPORT", "")
# a small pixel limit: a mutated header that claims a huge canvas is refused, not allocated
POLICY = DecodePolicy(max_pixels=4_000_000, min_side=1)
SEEDS = {**seed_images(), **{f"regression_{k}": v for k, v in REGRESSION_TIFFS.items()}}
NAMES = sorted(SEEDS)
# boundary values a parser gets wrong: zero, one, sign bits, all ones, large counts
INTERESTING = [0, 1, 2, 7, 8, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x10000]
INTERESTING += [0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]


def _pos(draw: Any, data: bytearray) -> int:
    return draw(st.integers(0, max(len(data) - 1, 0)))


def _body(draw: Any, data: bytearray) -> int:
    """A position past the signature (the header-field op reaches the signature)."""
    return draw(st.integers(min(8, len(data) - 1), len(data) - 1))


def _flip(draw: Any, data: bytearray) -> bytearray:
    if data:
        data[_body(draw, data)] ^= 1 << draw(st.integers(0, 7))
    return data


def _write_byte(draw: Any, data: bytearray) -> bytearray:
    if data:
        data[_body(draw, data)] = draw(st.integers(0, 255))
    return data


def _truncate(draw: Any, data: bytearray) -> bytearray:
    return data[: _pos(draw, data) + 1] if data else data


def _header_field(draw: Any, data: bytearray) -> bytearray:
    """A 1, 2 or 4-byte field in the first 512 bytes past the magic number (where the headers,
    IHDR, SOF, IFDs and palettes are) set to a boundary value, in either byte order."""
    if len(data) < 5:
        return data
    width = draw(st.sampled_from([1, 2, 4]))
    value = draw(st.sampled_from(INTERESTING)) % (1 << (8 * width))
    raw = value.to_bytes(width, draw(st.sampled_from(["little", "big"])))
    at = draw(st.integers(4, min(len(data), 512) - 1))
    data[at : at + width] = raw
    return data


def _splice(draw: Any, data: bytearray) -> bytearray:
    """A chunk of another seed (or of this file) inserted, or written over a chunk of this."""
    other = SEEDS[draw(st.sampled_from(NAMES))]
    a = draw(st.integers(0, len(other) - 1))
    b = draw(st.integers(a, min(len(other), a + 4096)))
    at = _pos(draw, data) if data else 0
    if draw(st.booleans()):
        return data[:at] + other[a:b] + data[at:]
    return data[:at] + other[a:b] + data[at + (b - a) :]


def _repeat(draw: Any, data: bytearray) -> bytearray:
    """A range of the file deleted or duplicated (a chunk lost, or written twice)."""
    if not data:
        return data
    a = _pos(draw, data)
    b = draw(st.integers(a, min(len(data), a + 2048)))
    return data[:a] + data[b:] if draw(st.booleans()) else data[:b] + data[a:b] + data[b:]


# flips and byte writes twice as often: they keep a file recognisable, reaching the decoders
OPS = [_flip, _flip, _write_byte, _write_byte, _header_field, _truncate, _splice, _repeat]


def _fix_png_crcs(data: bytearray) -> bytearray:
    """Every whole PNG chunk's CRC recomputed, so a mutated chunk reaches the decoder instead of
    stopping at PIL's checksum test."""
    at = 8
    while at + 12 <= len(data):
        n = int.from_bytes(data[at : at + 4], "big")
        end = at + 8 + n
        if end + 4 > len(data):
            break
        data[end : end + 4] = zlib.crc32(bytes(data[at + 4 : end])).to_bytes(4, "big")
        at = end + 4
    return data


@st.composite
def mutated(draw: Any) -> tuple[str, bytes]:
    name = draw(st.sampled_from(NAMES))
    data = bytearray(SEEDS[name])
    for _ in range(draw(st.integers(1, 3))):
        data = draw(st.sampled_from(OPS))(draw, data)
    if data.startswith(b"\x89PNG") and draw(st.booleans()):
        data = _fix_png_crcs(data)
    return name, bytes(data)


def _check(data: bytes) -> Decoded:
    """Decode ``data`` both ways; raises AssertionError on any breach of the policy."""
    d = decode_bytes(data, POLICY)  # any exception here is a crash: the test fails
    assert isinstance(d.status, Status) and d.status != Status.PENDING
    assert (d.image is not None) == (d.status == Status.OK), d
    if d.image is not None:
        w, h = d.image.size
        assert d.image.mode == "RGB" and w * h <= POLICY.max_pixels
    if is_jpeg(data) and _acceptable(data, POLICY):
        (t,) = decode_jpegs([data], device="cpu", policy=POLICY)
        assert t is None or (t.dtype == torch.uint8 and t.shape[0] == 3)
    return d


class _Tally:
    """Files tried, outcomes per status and per seed, the decoder's own failures, crashes."""

    def __init__(self) -> None:
        self.by_status: Counter[str] = Counter()
        self.by_seed: dict[str, Counter[str]] = {n: Counter() for n in NAMES}
        self.decoder_errors: Counter[str] = Counter()
        self.crashes: list[dict[str, str]] = []
        self.t0 = time.perf_counter()

    def add(self, seed: str, d: Decoded) -> None:
        status = d.status.name.lower()
        self.by_status[status] += 1
        self.by_seed[seed][status] += 1
        if d.status == Status.DECODER_ERROR:
            self.decoder_errors[f"{seed}: {d.detail[:120]}"] += 1

    def figures(self) -> dict[str, Any]:
        seconds = time.perf_counter() - self.t0
        tried = sum(self.by_status.values())
        return {
            "files_tried": tried + len(self.crashes),
            "crashes": len(self.crashes),
            "by_status": dict(self.by_status.most_common()),
            "decoder_errors": dict(self.decoder_errors.most_common(20)),
            "crash_examples": self.crashes[:10],
            "by_seed": {n: dict(c.most_common()) for n, c in self.by_seed.items()},
            "seconds": round(seconds, 1),
            "files_per_second": round(tried / max(seconds, 1e-9), 1),
            "examples_asked": EXAMPLES,
            "seeded": "hypothesis derandomize=True",
            "policy": {"max_pixels": POLICY.max_pixels, "min_side": POLICY.min_side},
            "versions": {
                "python": platform.python_version(),
                "pillow": PIL.__version__,
                "torchvision": torchvision.__version__,
            },
        }


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::RuntimeWarning")  # PIL's, on bad tags
def test_the_decoder_never_raises_on_mutated_images() -> None:
    tally = _Tally()

    @settings(
        max_examples=EXAMPLES,
        derandomize=True,  # seeded: the same files every run
        deadline=None,
        database=None,  # nothing written to the tree
        phases=[Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    @given(mutated())
    def decode_never_raises(case: tuple[str, bytes]) -> None:
        seed, data = case
        try:
            d = _check(data)
        except BaseException as exc:
            tally.crashes.append({"seed": seed, "error": f"{type(exc).__name__}: {exc}"[:300]})
            raise
        tally.add(seed, d)

    pil_log = logging.getLogger("PIL")
    level = pil_log.level
    pil_log.setLevel(logging.CRITICAL)  # PIL logs every bad TIFF tag it meets: thousands of lines
    try:
        decode_never_raises()
    finally:
        pil_log.setLevel(level)
        figures = tally.figures()
        log.info("decoder fuzzing: %s", json.dumps({k: figures[k] for k in list(figures)[:4]}))
        if REPORT:
            Path(REPORT).parent.mkdir(parents=True, exist_ok=True)
            Path(REPORT).write_text(json.dumps(figures, indent=1) + "\n")
    assert tally.crashes == []
    assert figures["files_tried"] >= min(EXAMPLES, 100)
    assert tally.by_status["ok"] > 0 and len(tally.by_status) >= 3  # several outcomes reached
