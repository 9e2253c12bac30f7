"""The exact cosine kNN graph against a loop over every pair, and the neighbour rules."""

from __future__ import annotations

import numpy as np

from atlas_core.compare import exact_knn, preservation, valid_neighbours


def _brute_knn(x: np.ndarray, k: int, rows: np.ndarray) -> list[list[int]]:
    out = []
    for i in range(len(x)):
        if not rows[i] or np.isnan(x[i]).any():
            out.append([-1] * k)
            continue
        sims = []
        for j in range(len(x)):
            if j != i and rows[j] and not np.isnan(x[j]).any():
                cos = float(x[i] @ x[j]) / (np.linalg.norm(x[i]) * np.linalg.norm(x[j]))
                sims.append((-cos, j))
        found = [j for _, j in sorted(sims)[:k]]
        out.append(found + [-1] * (k - len(found)))
    return out


def test_exact_knn_matches_a_loop_over_every_pair() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(150, 12)).astype(np.float32)
    x[[3, 40, 77]] = np.nan
    rows = rng.random(150) > 0.1
    got = exact_knn(x, 7, rows=rows, block=16)
    assert got.tolist() == _brute_knn(x, 7, rows & ~np.isnan(x).any(1))
    # float16 activations, the store's dtype, give the same graph as their float32 values
    h = x.astype(np.float16)
    assert exact_knn(h, 7).tolist() == _brute_knn(h.astype(np.float32), 7, np.ones(150, bool))


def test_exact_knn_never_lists_a_row_as_its_own_neighbour() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 5))
    x[10:16] = x[10]  # six identical rows: ties with the row itself
    got = exact_knn(x, 4)
    assert not (got == np.arange(40)[:, None]).any()
    for i in range(10, 16):
        assert set(got[i]) <= set(range(10, 16)) - {i} and len(set(got[i])) == 4
    few = exact_knn(x[:3], 5)  # fewer rows than k: padded with -1
    assert (few[:, 2:] == -1).all() and (few[:, :2] >= 0).all()


def test_valid_neighbours_and_preservation_follow_the_definition() -> None:
    kept = np.array([True, True, False, True, True, True])
    rows = np.array([0, 2, 4])
    knn_a = np.array([[1, 0, 2, 3], [0, 1, 3, 4], [5, 5, -1, 3]])
    knn_b = np.array([[3, 5, 1, 1], [0, 1, 3, 4], [0, 1, 2, -1]])
    va = valid_neighbours(knn_a, rows, kept)
    # row 0: itself and the hole 2 dropped; row 4: the repeat of 5 and the pad dropped
    assert va.tolist() == [[-1, -1, 1, 3], [0, 1, 3, 4], [-1, -1, 3, 5]]
    p = preservation(knn_a, knn_b, rows, kept)
    assert p[0] == 1.0 and np.isnan(p[1]) and p[2] == 0.0  # row 2 itself is a hole
