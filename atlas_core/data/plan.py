"""Sharding plan: which task writes which rows, aligned so no two tasks share a storage object.

zarr-python does read-modify-write on whole chunks (whole shards with the sharding codec) and has
no locking, so a plan is valid only when every task's row range starts and ends on a storage
object boundary (the last range may end at the array's end). :func:`plan_shards` builds such a
plan and :meth:`ShardPlan.validate` rejects any other, as xarray's ``safe_chunks`` does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from atlas_core.errors import PlanError


@dataclass(frozen=True)
class ShardPlan:
    """Row ranges over images: ``bounds[i] = (start, stop)`` of task i, in image rows.

    chunk_images: images per storage object of the per-image arrays (the per-sample arrays hold
    ``k`` rows per image, so their storage objects hold ``chunk_images * k`` rows).
    """

    n_images: int
    chunk_images: int
    bounds: tuple[tuple[int, int], ...]

    def __len__(self) -> int:
        return len(self.bounds)

    def validate(self) -> None:
        """Raise PlanError unless the ranges tile [0, n_images) on storage-object boundaries."""
        expect = 0
        for i, (start, stop) in enumerate(self.bounds):
            if start != expect or stop <= start:
                raise PlanError(
                    f"shard {i} covers [{start}, {stop}); expected to start at {expect}"
                )
            if start % self.chunk_images or (stop % self.chunk_images and stop != self.n_images):
                raise PlanError(
                    f"shard {i} covers images [{start}, {stop}), which is not aligned to storage "
                    f"objects of {self.chunk_images} images: two tasks would rewrite the same "
                    "object. Make shard sizes a multiple of the chunk size."
                )
            expect = stop
        if expect != self.n_images:
            raise PlanError(f"the shards cover {expect} of {self.n_images} images")


def plan_shards(n_images: int, *, chunk_images: int, chunks_per_shard: int = 1) -> ShardPlan:
    """Split ``n_images`` rows into tasks of ``chunks_per_shard`` whole chunks each."""
    if chunk_images <= 0 or chunks_per_shard <= 0:
        raise PlanError("chunk_images and chunks_per_shard must be positive")
    step = chunk_images * chunks_per_shard
    bounds = tuple((s, min(s + step, n_images)) for s in range(0, n_images, step))
    plan = ShardPlan(n_images=n_images, chunk_images=chunk_images, bounds=bounds)
    plan.validate()
    return plan


def duplicate_rows(
    hashes: np.ndarray, crops: np.ndarray, ok: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Rows whose bytes and crop repeat an earlier usable row: (rows, the first row of each).

    hashes: (N,) uint64 content hashes; crops: (N, 4) boxes; ok: (N,) bool rows that decoded.
    Crops of one file are distinct inputs; the same file listed twice (or copied) is not.
    """
    idx = np.flatnonzero(ok)
    if not len(idx):
        return idx, idx
    key = np.concatenate([hashes[idx, None].view(np.int64), crops[idx].astype(np.int64)], axis=1)
    _, first, inverse = np.unique(key, axis=0, return_index=True, return_inverse=True)
    inverse = inverse.ravel()
    dup = idx[first[inverse] != np.arange(len(idx))]
    return dup, idx[first[inverse]][first[inverse] != np.arange(len(idx))]
