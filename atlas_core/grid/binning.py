"""Binning of a normalized layout into a G x G grid, without a Python loop over cells or points.

Cells are numbered ``iy * G + ix`` with ix along x and iy along y (y up: iy = 0 is the bottom
row). Partial sums over any row range can be merged, so the work splits across tasks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class CellSums:
    """Sum of activations (G*G, C) float64 and count (G*G,) int64 per cell."""

    size: int
    sums: np.ndarray
    counts: np.ndarray


def cell_index(xy: np.ndarray, size: int) -> np.ndarray:
    """Flat cell index of each row of a layout in [0, 1]^2 (N, 2); -1 for NaN rows.

    A coordinate of exactly 1.0 falls in the last cell.
    """
    ok = ~np.isnan(xy).any(axis=1)
    ij = np.minimum(np.floor(np.nan_to_num(xy) * size), size - 1).astype(np.int64)
    ij = np.maximum(ij, 0)
    return np.where(ok, ij[:, 1] * size + ij[:, 0], -1)


def partial_sums(cells: np.ndarray, acts: np.ndarray, size: int) -> CellSums:
    """Per-cell sums and counts of ``acts`` (N, C) for rows with ``cells`` >= 0."""
    keep = cells >= 0
    c, a = cells[keep], acts[keep].astype(np.float64)
    n_cells = size * size
    counts = np.bincount(c, minlength=n_cells)
    sums = np.zeros((n_cells, acts.shape[1]), dtype=np.float64)
    np.add.at(sums, c, a) if len(c) < 4096 else _sorted_add(sums, c, a)
    return CellSums(size, sums, counts)


def _sorted_add(sums: np.ndarray, c: np.ndarray, a: np.ndarray) -> None:
    order = np.argsort(c, kind="stable")
    cs = c[order]
    starts = np.flatnonzero(np.r_[True, cs[1:] != cs[:-1]])
    sums[cs[starts]] += np.add.reduceat(a[order], starts, axis=0)


@dataclass
class SparseSums:
    """Partial sums of one row range over its non-empty cells only: flat cell (M,) sorted
    unique, sums (M, C) float64, counts (M,) int64. A range of R rows holds at most R cells, so
    a partial is never larger than its rows, however fine the grid."""

    size: int
    cells: np.ndarray
    sums: np.ndarray
    counts: np.ndarray


def sparse_partial_sums(cells: np.ndarray, acts: np.ndarray, size: int) -> SparseSums:
    """Per-cell sums and counts of ``acts`` (N, C) over the cells that rows fall in."""
    keep = cells >= 0
    c, a = cells[keep], acts[keep].astype(np.float64)
    order = np.argsort(c, kind="stable")
    cs = c[order]
    if len(cs) == 0:
        return SparseSums(size, cs, np.zeros((0, acts.shape[1])), np.zeros(0, np.int64))
    starts = np.flatnonzero(np.r_[True, cs[1:] != cs[:-1]])
    sums = np.add.reduceat(a[order], starts, axis=0)
    counts = np.diff(np.r_[starts, len(cs)]).astype(np.int64)
    return SparseSums(size, cs[starts], sums, counts)


def add_sparse(total: CellSums, part: SparseSums) -> None:
    """Add a sparse partial into a dense total of the same grid size, in place."""
    if part.size != total.size:
        raise ValueError("cannot merge partial sums of different grid sizes")
    total.sums[part.cells] += part.sums
    total.counts[part.cells] += part.counts


def empty_sums(size: int, channels: int) -> CellSums:
    return CellSums(size, np.zeros((size * size, channels)), np.zeros(size * size, np.int64))


def merge(parts: list[CellSums]) -> CellSums:
    """Sum partials of the same grid size."""
    size = parts[0].size
    if any(p.size != size for p in parts):
        raise ValueError("cannot merge partial sums of different grid sizes")
    sums = np.sum([p.sums for p in parts], axis=0)
    return CellSums(size, sums, np.sum([p.counts for p in parts], axis=0))


def finalize(total: CellSums, min_count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Kept cells (count >= ``min_count``): (flat index (M,), mean (M, C) float32, count (M,))."""
    kept = np.flatnonzero(total.counts >= max(min_count, 1))
    mean = total.sums[kept] / total.counts[kept, None]
    return kept, mean.astype(np.float32), total.counts[kept].astype(np.int64)


