"""Sample fit plus transform against a full fit; quality figures against brute force."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from atlas_core.data import InputManifest, plan_shards
from atlas_core.reduce import UmapParams, fit, joint_features, knn_recall, trustworthiness
from atlas_core.store import RunStore
from atlas_core.store.run_store import StoreLayout

log = logging.getLogger(__name__)


def _mixture(n: int, dim: int = 24, k: int = 8, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, dim)) * 2.5
    return (centres[rng.integers(0, k, n)] + rng.normal(size=(n, dim))).astype(np.float32)


def test_sample_fit_and_transform_stays_within_002_of_a_full_fit() -> None:
    x = _mixture(3000)
    params = UmapParams(n_neighbors=15, metric="euclidean", seed=0, init="pca")
    _, full = fit(x, params, "umap-learn")
    idx = np.sort(np.random.default_rng(1).choice(len(x), 1000, replace=False))
    reducer, _ = fit(x[idx], params, "umap-learn")
    sampled = np.concatenate([reducer.transform(x[:1500]), reducer.transform(x[1500:])])
    tw_full = trustworthiness(x, full, metric="euclidean", sample=3000)
    tw_ours = trustworthiness(x, sampled, metric="euclidean", sample=3000)
    log.info("trustworthiness full %.4f, sample fit + transform %.4f", tw_full, tw_ours)
    assert tw_full > 0.9 and tw_ours >= tw_full - 0.02


def test_pca_reducer_projects_before_umap() -> None:
    x = _mixture(800, dim=40)
    reducer, emb = fit(x, UmapParams(n_neighbors=10, n_epochs=50, init="pca"), pca_dim=8)
    assert reducer.pca_components is not None and reducer.pca_components.shape == (8, 40)
    assert emb.shape == (800, 2) and reducer.transform(x[:5]).shape == (5, 2)


def test_knn_recall_against_brute_force() -> None:
    rng = np.random.default_rng(0)
    low = rng.normal(size=(300, 2))
    high = np.concatenate([low, rng.normal(size=(300, 3)) * 0.2], axis=1)
    got = knn_recall(high, low, k=5, metric="euclidean", sample=300)
    dh = np.linalg.norm(high[:, None] - high[None], axis=-1)
    dl = np.linalg.norm(low[:, None] - low[None], axis=-1)
    np.fill_diagonal(dh, np.inf)
    np.fill_diagonal(dl, np.inf)
    a, b = np.argsort(dh, 1)[:, :5], np.argsort(dl, 1)[:, :5]
    ref = np.mean([len(set(a[i]) & set(b[i])) / 5 for i in range(300)])
    assert abs(got - ref) < 1e-9
    assert knn_recall(high, high[:, :2] * 0, k=5, metric="euclidean") < 0.2 < got
    assert knn_recall(high, high, k=5, metric="euclidean") == 1.0


def test_joint_features_average_the_per_layer_cosines() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 7)), rng.normal(size=(2, 3))
    j = joint_features([a, b])

    def cos(u, v):
        return float(u @ v / np.linalg.norm(u) / np.linalg.norm(v))

    assert np.isclose(cos(j[0], j[1]), (cos(a[0], a[1]) + cos(b[0], b[1])) / 2, atol=1e-6)
    assert np.allclose(np.linalg.norm(j, axis=1), 1.0, atol=1e-6)


def test_gather_reads_chunk_by_chunk_and_equals_slicing(tmp_path: Path) -> None:
    n = 50
    man = InputManifest(
        uris=np.array([str(i) for i in range(n)], dtype=object), crops=np.full((n, 4), -1, np.int32)
    )
    st = RunStore.create(
        str(tmp_path / "a.zarr"),
        man,
        plan_shards(n, chunk_images=8),
        np.zeros((n, 2), np.int16),
        StoreLayout(k=1, seed=0, layers={"l": (4, 3, 3)}, topk=0, act_dtype="float32"),
    )
    data = np.arange(n * 4, dtype=np.float32).reshape(n, 4)
    st.group["layers/l/acts"][:] = data
    rows = np.array([0, 3, 7, 8, 9, 31, 49])
    assert np.array_equal(st.extraction("l").take("acts", rows), data[rows])
    assert st.sample_ranges()[-1] == (48, 50)
