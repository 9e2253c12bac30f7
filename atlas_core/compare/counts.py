"""Counts of int64 keys, sparse: only the keys seen are held, sorted, with their counts.

The diff counts pairs (cell in A, cell in B) and triples (label, prediction in A, in B). A dense
table of pairs at a 160 x 160 grid would hold 25,600^2 = 655 M entries; the pairs that occur are
at most one per sample, and in practice a small multiple of the cells. Keys arrive in blocks;
they are buffered and folded into the sorted table when the buffer outgrows it, so the work is
a sort of each key about once (amortized) and the memory is the table plus a buffer of at most
its size (or ``_MIN_BUFFER`` keys).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

_MIN_BUFFER = 1 << 18  # keys buffered before a fold, at least (2 MB)


@dataclass
class SparseCounts:
    """keys (P,) int64 sorted unique, counts (P,) int64 >= 1; plus keys not yet folded in."""

    keys: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    counts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    _pending: list[np.ndarray] = field(default_factory=list, repr=False)
    _pending_n: int = 0

    def add(self, keys: np.ndarray) -> None:
        """Count each element of ``keys`` (any shape, integer) once."""
        keys = np.asarray(keys, np.int64).ravel()
        if not len(keys):
            return
        self._pending.append(keys)
        self._pending_n += len(keys)
        if self._pending_n > max(len(self.keys), _MIN_BUFFER):
            self._fold()

    def merge(self, other: SparseCounts) -> None:
        """Add every count of ``other`` into this table (``other`` is left as it was)."""
        other._fold()
        self._fold()
        self.keys, self.counts = _combine(
            np.concatenate([self.keys, other.keys]), np.concatenate([self.counts, other.counts])
        )

    def table(self) -> tuple[np.ndarray, np.ndarray]:
        """(keys (P,) int64 ascending, counts (P,) int64), everything added so far."""
        self._fold()
        return self.keys, self.counts

    def _fold(self) -> None:
        if not self._pending:
            return
        raw = np.concatenate(self._pending)
        self._pending, self._pending_n = [], 0
        uniq, cnt = np.unique(raw, return_counts=True)
        self.keys, self.counts = _combine(
            np.concatenate([self.keys, uniq]), np.concatenate([self.counts, cnt.astype(np.int64)])
        )


def _combine(keys: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sum the counts of equal keys: (sorted unique keys, their summed counts)."""
    if not len(keys):
        return keys.astype(np.int64), counts.astype(np.int64)
    order = np.argsort(keys, kind="stable")  # two sorted runs: a linear merge in timsort
    k, c = keys[order], counts[order]
    starts = np.flatnonzero(np.r_[True, k[1:] != k[:-1]])
    return k[starts], np.add.reduceat(c, starts).astype(np.int64)
