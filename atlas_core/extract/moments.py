"""The second moment of a layer, reduced as extraction shards finish, in a fixed tree order.

Each shard contributes a partial sum of x x^T over every position of its images. Adding them in
the order tasks finish would make the total (and so the whitening, and so every icon) depend
on scheduling in its last bits. :class:`MomentTree` adds them over a fixed binary tree of shard
indices instead: block ``(level, i)`` covers shards ``[i * 2^level, (i + 1) * 2^level)`` and is
formed, once both halves are complete, as left + right. Whatever the arrival order, every sum is
taken at the same place, so the total is the same to the bit. Only complete maximal blocks are
held (one per run of finished shards: a few even when shards finish out of order), and the tree
serializes to a small checkpoint, so a resumed driver goes on where it stopped. Each task also
persists its own partial (:func:`partial_to_bytes`) before its commit marker; the driver deletes
those once a checkpoint holds them, so a resume reads only the partials since the last one.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np


class MomentTree:
    """Partial sums of ``n_shards`` shards for several layers, combined in a fixed tree.

    ``add(shard, sums, counts)``: sums is {layer: (C, C) float64}, counts {layer: int}. A
    shard may hold any subset of the keys (none, when every row of it failed): what it lacks
    counts as zero with count 0.
    """

    def __init__(self, n_shards: int) -> None:
        self.n = n_shards
        self.top = max(0, int(np.ceil(np.log2(max(n_shards, 1)))))
        self.blocks: dict[tuple[int, int], tuple[dict[str, np.ndarray], dict[str, int]]] = {}

    def _span(self, level: int, i: int) -> tuple[int, int]:
        return i << level, min((i + 1) << level, self.n)

    def covered(self) -> np.ndarray:
        """(n_shards,) uint8: 1 for every shard the held blocks include."""
        out = np.zeros(self.n, np.uint8)
        for level, i in self.blocks:
            a, b = self._span(level, i)
            out[a:b] = 1
        return out

    def add(self, shard: int, sums: dict[str, np.ndarray], counts: dict[str, int]) -> None:
        if not 0 <= shard < self.n:
            raise ValueError(f"shard {shard} is outside [0, {self.n})")
        if self.covered()[shard]:
            return  # already included (a retried task): adding twice would count it twice
        node = (0, shard)
        value = ({k: np.asarray(v, np.float64) for k, v in sums.items()}, dict(counts))
        while node[0] < self.top:
            level, i = node
            sib = (level, i ^ 1)
            empty = self._span(*sib)[0] >= self.n  # the sibling covers no shard
            if not empty and sib not in self.blocks:
                break
            left, right = (
                (value, self.blocks.pop(sib, None)) if i % 2 == 0 else (self.blocks.pop(sib), value)
            )
            value = _combine(left, right)
            node = (level + 1, i // 2)
        self.blocks[node] = value

    @property
    def complete(self) -> bool:
        return (self.top, 0) in self.blocks or (self.n == 1 and (0, 0) in self.blocks)

    def total(self) -> tuple[dict[str, np.ndarray], dict[str, int]]:
        """(sums, counts) over every shard; only once :attr:`complete`."""
        if not self.complete:
            raise ValueError(f"{int(self.covered().sum())} of {self.n} shards are in the sum")
        return self.blocks[(self.top, 0)]

    # ---------------------------------------------------------------- checkpoint
    def to_bytes(self) -> bytes:
        arrays: dict[str, Any] = {"n": np.array([self.n])}
        for j, ((level, i), (sums, counts)) in enumerate(sorted(self.blocks.items())):
            arrays[f"b{j}_at"] = np.array([level, i])
            for name in sums:
                arrays[f"b{j}_sum_{name}"] = sums[name]
                arrays[f"b{j}_count_{name}"] = np.array([counts.get(name, 0)])
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, blob: bytes, n_shards: int) -> MomentTree:
        """A tree restored from :meth:`to_bytes` (an empty one if it was for another plan)."""
        tree = cls(n_shards)
        z = np.load(io.BytesIO(blob))
        if int(z["n"][0]) != n_shards:
            return tree
        j = 0
        while f"b{j}_at" in z:
            level, i = (int(v) for v in z[f"b{j}_at"])
            sums = {k[len(f"b{j}_sum_") :]: z[k] for k in z.files if k.startswith(f"b{j}_sum_")}
            counts = {name: int(z[f"b{j}_count_{name}"][0]) for name in sums}
            tree.blocks[(level, i)] = (sums, counts)
            j += 1
        return tree


def partial_to_bytes(sums: dict[str, np.ndarray], counts: dict[str, int]) -> bytes:
    """One shard's partial sums (what its task persists beside its marker)."""
    arrays: dict[str, Any] = {f"sum_{k}": v for k, v in sums.items()}
    arrays |= {f"count_{k}": np.array([counts.get(k, 0)]) for k in sums}
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def partial_from_bytes(blob: bytes) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    z = np.load(io.BytesIO(blob))
    sums = {k[4:]: z[k] for k in z.files if k.startswith("sum_")}
    return sums, {name: int(z[f"count_{name}"][0]) for name in sums}


def _combine(
    left: tuple[dict[str, np.ndarray], dict[str, int]],
    right: tuple[dict[str, np.ndarray], dict[str, int]] | None,
) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """left + right, key by key over the keys either side has: a part one side lacks (a shard
    whose rows all failed, or whose sampled rows did: the spectrum's every 8th) is zero with
    count 0, so the other side's value is taken as it is (x + 0 is x, to the bit)."""
    if right is None:
        return left
    sums: dict[str, np.ndarray] = {}
    for k in sorted(left[0].keys() | right[0].keys()):
        if k in left[0] and k in right[0]:
            sums[k] = left[0][k] + right[0][k]
        else:
            sums[k] = left[0][k] if k in left[0] else right[0][k]
    counts = {
        k: left[1].get(k, 0) + right[1].get(k, 0) for k in sorted(left[1].keys() | right[1].keys())
    }
    return sums, counts
