from __future__ import annotations

import numpy as np

from atlas_core.grid import cell_index, finalize, merge, partial_sums, top_classes_per_cell


def _brute(xy, acts, labels, size, min_count, top):
    cells = {}
    for p, a, lab in zip(xy, acts, labels, strict=False):
        if np.isnan(p).any():
            continue
        ix = min(int(p[0] * size), size - 1)
        iy = min(int(p[1] * size), size - 1)
        cells.setdefault((ix, iy), []).append((a, lab))
    out = {}
    for key, rows in cells.items():
        if len(rows) >= min_count:
            labs = [lab for _, lab in rows if lab >= 0]
            vals, cnt = np.unique(labs, return_counts=True)
            order = sorted(zip(-cnt, vals, strict=False))[:top]
            out[key] = (
                np.mean([a for a, _ in rows], axis=0),
                len(rows),
                [int(v) for _, v in order],
                [int(-c) for c, _ in order],
            )
    return out


def test_binning_equals_a_brute_force_loop() -> None:
    rng = np.random.default_rng(1)
    n, size = 5000, 7
    xy = rng.random((n, 2))
    xy[:5] = np.nan
    xy[5] = [1.0, 1.0]  # exactly 1 falls in the last cell
    acts = rng.normal(size=(n, 6))
    labels = rng.integers(-1, 4, n)
    cells = cell_index(xy, size)
    halves = [
        partial_sums(cells[:2000], acts[:2000], size),
        partial_sums(cells[2000:], acts[2000:], size),
    ]
    kept, mean, count = finalize(merge(halves), min_count=95)
    tc, tn = top_classes_per_cell(cells, labels, kept, top=3)
    ref = _brute(xy, acts, labels, size, 95, 3)
    got = {(int(k % size), int(k // size)): i for i, k in enumerate(kept)}
    assert set(got) == set(ref) and 0 < len(ref) < size * size
    for key, i in got.items():
        m, c, cls, cnt = ref[key]
        assert count[i] == c and np.allclose(mean[i], m, atol=1e-5)
        assert tn[i, : len(cnt)].tolist() == cnt
        assert sorted(zip(tn[i], tc[i], strict=False)) == sorted(
            zip(cnt, cls, strict=False)
        )  # ties in any order
    assert cell_index(xy[5:6], size).tolist() == [size * size - 1]


def test_attribution_labels_equal_a_brute_force_mean() -> None:
    from atlas_core.grid import attribution_per_cell

    rng = np.random.default_rng(2)
    n, n_classes = 400, 6
    cells = rng.integers(-1, 5, n)
    classes = np.stack([rng.permutation(n_classes)[:3] for _ in range(n)])
    values = rng.normal(size=(n, 3))
    values[:7] = np.nan
    kept = np.array([0, 2, 4])
    top_c, top_v = attribution_per_cell(cells, kept, classes, values, n_classes, top=2)
    for i, cell in enumerate(kept):
        rows = np.flatnonzero((cells == cell) & ~np.isnan(values).any(1))
        mean = np.zeros(n_classes)
        for r in rows:
            mean[classes[r]] += values[r]
        mean /= len(rows)
        assert top_c[i].tolist() == np.argsort(-mean, kind="stable")[:2].tolist()
        assert np.allclose(top_v[i], np.sort(mean)[::-1][:2], atol=1e-6)


def test_sparse_partials_added_in_any_order_equal_the_dense_sums() -> None:
    from atlas_core.grid import add_sparse, empty_sums, sparse_partial_sums

    rng = np.random.default_rng(3)
    n, size = 3000, 40  # a fine grid: most cells of a range are empty or hold one row
    xy = rng.random((n, 2))
    xy[::97] = np.nan
    acts = rng.normal(size=(n, 5))
    cells = cell_index(xy, size)
    dense = partial_sums(cells, acts, size)
    parts = [
        sparse_partial_sums(cells[a : a + 700], acts[a : a + 700], size)
        for a in (0, 700, 1400, 2100, 2800)
    ]
    assert all(len(p.cells) <= 700 and np.all(np.diff(p.cells) > 0) for p in parts)
    total = empty_sums(size, 5)
    for p in reversed(parts):
        add_sparse(total, p)
    assert np.array_equal(total.counts, dense.counts) and total.counts.sum() == n - len(xy[::97])
    np.testing.assert_allclose(total.sums, dense.sums, rtol=1e-12, atol=1e-12)
    empty = sparse_partial_sums(np.full(4, -1), acts[:4], size)
    assert len(empty.cells) == 0 and empty.sums.shape == (0, 5)
