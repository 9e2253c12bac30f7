"""The diff of two runs over the same images, accumulated over blocks of sample rows.

A :class:`DiffAccumulator` takes the rows of both runs a block at a time (any block sizes, any
order, each row once) and holds only per-cell sums: dense (G*G,) arrays per level and side, and
sparse counts of (cell in A, cell in B) pairs and of (label, pred_a, pred_b) triples. Its memory
does not grow with the rows except through the two (N,) bool masks (both-kept, rows seen) and
the pairs that occur (at most one per sample; in practice a small multiple of the cells).
Partial accumulators over disjoint rows (one per task) :meth:`~DiffAccumulator.merge`
exactly: every sum is an integer, so any blocking and any merge order give identical results.

Typical use over a store (the caller reads the arrays; nothing here imports zarr)::

    kept = np.concatenate([both_kept(la, lb) for la, lb in layout_blocks()])   # pass 1
    acc = DiffAccumulator(kept, levels=(20, 40, 80, 160), k=10, min_count=10)
    for row0, block in blocks():                                               # pass 2
        part = acc.add(row0, block.layout_a, block.layout_b, knn_a=..., knn_b=...,
                       pred_a=..., pred_b=..., label=...)
        # part: the block's per-sample figures, to write beside the rows if wanted
    diff = acc.finish()
"""

from __future__ import annotations

import numpy as np

from atlas_core.compare.counts import SparseCounts
from atlas_core.compare.neighbours import neighbour_hits
from atlas_core.compare.predictions import flip_codes, pack_triples, transition_codes
from atlas_core.compare.result import Diff, build_diff
from atlas_core.compare.sums import BlockDiff, LevelSums, both_kept


