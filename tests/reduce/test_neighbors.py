"""Exact neighbour search against brute force, and UMAP's placement against umap-learn's own."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import pairwise_distances

from atlas_core.reduce import (
    Landmarks,
    NeighborIndex,
    UmapParams,
    fit,
    membership_weights,
    place,
    trustworthiness,
)


@pytest.mark.parametrize("metric", ["cosine", "correlation", "euclidean", "manhattan"])
def test_exact_search_equals_brute_force(metric: str) -> None:
    rng = np.random.default_rng(0)
    ref = np.abs(rng.normal(size=(300, 12))).astype(np.float32)
    q = np.abs(rng.normal(size=(70, 12))).astype(np.float32)
    # a small block forces several blocks per query set
    idx, dist = NeighborIndex.build(ref, metric).query(q, 7, device="cpu", block=16)
    d = pairwise_distances(q.astype(np.float64), ref.astype(np.float64), metric=metric)
    want = np.argsort(d, axis=1, kind="stable")[:, :7]
    assert idx.shape == dist.shape == (70, 7)
    np.testing.assert_allclose(dist, np.take_along_axis(d, want, 1), rtol=1e-4, atol=1e-4)
    # the same sets of neighbours (ties are measure-zero with random data)
    assert all(set(a) == set(b) for a, b in zip(idx, want, strict=True))
    assert np.all(np.diff(dist, axis=1) >= -1e-6)  # nearest first


def test_a_query_equal_to_a_reference_row_finds_it_at_distance_zero() -> None:
    ref = np.random.default_rng(1).normal(size=(50, 5)).astype(np.float32)
    idx, dist = NeighborIndex.build(ref, "euclidean").query(ref[[3, 17]], 3, device="cpu")
    assert list(idx[:, 0]) == [3, 17] and np.allclose(dist[:, 0], 0, atol=1e-3)


def test_membership_weights_equal_umap_learns_transform_weights() -> None:
    from umap.umap_ import smooth_knn_dist

    rng = np.random.default_rng(2)
    dist = np.sort(rng.gamma(2.0, 1.0, size=(40, 10)), axis=1).astype(np.float32)
    # umap-learn's transform: local_connectivity - 1 = 0, so rho = 0
    sigma, rho = smooth_knn_dist(dist, k=10.0, local_connectivity=0.0)
    assert np.all(rho == 0)
    ref = np.exp(-dist / sigma[:, None])
    ref /= ref.sum(1, keepdims=True)
    got = membership_weights(dist)
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(got.sum(1), 1.0, rtol=1e-6)


def test_place_equals_umap_learns_transform_initialisation() -> None:
    from umap.umap_ import init_transform, smooth_knn_dist

    rng = np.random.default_rng(3)
    emb = rng.normal(size=(30, 2)).astype(np.float32)
    idx = rng.integers(0, 30, size=(12, 6))
    dist = np.sort(rng.gamma(2.0, 1.0, size=(12, 6)), axis=1).astype(np.float32)
    sigma, _ = smooth_knn_dist(dist, k=6.0, local_connectivity=0.0)
    w = np.exp(-dist / sigma[:, None])
    w = (w / w.sum(1, keepdims=True)).astype(np.float32)  # transform l1-normalizes the graph rows
    ref = init_transform(idx, w, emb)
    np.testing.assert_allclose(place(idx, dist, emb), ref, rtol=1e-3, atol=1e-4)


def _blobs(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = np.abs(rng.normal(size=(6, 16))) * 3
    return np.abs(centres[rng.integers(0, 6, n)] + rng.normal(size=(n, 16))).astype(np.float32)


def test_exact_knn_graph_fit_is_as_trustworthy_as_nn_descent_and_reproducible() -> None:
    x = _blobs(1500)
    params = UmapParams(n_neighbors=15, seed=0, init="pca", n_epochs=100)
    _, exact = fit(x, params, "umap-learn", knn="exact")
    _, again = fit(x, params, "umap-learn", knn="exact")
    _, approx = fit(x, params, "umap-learn", knn="nndescent")
    t_exact = trustworthiness(x, exact, sample=1500)
    t_approx = trustworthiness(x, approx, sample=1500)
    assert np.array_equal(exact, again)
    assert t_exact > 0.9 and t_exact >= t_approx - 0.01


def test_landmarks_with_pca_search_in_the_projected_space() -> None:
    x = _blobs(400)
    lm = Landmarks.build(x, "cosine", pca_dim=4, seed=0, n_place=5)
    assert lm.index.ref.shape == (400, 4)
    idx, dist = lm.neighbors(x[:10], device="cpu")
    assert idx.shape == (10, 5) and list(idx[:, 0]) == list(range(10))
    assert np.allclose(dist[:, 0], 0, atol=1e-5)  # each row finds itself first
