"""Which samples stand for a cell: the k whose activation is closest to the cell's mean direction.

Scores are cosines between a sample's activation and the mean activation of the cell its layout
point falls in. Top-k lists of disjoint row ranges merge into the top-k of their union, so the
work splits across tasks; ties go to the lower row, so the result does not depend on the split.
"""

from __future__ import annotations

import numpy as np


def cosine_to_cells(
    acts: np.ndarray, cells: np.ndarray, kept: np.ndarray, unit_means: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(kept-cell index (n,), cosine (n,)) of each row; index -1 where the row's cell is not kept.

    acts: (n, C); cells: (n,) flat cell of each row (-1: no layout); kept: (M,) sorted flat cells;
    unit_means: (M, C) the kept cells' mean activations, L2-normalized.
    """
    pos = np.searchsorted(kept, cells)
    pos = np.minimum(pos, max(len(kept) - 1, 0))
    hit = (cells >= 0) & (len(kept) > 0)
    if len(kept):
        hit &= kept[pos] == cells
    a = np.asarray(acts, np.float32)
    hit &= np.isfinite(a).all(axis=1)
    idx = np.where(hit, pos, -1)
    score = np.full(len(a), -np.inf, np.float32)
    if hit.any():
        v = a[hit]
        norm = np.linalg.norm(v, axis=1)
        dots = np.einsum("nc,nc->n", v, unit_means[pos[hit]])
        score[hit] = np.where(norm > 0, dots / np.maximum(norm, 1e-12), 0.0)
    return idx, score


def top_k_per_cell(
    idx: np.ndarray, score: np.ndarray, rows: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The k best (highest score, then lowest row) rows of each cell: flat (cell, row, score).

    idx: (n,) kept-cell index (-1 ignored); rows: (n,) the rows' global sample numbers.
    Returned arrays are sorted by cell, then rank.
    """
    ok = idx >= 0
    c, r, s = idx[ok], np.asarray(rows)[ok], score[ok]
    order = np.lexsort((r, -s.astype(np.float64), c))
    c, r, s = c[order], r[order], s[order]
    if len(c) == 0:
        return c.astype(np.int64), r.astype(np.int64), s.astype(np.float32)
    starts = np.flatnonzero(np.r_[True, c[1:] != c[:-1]])
    rank = np.arange(len(c)) - np.repeat(starts, np.diff(np.r_[starts, len(c)]))
    keep = rank < k
    return c[keep].astype(np.int64), r[keep].astype(np.int64), s[keep].astype(np.float32)


def merge_top_k(
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]], n_cells: int, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-range top-k lists: (rows (n_cells, k) int64 with -1 pad, scores (n_cells, k))."""
    if parts:
        c = np.concatenate([p[0] for p in parts])
        r = np.concatenate([p[1] for p in parts])
        s = np.concatenate([p[2] for p in parts])
    else:
        c = r = np.zeros(0, np.int64)
        s = np.zeros(0, np.float32)
    c, r, s = top_k_per_cell(c, s, r, k)
    rows = np.full((n_cells, k), -1, np.int64)
    scores = np.full((n_cells, k), np.nan, np.float32)
    if len(c):
        starts = np.flatnonzero(np.r_[True, c[1:] != c[:-1]])
        rank = np.arange(len(c)) - np.repeat(starts, np.diff(np.r_[starts, len(c)]))
        rows[c, rank] = r
        scores[c, rank] = s
    return rows, scores
