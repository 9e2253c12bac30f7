"""The neighbour index against brute-force cosine search (atlas_core.neighbours.exact_knn, which
is itself checked against a direct computation here)."""

from __future__ import annotations

import numpy as np
import pytest

from atlas_core.errors import ConfigError, StoreError
from atlas_core.neighbours import NeighbourIndex, NeighbourParams, exact_knn

HOLES = [3, 250, 251, 1199]


def clustered(n: int, dim: int, *, seed: int = 0, clusters: int = 12) -> np.ndarray:
    """Signed anisotropic Gaussian clusters, rounded through float16 as the store holds them,
    with NaN rows (holes) at HOLES."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)) * 2.0
    scales = np.arange(1, dim + 1) ** -0.5
    label = rng.integers(0, clusters, n)
    x = centres[label] + rng.normal(size=(n, dim)) * scales
    x = x.astype(np.float16).astype(np.float32)
    x[[h for h in HOLES if h < n]] = np.nan
    return x


def blocks(x: np.ndarray, size: int = 333):
    return [(a, x[a : a + size]) for a in range(0, len(x), size)]


def assert_exact(
    x: np.ndarray, q: np.ndarray, rows: np.ndarray, cos: np.ndarray, ref: tuple[np.ndarray, ...]
) -> None:
    """Same neighbours as the reference ``ref`` (rows, cosines), up to float32 rounding: where
    the rows differ, the two candidates' exact cosines are within 1e-5 (a tie at that precision)."""
    ref_rows, ref_cos = ref
    np.testing.assert_allclose(cos, ref_cos, rtol=0, atol=2e-6)
    v = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float64)
    u = q / np.linalg.norm(q, axis=1, keepdims=True)
    mine = np.einsum("qc,qkc->qk", u, v[rows])
    assert ((rows == ref_rows) | (np.abs(mine - ref_cos) < 1e-5)).all()
    assert (rows != ref_rows).mean() < 0.01


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return sum(len(np.intersect1d(f, t)) for f, t in zip(found, truth, strict=True)) / truth.size


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    return clustered(1200, 24)


@pytest.fixture(scope="module")
def present(data: np.ndarray) -> np.ndarray:
    return np.flatnonzero(np.isfinite(data).all(1))


IVF = NeighbourParams(lists=16, probe=5, graph_probe=6, seed=5)


def test_reference_is_brute_force(data: np.ndarray, present: np.ndarray) -> None:
    q = present[:40]
    rows, cos = exact_knn(data, data[q], 5, exclude=q)
    v = np.nan_to_num(data / np.linalg.norm(data, axis=1, keepdims=True), nan=-9.0)
    for i, r in enumerate(q):
        c = [(-(v[r] @ v[j]), j) for j in present if j != r]
        best = sorted(c)[:5]
        assert rows[i].tolist() == [j for _, j in best]
        np.testing.assert_allclose(cos[i], [-s for s, _ in best], rtol=0, atol=1e-6)


def test_exact_path_equals_brute_force(data: np.ndarray, present: np.ndarray) -> None:
    index = NeighbourIndex.build(blocks(data), NeighbourParams())
    assert index.lists == 1  # small runs are exact
    q = present[::3]
    rows, cos = index.search(data[q], 10, exclude=q)
    assert_exact(data, data[q], rows, cos, exact_knn(data, data[q], 10, exclude=q))
    graph, graph_cos = index.knn_graph(10)
    ref = exact_knn(data, data[present], 10, exclude=present)
    assert_exact(data, data[present], graph[present], graph_cos[present], ref)


def test_ivf_recall_on_clustered_data(data: np.ndarray, present: np.ndarray) -> None:
    index = NeighbourIndex.build(blocks(data), IVF, threads=2)
    assert index.lists == 16
    truth, _ = exact_knn(data, data[present], 10, exclude=present)
    rows, _ = index.search(data[present], 10, exclude=present)
    assert recall(rows, truth) >= 0.95
    graph, graph_cos = index.knn_graph(10, threads=2)
    assert recall(graph[present], truth) >= 0.95
    # every cosine returned is the exact cosine of that pair (re-ranked on the stored vectors)
    v = data / np.linalg.norm(data, axis=1, keepdims=True)
    direct = np.einsum("qc,qkc->qk", v[present], v[graph[present]])
    np.testing.assert_allclose(graph_cos[present], direct, rtol=0, atol=2e-6)
    assert (np.diff(graph_cos[present], axis=1) <= 0).all()  # best first


@pytest.mark.parametrize("params", [NeighbourParams(), IVF], ids=["exact", "ivf"])
def test_holes_never_returned_and_self_excluded(data: np.ndarray, params: NeighbourParams) -> None:
    index = NeighbourIndex.build(blocks(data), params)
    assert index.n_rows == len(data) and len(index.rows) == len(data) - len(HOLES)
    graph, cos = index.knn_graph(10)
    assert not np.isin(graph, HOLES).any()
    assert (graph[HOLES] == -1).all() and np.isnan(cos[HOLES]).all()
    assert not (graph == np.arange(len(data))[:, None]).any()
    rows, _ = index.search(data[~np.isnan(data).any(1)][:50], 10)
    assert not np.isin(rows, HOLES).any()