class DiffAccumulator:
    """Everything the diff needs, summed over blocks of sample rows of two runs.

    kept: (N,) bool, the samples both runs kept (:func:`both_kept` over every row; needed up
    front because a sample's neighbours may lie in any block). levels: the grid sizes (e.g. 20,
    40, 80, 160). k: the width of the kNN graphs that :meth:`add` will get (0: none).
    min_count: a cell is kept in a run when that run has at least this many samples in it (the
    grid stage's ``grid.min_count``), so the diff's cells are the store's ``grid/<G>/cell``.
    top: destinations listed per cell (default 5).
    """

    def __init__(
        self,
        kept: np.ndarray,
        levels: tuple[int, ...] | list[int],
        *,
        k: int = 0,
        min_count: int = 1,
        top: int = 5,
    ) -> None:
        if not levels or any(int(g) < 1 for g in levels):
            raise ValueError(f"levels must be grid sizes >= 1, got {list(levels)}")
        if k < 0 or top < 1:
            raise ValueError(f"k must be >= 0 and top >= 1, got k={k}, top={top}")
        self.kept = np.array(kept, bool)
        self.seen = np.zeros(len(self.kept), bool)
        self.k, self.min_count, self.top = int(k), int(min_count), int(top)
        self.levels = {int(g): LevelSums(int(g), self.k) for g in levels}
        self.total = LevelSums(1, self.k)  # one cell holding every sample: the overall figures
        self.triples = SparseCounts()

    def add(
        self,
        row0: int,
        layout_a: np.ndarray,
        layout_b: np.ndarray,
        *,
        knn_a: np.ndarray | None = None,
        knn_b: np.ndarray | None = None,
        pred_a: np.ndarray | None = None,
        pred_b: np.ndarray | None = None,
        label: np.ndarray | None = None,
    ) -> BlockDiff:
        """Add rows ``row0 .. row0 + b - 1``.

        layout_a, layout_b: (b, 2) float normalized layouts (NaN rows: not kept);
        knn_a, knn_b: (b, k) int global row ids of each row's k nearest neighbours in A's and
        B's activation space (both or neither); pred_a, pred_b: (b,) int top-1 class per sample
        (its image's; -1 none; both or neither); label: (b,) int label per sample (-1 none).
        Returns the block's per-sample figures.
        """
        rows = self._check(row0, len(layout_a), layout_a, layout_b)
        hits, size = np.zeros((2, len(rows)), np.int64)  # no graphs: no p_i anywhere
        if (knn_a is None) != (knn_b is None) or (pred_a is None) != (pred_b is None):
            raise ValueError("give both runs' kNN blocks (or neither), and both predictions")
        if knn_a is not None and knn_b is not None:
            if np.shape(knn_a)[1:] != (self.k,) or np.shape(knn_b)[1:] != (self.k,):
                raise ValueError(f"kNN blocks must have k={self.k} columns (the accumulator's k)")
            hits, size = neighbour_hits(knn_a, knn_b, rows, self.kept)
        with np.errstate(invalid="ignore", divide="ignore"):
            pres = np.where(size > 0, hits / np.maximum(size, 1), np.nan).astype(np.float32)
        part, triples = self._predictions(row0, self.kept[rows], pres, pred_a, pred_b, label)
        # every check passed: only now does the state change (a refused block leaves no trace)
        self.seen[rows] = True
        self.triples.add(triples)
        for level in (*self.levels.values(), self.total):
            level.add(layout_a, layout_b, part, hits, size)
        return part

    def _check(self, row0: int, n: int, la: np.ndarray, lb: np.ndarray) -> np.ndarray:
        """The block's global rows, checked: inside the store, not added before, and kept
        exactly where the ``kept`` mask says (else neighbours would be filtered inconsistently)."""
        if row0 < 0 or row0 + n > len(self.kept) or len(lb) != n:
            raise ValueError(
                f"block rows {row0}..{row0 + n} (layouts {len(la)} and {len(lb)} rows) do not "
                f"fit the {len(self.kept)} rows of the kept mask"
            )
        if self.seen[row0 : row0 + n].any():
            raise ValueError(f"rows of block {row0}..{row0 + n} were added before")
        if not np.array_equal(both_kept(la, lb), self.kept[row0 : row0 + n]):
            raise ValueError(
                f"block {row0}..{row0 + n}: its layouts disagree with the kept mask; build the "
                "mask with both_kept() over the same layouts"
            )
        return np.arange(row0, row0 + n, dtype=np.int64)

    @staticmethod
    def _predictions(
        row0: int,
        kept: np.ndarray,
        pres: np.ndarray,
        pred_a: np.ndarray | None,
        pred_b: np.ndarray | None,
        label: np.ndarray | None,
    ) -> tuple[BlockDiff, np.ndarray]:
        """The block's per-sample figures and its packed (label, pred_a, pred_b) keys."""
        n = len(kept)
        if pred_a is None or pred_b is None:
            none = np.full(n, -1, np.int8)
            return BlockDiff(row0, kept, pres, none, none.copy()), np.zeros(0, np.int64)
        if len(pred_a) != n or len(pred_b) != n or (label is not None and len(label) != n):
            raise ValueError(f"predictions and labels must have the block's {n} rows")
        flip = flip_codes(pred_a, pred_b, kept)
        y = np.full(n, -1, np.int64) if label is None else np.asarray(label, np.int64)
        trans = transition_codes(y, pred_a, pred_b, kept)
        c = flip >= 0
        keys = pack_triples(y[c], np.asarray(pred_a)[c], np.asarray(pred_b)[c])
        return BlockDiff(row0, kept, pres, flip, trans), keys

    def merge(self, other: DiffAccumulator) -> None:
        """Add a partial accumulator over other rows of the same two runs (same settings)."""
        same = (self.k, self.min_count, self.top, tuple(self.levels)) == (
            other.k,
            other.min_count,
            other.top,
            tuple(other.levels),
        )
        if not same or not np.array_equal(self.kept, other.kept):
            raise ValueError("merge needs partials of the same kept mask, levels, k and min_count")
        if (self.seen & other.seen).any():
            raise ValueError("the partials overlap: a row was added to both")
        self.seen |= other.seen
        for g, level in self.levels.items():
            level.merge(other.levels[g])
        self.total.merge(other.total)
        self.triples.merge(other.triples)

    def finish(self, *, require_all: bool = True) -> Diff:
        """The diff over every row added (all rows of the mask unless ``require_all=False``)."""
        if require_all and not self.seen.all():
            missing = np.flatnonzero(~self.seen)
            raise ValueError(
                f"{len(missing)} rows were never added (first {missing[:5].tolist()}); add "
                "every block, or finish(require_all=False) for a partial diff"
            )
        return build_diff(
            self.levels,
            self.total,
            self.triples,
            k=self.k,
            min_count=self.min_count,
            top=self.top,
            rows=int(self.seen.sum()),
        )
