"""A run's kNN graph in activation space, for the diff: the one function a neighbour index swaps.

:func:`knn_graph` is what the diff driver (runs.py) calls, once per run; anything with its
signature can replace it (``diff_runs(..., knn=...)``): it yields the graph in consecutive
blocks of ``block_rows`` sample rows, so the driver writes each block and holds none. Today it
is exact: cosine similarity by blocked matrix products, every block of queries against every
block of reference rows read from the store, a running top-k merged as the blocks pass. Work is
O(N^2 C) (fine up to about 10^5 rows on a CPU; the benchmark reports its time apart), memory
O(block_rows x (C + k)) plus one block of similarities, whatever N.

Plugging in an approximate index (atlas_core/neighbours): build it over the ``kept`` rows of
``layers/<layer>/acts`` (reading blocks through ``store.extraction(layer).acts(a, b)``), then
yield, for each block of ``block_rows`` rows in order, ``(row0, ids)`` with ``ids`` (b, k) int64
global sample rows, nearest first, -1 for rows not kept or missing neighbours, never the row
itself. The diff's definition of preservation (neighbours.py) takes it from there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

import numpy as np

from atlas_core.reduce.neighbors import NeighborIndex
from atlas_core.store import RunStore

_SIM_VALUES = 1 << 24  # similarities held at once per matrix product (64 MB of float32)


class KnnGraph(Protocol):
    """What the diff calls to get a run's kNN graph (see the module docstring)."""

    def __call__(
        self, store: RunStore, layer: str, k: int, kept: np.ndarray, *, block_rows: int
    ) -> Iterator[tuple[int, np.ndarray]]: ...


def knn_graph(
    store: RunStore,
    layer: str,
    k: int,
    kept: np.ndarray,
    *,
    block_rows: int = 65_536,
    device: str = "cpu",
) -> Iterator[tuple[int, np.ndarray]]:
    """The exact cosine kNN graph of ``layer``'s stored activations among the ``kept`` rows.

    kept: (N,) bool over the store's sample rows (N = n_images * k): the rows searched and
    queried. Yields ``(row0, ids)`` for row0 = 0, block_rows, 2 * block_rows, ...: ``ids``
    (b, k) int64 global rows, nearest first (ties: lower row), -1 for rows not kept and where
    fewer than k other rows are kept; a row is never its own neighbour. Equal to
    :func:`~atlas_core.compare.exact_knn` of the whole matrix (up to exact ties).
    """
    acts = store.extraction(layer)
    return blocked_knn(lambda a, b: acts.acts(a, b), kept, k, block_rows=block_rows, device=device)


def stored_or_exact(
    store: RunStore,
    layer: str,
    k: int,
    kept: np.ndarray,
    *,
    block_rows: int = 65_536,
) -> Iterator[tuple[int, np.ndarray]]:
    """The run's own kNN graph where its neighbours stage stored one with at least ``k``
    neighbours per row (``layers/<L>/neighbours/rows``: linear to read, built once by the
    run's index), else :func:`knn_graph`'s exact search. From the stored graph, neighbours
    that are not ``kept`` become -1 (the preservation counts only the rest), so a row may have
    fewer than ``k``; when both runs kept every row the two are the same graph."""
    node = store.neighbours(layer)
    if not node.has("rows") or node.array("rows").shape[1] < k:
        yield from knn_graph(store, layer, k, kept, block_rows=block_rows)
        return
    kept = np.asarray(kept, bool)
    n = len(kept)
    for a in range(0, n, block_rows):
        b = min(n, a + block_rows)
        ids = node.read("rows", a, b)[:, :k].astype(np.int64)
        ids = np.where((ids >= 0) & kept[np.maximum(ids, 0)], ids, -1)
        ids[~kept[a:b]] = -1
        yield a, ids


def blocked_knn(
    read: Callable[[int, int], np.ndarray],
    kept: np.ndarray,
    k: int,
    *,
    block_rows: int,
    device: str = "cpu",
) -> Iterator[tuple[int, np.ndarray]]:
    """:func:`knn_graph` over any reader: ``read(a, b)`` returns rows [a, b) as (b - a, C)
    float (NaN rows are never searched)."""
    kept = np.asarray(kept, bool)
    n = len(kept)
    if k < 1 or block_rows < 1:
        raise ValueError(f"k and block_rows must be >= 1, got k={k}, block_rows={block_rows}")
    spans = [(a, min(a + block_rows, n)) for a in range(0, n, block_rows)]
    for qa, qb in spans:
        q_rows, q = _rows(read, kept, qa, qb)
        best_d = np.full((len(q_rows), k + 1), np.inf, np.float32)
        best_i = np.full((len(q_rows), k + 1), -1, np.int64)
        for ra, rb in spans if len(q_rows) else []:
            r_rows, r = (q_rows, q) if ra == qa else _rows(read, kept, ra, rb)
            if not len(r_rows):
                continue
            index = NeighborIndex.build(r, "cosine")
            width = min(k + 1, len(r_rows))
            found, dist = index.query(
                q, width, device=device, block=max(64, _SIM_VALUES // len(r_rows))
            )
            best_d, best_i = _merge(best_d, best_i, dist, r_rows[found], k + 1)
        out = np.full((qb - qa, k), -1, np.int64)
        out[q_rows - qa] = _drop_self(best_i, q_rows, k)
        yield qa, out


def _rows(
    read: Callable[[int, int], np.ndarray], kept: np.ndarray, a: int, b: int
) -> tuple[np.ndarray, np.ndarray]:
    """(global rows (m,) of [a, b) that are kept and finite, their vectors (m, C) float32)."""
    x = np.asarray(read(a, b), np.float32)
    ok = kept[a:b] & np.isfinite(x).all(axis=1)
    return np.flatnonzero(ok) + a, np.ascontiguousarray(x[ok])


def _merge(
    d1: np.ndarray, i1: np.ndarray, d2: np.ndarray, i2: np.ndarray, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """The ``width`` nearest of two candidate lists per row, by (distance, row): (m, width)."""
    d = np.concatenate([d1, d2.astype(np.float32)], axis=1)
    i = np.concatenate([i1, i2.astype(np.int64)], axis=1)
    # -1 (no candidate) sorts last: its distance is inf
    order = np.lexsort((np.where(i < 0, np.iinfo(np.int64).max, i), d), axis=-1)[:, :width]
    return np.take_along_axis(d, order, 1), np.take_along_axis(i, order, 1)


def _drop_self(ids: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """The first k of each row's k + 1 candidates that are not the row itself (a row equal to
    others may sit anywhere among its ties, or be absent): (m, k) int64, -1 padded."""
    is_self = ids == rows[:, None]
    order = np.argsort(is_self, axis=1, kind="stable")  # self (at most once) moves last
    kept = np.take_along_axis(ids, order, axis=1)
    kept = np.where(np.take_along_axis(is_self, order, axis=1), -1, kept)
    return kept[:, :k]
