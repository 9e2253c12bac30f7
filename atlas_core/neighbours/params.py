"""The index's settings: one frozen value, validated on construction, recorded with the index."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from atlas_core.errors import ConfigError

VECTOR_DTYPES = ("float16", "float32")


@dataclass(frozen=True)
class NeighbourParams:
    """How a layer's neighbour index is built and searched.

    lists: number of inverted lists (spherical k-means cells); 0 (default) picks 1 (exact search)
        below ``exact_rows`` present rows, else the power of two nearest 2 sqrt(n) (2048 at 1M).
    probe: lists a query scans (its ``probe`` nearest centroids); default 16.
    graph_probe: lists ``knn_graph`` scans for the rows of one list (the lists nearest to that
        list's centroid, itself included); default 24.
    exact_rows: below this many present rows the index holds one list and answers exactly
        (default 50,000: exact search of 50k x 112 is a few ms a query).
    train_per_list: k-means trains on ``train_per_list * lists`` rows drawn with ``seed``
        (default 64).
    iters: k-means iterations (default 10).
    seed: the seed of the training sample and of the initial centroids (default 0).
    vector_dtype: how the index holds the vectors, ``float16`` (default: the store's default, so
        the cosines are computed exactly on the stored values) or ``float32`` (for float32 stores).
    """

    lists: int = 0
    probe: int = 16
    graph_probe: int = 24
    exact_rows: int = 50_000
    train_per_list: int = 64
    iters: int = 10
    seed: int = 0
    vector_dtype: str = "float16"

    def __post_init__(self) -> None:
        for name in ("lists", "exact_rows", "seed"):
            if getattr(self, name) < 0:
                raise ConfigError(name, getattr(self, name), valid=">= 0", fix="use 0 or more.")
        for name in ("probe", "graph_probe", "train_per_list", "iters"):
            if getattr(self, name) < 1:
                raise ConfigError(name, getattr(self, name), valid=">= 1", fix="use 1 or more.")
        if self.vector_dtype not in VECTOR_DTYPES:
            raise ConfigError(
                "vector_dtype",
                self.vector_dtype,
                choices=VECTOR_DTYPES,
                fix="use the dtype of the store's activations (float16 by default).",
            )

    def lists_for(self, n: int) -> int:
        """Lists for ``n`` present rows (at least 1, at most n)."""
        if self.lists:
            return max(1, min(self.lists, n))
        if n < self.exact_rows:
            return 1
        return max(1, min(n, 2 ** round(math.log2(2 * math.sqrt(n)))))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
