"""A content-addressed icon cache: a group of icons with the same model, layer, directions,
seeds and render settings is never rendered twice, across grid levels, re-runs and runs that
share the cache (a schedule's run root).

Icons are optimized in groups (the same group always holds the same icons, so it renders to the
same bytes); the cache's unit is a group. Its key hashes every input of the render: the context
(model, layer, settings), the whitening matrix, and each icon's direction (float32 bytes) and
seed. The value is one small ``.npz`` per group under ``<root>/<key[:2]>/<key>.npz``, read and
written in bulk through fsspec (local paths or object stores). A torn or unreadable entry is a
miss, never an error: it is removed, counted (:attr:`IconCache.bad`) and rendered again.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np

from atlas_core.store.markers import is_local, read_many, write_bytes_atomic

log = logging.getLogger(__name__)


def group_key(directions: np.ndarray, seeds: Sequence[int], context: dict[str, Any]) -> str:
    """One key for a group of icons (G, C) with their seeds: sha256 over the context (the
    model, the layer, and the recipe's identity, which holds its arrays by digest), then every
    direction's float32 bytes and seed in order."""
    h = hashlib.sha256(json.dumps(context, sort_keys=True, default=str).encode())
    for d, seed in zip(np.ascontiguousarray(directions, np.float32), seeds, strict=True):
        h.update(d.tobytes())
        h.update(int(seed).to_bytes(8, "little"))
    return h.hexdigest()


@dataclass(frozen=True)
class CachedGroup:
    """A group's icons (G, px, px, 3) uint8, best objectives (G,), cosines (G,) and alpha
    (G, px, px) uint8 or None."""

    icons: np.ndarray
    objective: np.ndarray
    cosine: np.ndarray
    alpha: np.ndarray | None = None


class IconCache:
    """Groups of icons by key under ``root`` (local or an object store). Advisory: an entry that
    cannot be read (a torn write, a corrupt zip, anything ``np.load`` raises) is a miss, is
    removed so it is rendered and written again, and is counted in :attr:`bad`. Entries are
    written whole: a temporary file renamed over the key locally, one PUT per key on an object
    store (the same key always holds the same bytes: write-once)."""

    def __init__(self, root: str, storage_options: dict[str, Any] | None = None) -> None:
        self.fs, self.root = fsspec.core.url_to_fs(root, **(storage_options or {}))
        self.root = self.root.rstrip("/")
        self.hits = 0
        self.misses = 0
        self.bad = 0  # unreadable entries found (and removed) since this cache was opened

    def _path(self, key: str) -> str:
        return f"{self.root}/{key[:2]}/{key}.npz"

    def get_many(self, keys: Sequence[str]) -> dict[str, CachedGroup]:
        """The groups the cache holds among ``keys`` (one batched read)."""
        paths = [self._path(k) for k in keys]
        out: dict[str, CachedGroup] = {}
        bad: list[str] = []
        for key, path, blob in zip(keys, paths, read_many(self.fs, paths), strict=True):
            if not isinstance(blob, bytes):
                continue
            try:
                out[key] = _unpack(blob)
            except Exception as exc:  # BadZipFile, zlib.error, a missing array: all a miss
                log.warning("icon cache: unreadable entry %s (%s): removed", path, exc)
                bad.append(path)
        if bad:
            self.bad += len(bad)
            for path in bad:
                with contextlib.suppress(Exception):  # advisory: a failed removal is harmless
                    self.fs.rm(path)
        self.hits += len(out)
        self.misses += len(keys) - len(out)
        return out

    def put_many(self, entries: dict[str, CachedGroup]) -> None:
        """Write every group, each whole (one PUT per key on an object store, in one batch)."""
        blobs = {self._path(key): _pack(e) for key, e in entries.items()}
        if not blobs:
            return
        if is_local(self.fs):
            for path, blob in blobs.items():
                write_bytes_atomic(self.fs, path, blob)
            return
        for folder in {p.rsplit("/", 1)[0] for p in blobs}:
            self.fs.makedirs(folder, exist_ok=True)
        self.fs.pipe(blobs)


def _pack(e: CachedGroup) -> bytes:
    buf = io.BytesIO()
    arrays: dict[str, Any] = {
        "icons": e.icons,
        "objective": np.asarray(e.objective, np.float32),
        "cosine": np.asarray(e.cosine, np.float32),
    }
    if e.alpha is not None:
        arrays["alpha"] = e.alpha
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def _unpack(blob: bytes) -> CachedGroup:
    """A group from its bytes; raises whatever a damaged entry makes numpy or zipfile raise.
    Every array is read here (npz members are lazy), so a bad one fails now, not later."""
    with np.load(io.BytesIO(blob), allow_pickle=False) as z:
        return CachedGroup(
            np.array(z["icons"]),
            np.array(z["objective"]),
            np.array(z["cosine"]),
            np.array(z["alpha"]) if "alpha" in z.files else None,
        )
