"""Issue 26, caches are advisory: an unreadable icon-cache entry (torn, not a zip, a deflate
stream zlib refuses, a missing array, a pickled array) is a miss, is removed and counted, and
the next write restores it; entries written whole."""

from __future__ import annotations

import io
import zipfile
import zlib
from pathlib import Path

import numpy as np

from atlas_core.store import CachedGroup, IconCache
from atlas_core.store.icon_cache import _pack, _unpack


def _group(seed: int) -> CachedGroup:
    rng = np.random.default_rng(seed)
    return CachedGroup(
        rng.integers(0, 255, (2, 8, 8, 3), dtype=np.uint8),
        rng.random(2).astype(np.float32),
        rng.random(2).astype(np.float32),
        rng.integers(0, 255, (2, 8, 8), dtype=np.uint8),
    )


def _zlib_refused(blob: bytes) -> bytes:
    """``blob`` with one byte of the icons' deflate stream flipped so that zlib refuses it."""
    info = zipfile.ZipFile(io.BytesIO(blob)).getinfo("icons.npy")
    start = info.header_offset + 30 + len(info.filename)
    for pos in range(start, start + info.compress_size):
        bad = bytearray(blob)
        bad[pos] ^= 0xFF
        try:
            _unpack(bytes(bad))
        except zlib.error:
            return bytes(bad)
        except Exception:
            continue
    raise AssertionError("no flip of the deflate stream upsets zlib")


def _damaged(blob: bytes) -> dict[str, bytes]:
    buf = io.BytesIO()
    np.savez(buf, objective=np.ones(2), cosine=np.ones(2))  # no icons
    pickled = io.BytesIO()
    np.savez(pickled, icons=np.array([{"x": 1}], dtype=object), objective=[1], cosine=[1])
    return {
        "torn": blob[: len(blob) // 2],  # BadZipFile
        "garbage": b"\x00not a zip at all" * 10,
        "zlib": _zlib_refused(blob),
        "no_icons": buf.getvalue(),
        "pickled": pickled.getvalue(),
    }


def test_unreadable_entries_are_misses_removed_and_counted(tmp_path: Path) -> None:
    cache = IconCache(str(tmp_path / "cache"))
    good = {f"{i:02d}" * 32: _group(i) for i in range(7)}
    cache.put_many(good)
    keys = list(good)
    damaged = _damaged(_pack(good[keys[0]]))
    for key, blob in zip(keys[1:], damaged.values(), strict=False):
        Path(cache._path(key)).write_bytes(blob)
    got = cache.get_many(keys)
    assert sorted(got) == sorted([keys[0], keys[6]])  # the two left intact
    assert cache.bad == len(damaged) == 5 and cache.hits == 2 and cache.misses == 5
    assert [Path(cache._path(k)).exists() for k in keys] == [True] + [False] * 5 + [True]
    assert np.array_equal(got[keys[6]].alpha, good[keys[6]].alpha)
    cache.put_many({k: good[k] for k in keys if k not in got})  # rendered again, written again
    again = IconCache(str(tmp_path / "cache")).get_many(keys)
    assert sorted(again) == sorted(keys)
    assert all(np.array_equal(again[k].icons, good[k].icons) for k in keys)
