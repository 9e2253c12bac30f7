"""Neighbourhood preservation between two runs, and an exact cosine kNN graph for small runs.

Definition (what every figure of the diff that says "preservation" means). Rows are sample rows
of the store (global ids 0..N-1); ``kept`` (N,) bool marks the samples both runs kept (a finite
layout in A and in B). For a query row ``i`` and a kNN row ``nbrs`` (k ids, nearest first) of
run X, the *valid* neighbours of ``i`` in X are the ids ``j`` of ``nbrs`` with

    0 <= j < N,  j != i,  kept[j],  and j not already earlier in the same row

(``-1`` pads a row with fewer than k neighbours and is never valid). With V_A and V_B the valid
neighbours in A and in B,

    p_i = |V_A intersect V_B| / |V_A|      (the fraction of A's neighbours still neighbours in B)

defined only where ``kept[i]`` and ``V_A`` is not empty (else NaN, and the sample is left out of
every mean). A per-cell or overall preservation is the mean of ``p_i`` over its samples with a
defined ``p_i``. When both graphs are searched among the kept rows only (``exact_knn(...,
rows=kept)``), every ``|V_A| = k`` and ``p_i`` is the usual kNN overlap at k.
"""

from __future__ import annotations

import numpy as np

from atlas_core.reduce.neighbors import NeighborIndex


def exact_knn(
    x: np.ndarray,
    k: int,
    *,
    rows: np.ndarray | None = None,
    device: str = "cpu",
    block: int | None = None,
) -> np.ndarray:
    """The k nearest rows of each row of ``x`` by cosine similarity, itself excluded.

    x: (N, C) float (float16 activations are fine; NaN rows are never searched);
    rows: (N,) bool, the rows to search among and to query (default: the rows without NaN).
    Returns (N, k) int64 global row ids, nearest first; -1 for rows not searched and where fewer
    than k other rows exist. Exact: blocked matrix products (atlas_core.reduce.neighbors), so
    O(N^2 C) work: for tests and runs of up to about 10^5 rows; large runs take the kNN graphs
    of the project's neighbour index instead.
    """
    x = np.asarray(x)
    mask = np.ones(len(x), bool) if rows is None else np.array(rows, bool)
    if mask.shape != (len(x),):
        raise ValueError(f"rows must be a bool mask of shape ({len(x)},), got {mask.shape}")
    mask &= ~np.isnan(x).any(axis=1)  # a NaN row (a hole) is never searched
    ids = np.flatnonzero(mask)
    out = np.full((len(x), k), -1, np.int64)
    if len(ids) < 2 or k < 1:
        return out
    index = NeighborIndex.build(x[ids].astype(np.float32), "cosine")
    found, _ = index.query(x[ids].astype(np.float32), k + 1, device=device, block=block)
    # the row itself is normally first; with exact duplicates it may be anywhere or absent:
    # a stable sort on "is self" moves it last, and the first k are the k nearest others
    is_self = found == np.arange(len(ids))[:, None]
    found = np.take_along_axis(found, np.argsort(is_self, axis=1, kind="stable"), axis=1)
    found = np.where(np.sort(is_self, axis=1), -1, found)[:, :k]  # self (now last) never kept
    width = found.shape[1]
    out[ids, :width] = np.where(found >= 0, ids[np.maximum(found, 0)], -1)
    return out


def valid_neighbours(nbrs: np.ndarray, rows: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """Each row's valid neighbours (module docstring), sorted ascending, -1 for the others.

    nbrs: (b, k) integer global ids; rows: (b,) the query rows' own ids; kept: (N,) bool.
    Returns (b, k) int64. An id outside [-1, N) is an error (a graph of another store).
    """
    nb = np.asarray(nbrs, np.int64)
    if nb.ndim != 2 or len(nb) != len(rows):
        raise ValueError(f"a kNN block must be ({len(rows)}, k), got {nb.shape}")
    if nb.size and (nb.min() < -1 or nb.max() >= len(kept)):
        raise ValueError(
            f"kNN ids must lie in [-1, {len(kept)}) (rows of this store), got "
            f"{nb.min()}..{nb.max()}: the graph belongs to another run or was offset wrongly"
        )
    ok = (nb >= 0) & (nb != np.asarray(rows, np.int64)[:, None])
    ok &= kept[np.maximum(nb, 0)]
    s = np.sort(np.where(ok, nb, -1), axis=1)
    repeat = np.zeros(s.shape, bool)
    repeat[:, 1:] = (s[:, 1:] == s[:, :-1]) & (s[:, 1:] >= 0)
    return np.sort(np.where(repeat, -1, s), axis=1)


def neighbour_hits(
    knn_a: np.ndarray, knn_b: np.ndarray, rows: np.ndarray, kept: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per query row: (hits (b,) int64 = |V_A intersect V_B|, size (b,) int64 = |V_A|).

    Rows not kept get size 0 (so no defined p_i). Work and memory O(b k^2).
    """
    va = valid_neighbours(knn_a, rows, kept)
    vb = valid_neighbours(knn_b, rows, kept)
    size = (va >= 0).sum(axis=1)
    hits = ((va[:, :, None] == vb[:, None, :]).any(2) & (va >= 0)).sum(1)
    own = kept[np.asarray(rows, np.int64)]
    return np.where(own, hits, 0).astype(np.int64), np.where(own, size, 0).astype(np.int64)


def preservation(
    knn_a: np.ndarray, knn_b: np.ndarray, rows: np.ndarray, kept: np.ndarray
) -> np.ndarray:
    """p_i of each query row (module docstring): (b,) float32, NaN where undefined."""
    hits, size = neighbour_hits(knn_a, knn_b, rows, kept)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(size > 0, hits / np.maximum(size, 1), np.nan).astype(np.float32)
