"""Per-cell sums of a diff at one grid size: the state a :class:`DiffAccumulator` holds.

Every sum is an integer (counts, and neighbour hits grouped by the number of valid neighbours),
so sums over any blocking of the rows, merged in any order, are identical.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from atlas_core.compare.counts import SparseCounts
from atlas_core.compare.predictions import TRANSITIONS
from atlas_core.grid.binning import cell_index


def both_kept(layout_a: np.ndarray, layout_b: np.ndarray) -> np.ndarray:
    """(b,) bool: rows with a finite layout in both runs (a hole or a NaN layout in either
    excludes the sample). layout_a, layout_b: (b, 2) float, normalized to [0, 1]."""
    return _finite(layout_a) & _finite(layout_b)


def _finite(layout: np.ndarray) -> np.ndarray:
    return np.isfinite(np.asarray(layout)).all(axis=1)


@dataclass
class BlockDiff:
    """Per-sample figures of one block of rows ``row0 .. row0 + b - 1``.

    kept: (b,) bool kept in both runs; preservation: (b,) float32 p_i (NaN where undefined or
    no kNN graphs were given); flip: (b,) int8 1/0, -1 not counted; transition: (b,) int8 code
    of predictions.TRANSITIONS, -1 not counted.
    """

    row0: int
    kept: np.ndarray
    preservation: np.ndarray
    flip: np.ndarray
    transition: np.ndarray


class SideSums:
    """Per-cell sums of one run's grid at one size, dense over the G*G flat cells.

    count: samples this run kept; both: those kept in both runs; pres_n: those with a defined
    p_i; pres_hits (G*G, k+1): their hits summed by |V_A| (exact integers; the mean is
    formed at the end); flips, flip_n: flipped and counted samples; trans (G*G, 5): transitions.
    """

    def __init__(self, size: int, k: int) -> None:
        g = size * size
        self.size, self.k = size, k
        self.count = np.zeros(g, np.int64)
        self.both = np.zeros(g, np.int64)
        self.pres_n = np.zeros(g, np.int64)
        self.pres_hits = np.zeros((g, k + 1), np.int64)
        self.flips = np.zeros(g, np.int64)
        self.flip_n = np.zeros(g, np.int64)
        self.trans = np.zeros((g, len(TRANSITIONS)), np.int64)

    def add(
        self,
        cells: np.ndarray,
        own: np.ndarray,
        part: BlockDiff,
        hits: np.ndarray,
        size: np.ndarray,
    ) -> None:
        """Add a block: cells (b,) flat cells in this run (-1 where not kept), own (b,) bool
        kept by this run, hits and size (b,) int64 (neighbours.neighbour_hits)."""
        g = self.size * self.size
        self.count += _bins(cells[own], g)
        both = part.kept
        self.both += _bins(cells[both], g)
        defined = both & (size > 0)
        c = cells[defined]
        self.pres_n += _bins(c, g)
        flat = c * (self.k + 1) + size[defined]
        self.pres_hits += _bins(flat, g * (self.k + 1), hits[defined]).reshape(g, self.k + 1)
        self.flip_n += _bins(cells[part.flip >= 0], g)
        self.flips += _bins(cells[part.flip == 1], g)
        tc = part.transition >= 0
        nt = len(TRANSITIONS)
        flat_t = cells[tc] * nt + part.transition[tc]
        self.trans += _bins(flat_t, g * nt).reshape(g, nt)

    def merge(self, other: SideSums) -> None:
        for name in ("count", "both", "pres_n", "pres_hits", "flips", "flip_n", "trans"):
            getattr(self, name).__iadd__(getattr(other, name))


def _bins(idx: np.ndarray, n: int, weights: np.ndarray | None = None) -> np.ndarray:
    """np.bincount as int64 of length n (integer weights stay exact below 2^53)."""
    out = np.bincount(idx, weights=weights, minlength=n)
    return np.rint(out).astype(np.int64) if weights is not None else out.astype(np.int64)


class LevelSums:
    """Both sides' per-cell sums at one grid size, and the (cell in A, cell in B) pair counts
    of the samples both runs kept (key ``cell_a * G*G + cell_b``)."""

    def __init__(self, size: int, k: int) -> None:
        self.size = size
        self.a, self.b = SideSums(size, k), SideSums(size, k)
        self.pairs = SparseCounts()

    def add(
        self, la: np.ndarray, lb: np.ndarray, part: BlockDiff, hits: np.ndarray, size: np.ndarray
    ) -> None:
        """la, lb: (b, 2) layouts of the block in A and B; hits, size: (b,) int64."""
        own_a, own_b = _finite(la), _finite(lb)
        ca = np.where(own_a, cell_index(la, self.size), -1)
        cb = np.where(own_b, cell_index(lb, self.size), -1)
        self.a.add(ca, own_a, part, hits, size)
        self.b.add(cb, own_b, part, hits, size)
        keep = part.kept
        self.pairs.add(ca[keep] * (self.size * self.size) + cb[keep])

    def merge(self, other: LevelSums) -> None:
        self.a.merge(other.a)
        self.b.merge(other.b)
        self.pairs.merge(other.pairs)
