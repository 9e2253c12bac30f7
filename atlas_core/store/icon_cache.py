"""A content-addressed icon cache: an icon with the same model, layer, direction, objective and
render settings is never rendered twice, across grid levels and re-runs.

The key hashes every input of the render (the direction's float32 bytes, the whitening matrix,
the settings, the model and the seed); the value is one small ``.npz`` per icon under
``<root>/<key[:2]>/<key>.npz``, written through fsspec (local paths or object stores). A torn or
unreadable entry is a miss, never an error.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Sequence
from typing import Any

import fsspec
import numpy as np


def icon_keys(
    directions: np.ndarray,
    context: dict[str, Any],
    whiten: np.ndarray | None,
    seeds: Sequence[int] | None = None,
) -> list[str]:
    """One key per direction row (B, C): sha256 over the context, the whitening matrix, the
    direction's float32 bytes and the icon's seed (its random draws), when given."""
    base = hashlib.sha256(json.dumps(context, sort_keys=True, default=str).encode())
    if whiten is not None:
        base.update(np.ascontiguousarray(whiten, np.float32).tobytes())
    keys = []
    rows = np.ascontiguousarray(directions, np.float32)
    for i, d in enumerate(rows):
        h = base.copy()
        h.update(d.tobytes())
        if seeds is not None:
            h.update(int(seeds[i]).to_bytes(8, "little"))
        keys.append(h.hexdigest())
    return keys


class IconCache:
    def __init__(self, root: str, storage_options: dict[str, Any] | None = None) -> None:
        self.fs, self.root = fsspec.core.url_to_fs(root, **(storage_options or {}))
        self.root = self.root.rstrip("/")
        self.hits = 0
        self.misses = 0

    def _path(self, key: str) -> str:
        return f"{self.root}/{key[:2]}/{key}.npz"

    def get(self, key: str) -> tuple[np.ndarray, float, float] | None:
        """(icon (px, px, 3) uint8, objective, cosine), or None."""
        try:
            with self.fs.open(self._path(key), "rb") as f:
                z = np.load(io.BytesIO(f.read()))
                out = (z["icon"], float(z["objective"]), float(z["cosine"]))
        except (FileNotFoundError, OSError, ValueError, KeyError):
            self.misses += 1
            return None
        self.hits += 1
        return out

    def put(self, key: str, icon: np.ndarray, objective: float, cosine: float) -> None:
        buf = io.BytesIO()
        np.savez(buf, icon=icon, objective=np.float32(objective), cosine=np.float32(cosine))
        path = self._path(key)
        self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        with self.fs.open(path, "wb") as f:
            f.write(buf.getvalue())
