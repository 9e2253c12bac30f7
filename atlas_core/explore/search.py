"""Nearest samples in activation space (cosine), exactly, over a run's stored activations.

The search reads the layer's activations one storage object at a time (bounded memory), keeps
each block's best ``k`` and merges them: the reference every faster index is checked against,
and the fallback where a run keeps no index.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from atlas_core.store import RunStore


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def blocks(store: RunStore, layer: str) -> Iterator[tuple[int, np.ndarray]]:
    """(row offset, activations (b, C) float32) of every storage object, in row order."""
    node = store.extraction(layer)
    for a, b in store.sample_ranges():
        yield a, node.acts(a, b).astype(np.float32)


def nearest(
    store: RunStore, layer: str, query: np.ndarray, k: int, *, exclude: Sequence[int] = ()
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` rows nearest ``query`` (C,) by cosine, nearest first (ties: lower row first):
    (rows (k,) int64, cosines (k,) float32). Holes (NaN rows) and ``exclude`` never appear."""
    q = _unit(query)
    node = store.extraction(layer)
    best_rows, best_cos = np.zeros(0, np.int64), np.zeros(0, np.float32)
    skip = np.asarray(exclude, np.int64)
    for a, b in store.sample_ranges():
        block = node.acts(a, b).astype(np.float32)
        ok = np.isfinite(block).all(axis=1)
        rows = np.arange(a, b)[ok]
        cos = _unit(block[ok]) @ q
        keep = ~np.isin(rows, skip)
        rows, cos = rows[keep], cos[keep]
        rows, cos = np.concatenate([best_rows, rows]), np.concatenate([best_cos, cos])
        order = np.lexsort((rows, -cos))[:k]
        best_rows, best_cos = rows[order], cos[order].astype(np.float32)
    return best_rows, best_cos