def top_classes_per_cell(
    cells: np.ndarray, labels: np.ndarray, kept: np.ndarray, top: int = 5
) -> tuple[np.ndarray, np.ndarray]:
    """Most frequent labels among each kept cell's rows: (class (M, top), count (M, top)), -1/0 pad.

    cells: (N,) flat cell per row (-1 ignored); labels: (N,) int label per row (-1 ignored).
    """
    ok = (cells >= 0) & (labels >= 0)
    pos = np.full(int(cells.max(initial=0)) + 1, -1, dtype=np.int64)
    pos[kept] = np.arange(len(kept))
    row = np.where(ok, pos[np.where(ok, cells, 0)], -1)
    ok &= row >= 0
    pairs, counts = np.unique(np.stack([row[ok], labels[ok]], 1), axis=0, return_counts=True)
    # sort by (row asc, count desc); then rank within each row
    order = np.lexsort((-counts, pairs[:, 0]))
    pairs, counts = pairs[order], counts[order]
    first = (
        np.r_[0, np.flatnonzero(pairs[1:, 0] != pairs[:-1, 0]) + 1] if len(pairs) else pairs[:0, 0]
    )
    rank = np.arange(len(pairs)) - np.repeat(first, np.diff(np.r_[first, len(pairs)]))
    sel = rank < top
    out_c = np.full((len(kept), top), -1, dtype=np.int32)
    out_n = np.zeros((len(kept), top), dtype=np.int32)
    out_c[pairs[sel, 0], rank[sel]] = pairs[sel, 1]
    out_n[pairs[sel, 0], rank[sel]] = counts[sel]
    return out_c, out_n


def attribution_per_cell(
    cells: np.ndarray,
    kept: np.ndarray,
    classes: np.ndarray,
    values: np.ndarray,
    n_classes: int,
    top: int = 5,
) -> tuple[np.ndarray, np.ndarray]:
    """Top classes of each kept cell's mean attribution (a cell's label is the first).

    cells: (N,) flat cell per sample (-1 ignored); classes, values: (N, A) the class of each
    attribution column and its value (NaN rows ignored). Returns (class (M, top) int32,
    mean attribution (M, top) float32), sorted by mean attribution, highest first.
    """
    pos = np.full(int(max(cells.max(initial=0), kept.max(initial=0))) + 1, -1, dtype=np.int64)
    pos[kept] = np.arange(len(kept))
    row = np.where(cells >= 0, pos[np.maximum(cells, 0)], -1)
    ok = (row >= 0) & ~np.isnan(values).any(axis=1)
    m = len(kept)
    flat = (row[ok, None] * n_classes + classes[ok]).ravel()
    sums = np.bincount(
        flat, weights=values[ok].ravel().astype(np.float64), minlength=m * n_classes
    ).reshape(m, n_classes)
    counts = np.bincount(row[ok], minlength=m).astype(np.float64)
    mean = sums / np.maximum(counts, 1)[:, None]
    order = np.argsort(-mean, axis=1, kind="stable")[:, :top]
    return order.astype(np.int32), np.take_along_axis(mean, order, axis=1).astype(np.float32)


def class_heat(
    cells: np.ndarray, kept: np.ndarray, classes: np.ndarray, values: np.ndarray, heat: np.ndarray
) -> np.ndarray:
    """Each kept cell's mean attribution to each class of ``heat``: (M, H) float32.

    Same conventions as :func:`attribution_per_cell`: the mean over the cell's samples with
    attribution, a class missing from a sample's columns counting 0.
    """
    pos = np.full(int(max(cells.max(initial=0), kept.max(initial=0))) + 1, -1, dtype=np.int64)
    pos[kept] = np.arange(len(kept))
    row = np.where(cells >= 0, pos[np.maximum(cells, 0)], -1)
    ok = (row >= 0) & ~np.isnan(values).any(axis=1)
    counts = np.bincount(row[ok], minlength=len(kept)).astype(np.float64)
    out = np.zeros((len(kept), len(heat)), np.float64)
    for j, c in enumerate(np.asarray(heat)):
        v = np.where(classes[ok] == c, values[ok], 0.0).sum(axis=1)
        out[:, j] = np.bincount(row[ok], weights=v, minlength=len(kept))
    return (out / np.maximum(counts, 1)[:, None]).astype(np.float32)