def test_few_rows_pad_and_all_holes() -> None:
    x = clustered(5, 8)
    x[[1, 3]] = np.nan
    index = NeighbourIndex.build(blocks(x, 2))
    graph, cos = index.knn_graph(3)
    assert graph[0].tolist()[2] == -1 and np.isnan(cos[0, 2])
    assert sorted(graph[0, :2].tolist()) == [2, 4]
    empty = NeighbourIndex.build([(0, np.full((4, 8), np.nan, np.float32))])
    rows, _ = empty.search(np.ones(8, np.float32), 2)
    assert (rows == -1).all()


@pytest.mark.parametrize("params", [NeighbourParams(), IVF], ids=["exact", "ivf"])
def test_bytes_round_trip(data: np.ndarray, present: np.ndarray, params: NeighbourParams) -> None:
    index = NeighbourIndex.build(blocks(data), params)
    blob = index.to_bytes()
    assert len(blob) < data.size * 2 / 4  # the vectors stay in the store
    loaded = NeighbourIndex.from_bytes(np.frombuffer(blob, np.uint8), blocks(data, 500))
    full = NeighbourIndex.from_bytes(index.to_bytes(with_vectors=True))
    for other in (loaded, full):
        for a, b in zip(index.knn_graph(10), other.knn_graph(10), strict=True):
            np.testing.assert_array_equal(a, b)
        q = data[present[:30]]
        for a, b in zip(index.search(q, 7), other.search(q, 7), strict=True):
            np.testing.assert_array_equal(a, b)
    assert loaded.to_bytes() == blob


def test_loading_refuses_other_vectors_and_versions(data: np.ndarray) -> None:
    blob = NeighbourIndex.build(blocks(data), IVF).to_bytes()
    changed = data.copy()
    changed[10, 0] += 1.0
    with pytest.raises(StoreError, match="rebuild"):
        NeighbourIndex.from_bytes(blob, blocks(changed))
    with pytest.raises(ConfigError, match="blocks"):
        NeighbourIndex.from_bytes(blob)
    with pytest.raises(StoreError, match="version"):
        NeighbourIndex.from_bytes(blob.replace(b'"format_version": 1', b'"format_version": 9'))


def test_same_seed_same_bytes_any_threads(data: np.ndarray, present: np.ndarray) -> None:
    one = NeighbourIndex.build(blocks(data), IVF, threads=1)
    two = NeighbourIndex.build(blocks(data, 128), IVF, threads=2)
    assert one.to_bytes() == two.to_bytes()
    for a, b in zip(one.knn_graph(10, threads=1), two.knn_graph(10, threads=2), strict=True):
        np.testing.assert_array_equal(a, b)
    q = data[present[:64]]
    for a, b in zip(one.search(q, 10, threads=1), two.search(q, 10, threads=2), strict=True):
        np.testing.assert_array_equal(a, b)
    reseeded = NeighbourParams(lists=16, probe=5, graph_probe=6, seed=6)
    other = NeighbourIndex.build(blocks(data), reseeded)
    assert other.to_bytes() != one.to_bytes()


@pytest.mark.parametrize("params", [NeighbourParams(), IVF], ids=["exact", "ivf"])
def test_mean_direction_queries(data: np.ndarray, params: NeighbourParams) -> None:
    """A cell's mean (here: the mean of a cluster's rows) finds the rows nearest to it."""
    index = NeighbourIndex.build(blocks(data), params)
    v = data[np.isfinite(data).all(1)]
    means = np.stack([v[i : i + 40].mean(0) for i in range(0, 400, 40)])
    rows, cos = index.search(means, 10)
    truth, truth_cos = exact_knn(data, means, 10)
    assert recall(rows, truth) >= 0.95
    assert (cos[:, 0] >= truth_cos[:, 0] - 1e-6).all() and (cos[:, 0] > 0.5).all()


def test_ties_go_to_the_lower_row() -> None:
    x = clustered(300, 8)
    x[[40, 7, 250]] = x[100]  # three copies of row 100
    index = NeighbourIndex.build(blocks(x), NeighbourParams(lists=4, probe=4, graph_probe=4))
    rows, cos = index.search(x[100], 3, exclude=np.array([100]))
    assert rows[0].tolist() == [7, 40, 250] and np.allclose(cos, 1.0)
    graph, _ = index.knn_graph(3)
    assert graph[250].tolist() == [7, 40, 100]


def test_bad_input_names_the_value() -> None:
    index = NeighbourIndex.build(blocks(clustered(100, 8)))
    with pytest.raises(ConfigError, match=r"queries.*\(q, 8\)"):
        index.search(np.ones((2, 5), np.float32), 3)
    with pytest.raises(ConfigError, match="NaN"):
        index.search(np.full(8, np.nan, np.float32), 3)
    with pytest.raises(ConfigError, match="ascending"):
        NeighbourIndex.build([(10, np.ones((5, 8))), (0, np.ones((5, 8)))])
    with pytest.raises(ConfigError, match="vector_dtype"):
        NeighbourParams(vector_dtype="int8")
