"""The diff's streamed kNN graph: block by block against the whole-matrix search and a loop over
every pair, whatever the blocking; the driver refuses a graph that breaks the contract."""

from __future__ import annotations

import numpy as np
import pytest

from atlas_core.compare import exact_knn
from atlas_core.compare.knn import blocked_knn
from atlas_core.compare.runs import _write_graph
from tests.compare.test_neighbours import _brute_knn


def _graph(x: np.ndarray, kept: np.ndarray, k: int, block: int) -> np.ndarray:
    blocks = list(blocked_knn(lambda a, b: x[a:b], kept, k, block_rows=block))
    assert [r for r, _ in blocks] == list(range(0, len(x), block))  # in order, one per block
    return np.concatenate([ids for _, ids in blocks])


@pytest.mark.parametrize("block", [1, 7, 64, 500])
def test_blocked_graph_equals_the_whole_search_and_the_loop(block) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(130, 9)).astype(np.float32)
    x[[4, 50]] = np.nan  # holes
    kept = rng.random(130) > 0.15
    got = _graph(x, kept, 5, block)
    assert got.tolist() == _brute_knn(x, 5, kept & ~np.isnan(x).any(1))
    assert np.array_equal(got, exact_knn(x, 5, rows=kept))


def test_duplicates_and_few_rows() -> None:
    x = np.random.default_rng(1).normal(size=(30, 4))
    x[5:9] = x[5]  # four equal rows: each finds the three others, never itself
    got = _graph(x, np.ones(30, bool), 3, 4)
    for i in range(5, 9):
        assert sorted(got[i].tolist()) == sorted(set(range(5, 9)) - {i})
    few = _graph(x[:3], np.ones(3, bool), 4, 2)  # fewer rows than k: -1 padded
    assert (few[:, 2:] == -1).all() and (few[:, :2] >= 0).all()


class _Rows:
    def __init__(self) -> None:
        self.written: list[tuple[str, int, int]] = []

    def write(self, name: str, row0: int, ids: np.ndarray) -> None:
        self.written.append((name, row0, len(ids)))


class _Store:
    def __init__(self) -> None:
        self.rows = _Rows()


def test_the_driver_refuses_a_graph_out_of_order_or_of_another_store() -> None:
    good = [(0, np.zeros((4, 2), np.int64)), (4, np.ones((2, 2), np.int64))]
    store = _Store()
    _write_graph(store, iter(good), "a", 2, 6)  # type: ignore[arg-type]
    assert store.rows.written == [("knn_a", 0, 4), ("knn_a", 4, 2)]
    cases = [
        ([(4, np.zeros((2, 2)))], "expected rows 0"),
        ([(0, np.zeros((6, 3)))], "with 2 columns"),
        ([(0, np.full((6, 2), 6))], r"in \[-1, 6\)"),
        ([(0, np.zeros((4, 2)))], "covered 4 of 6 rows"),
    ]
    for blocks, message in cases:
        with pytest.raises(ValueError, match=message):
            _write_graph(_Store(), iter(blocks), "a", 2, 6)  # type: ignore[arg-type]
