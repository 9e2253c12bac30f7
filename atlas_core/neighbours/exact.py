"""The exact reference: brute-force cosine k-nearest neighbours in numpy float64.

Small and obviously correct, for tests and for checking the index on a sample; the index itself
answers exactly too when it holds one list (``NeighbourParams(lists=1)``, the default for small
runs), through the same blocked code as its approximate search.
"""

from __future__ import annotations

import numpy as np


def exact_knn(
    vectors: np.ndarray, queries: np.ndarray, k: int, *, exclude: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` rows of ``vectors`` (n, C) with the highest cosine to each row of ``queries``
    (q, C): rows (q, k) int64 and cosines (q, k) float32, best first, ties by lower row.

    Rows of ``vectors`` holding a NaN are absent (never returned). ``exclude`` (q,) int64: a row
    each query must not return (itself, for row queries; -1 for none). Where fewer than ``k``
    rows are available the tail is -1 and NaN."""
    v = np.asarray(vectors, np.float64)
    q = np.asarray(queries, np.float64)
    present = np.asarray(np.isfinite(v).all(axis=1), dtype=bool)
    vn = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-30)
    qn = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-30)
    cos = qn @ np.where(present[:, None], vn, 0.0).T
    cos[:, ~present] = -np.inf
    if exclude is not None:
        own = np.asarray(exclude, np.int64)
        hit = own >= 0
        cos[np.flatnonzero(hit), own[hit]] = -np.inf
    rows = np.full((len(q), k), -1, np.int64)
    out = np.full((len(q), k), np.nan, np.float32)
    order = np.arange(v.shape[0])
    for i in range(len(q)):
        best = np.lexsort((order, -cos[i]))[:k]
        best = best[np.isfinite(cos[i, best])]
        rows[i, : len(best)] = best
        out[i, : len(best)] = cos[i, best]
    return rows, out
