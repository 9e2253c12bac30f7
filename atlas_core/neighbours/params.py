"""The index's settings: one frozen value, validated on construction, recorded with the index."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from atlas_core.config import Group

VECTOR_DTYPES = ("float16", "float32")


@dataclass(frozen=True)
class NeighbourParams(Group):
    """How a layer's neighbour index is built and searched: inverted lists (spherical k-means
    cells) with exact cosines inside; one list (exact search) for small runs."""

    # inverted lists; 0: one (exact) below exact_rows present rows, else the power of two
    # nearest 2 sqrt(n) (2048 at 1M)
    lists: int = 0
    probe: int = 16  # lists a query scans (its nearest centroids)
    graph_probe: int = 24  # lists scanned for the rows of one list when every row's kNN is built
    exact_rows: int = 50_000  # below this many present rows the index answers exactly
    train_per_list: int = 64  # k-means trains on train_per_list * lists rows drawn with seed
    iters: int = 10  # k-means iterations
    seed: int = 0  # the training sample's and the initial centroids' seed
    # float16 (the store's default: cosines exactly on the stored values) | float32
    vector_dtype: str = "float16"

    def __post_init__(self) -> None:
        self._ranges({"lists": (0, None), "exact_rows": (0, None)})
        if isinstance(self.seed, int):  # (the pipeline's default is the run's seed, "${seed}")
            self._ranges({"seed": (0, None)})
        self._ranges(
            {
                "probe": (1, None),
                "graph_probe": (1, None),
                "train_per_list": (1, None),
                "iters": (1, None),
            }
        )
        self._choice("vector_dtype", VECTOR_DTYPES)

    def lists_for(self, n: int) -> int:
        """Lists for ``n`` present rows (at least 1, at most n)."""
        if self.lists:
            return max(1, min(self.lists, n))
        if n < self.exact_rows:
            return 1
        return max(1, min(n, 2 ** round(math.log2(2 * math.sqrt(n)))))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
