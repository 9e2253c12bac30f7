"""Layout quality on a seeded sample of rows: trustworthiness and kNN recall (k = 10 by default)."""

from __future__ import annotations

import numpy as np


def _sample(n: int, sample: int, seed: int) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).choice(n, size=min(n, sample), replace=False))


def trustworthiness(
    high: np.ndarray,
    low: np.ndarray,
    *,
    k: int = 10,
    metric: str = "cosine",
    sample: int = 5000,
    seed: int = 0,
) -> float:
    """Trustworthiness of ``low`` (N, 2) against ``high`` (N, C) on <= ``sample`` rows."""
    from sklearn.manifold import trustworthiness as tw

    idx = _sample(len(high), sample, seed)
    return float(tw(high[idx], low[idx], n_neighbors=min(k, len(idx) // 2 - 1), metric=metric))


def knn_recall(
    high: np.ndarray,
    low: np.ndarray,
    *,
    k: int = 10,
    metric: str = "cosine",
    sample: int = 5000,
    seed: int = 0,
) -> float:
    """Mean fraction of each row's k nearest high-dimensional neighbours that are also among its
    k nearest neighbours in the layout (both searched within the same sample of rows)."""
    from sklearn.neighbors import NearestNeighbors

    idx = _sample(len(high), sample, seed)
    k = min(k, len(idx) - 1)
    nh = NearestNeighbors(n_neighbors=k + 1, metric=metric).fit(high[idx])
    nl = NearestNeighbors(n_neighbors=k + 1).fit(low[idx])
    a = nh.kneighbors(return_distance=False)[:, :k]
    b = nl.kneighbors(return_distance=False)[:, :k]
    hits = (a[:, :, None] == b[:, None, :]).any(-1).sum(1)
    return float(hits.mean() / k)


def layout_quality(
    high: np.ndarray, low: np.ndarray, *, metric: str = "cosine", sample: int = 5000, seed: int = 0
) -> dict[str, float]:
    """Both figures, as stored in the manifest."""
    return {
        "trustworthiness_k10": round(
            trustworthiness(high, low, metric=metric, sample=sample, seed=seed), 4
        ),
        "knn_recall_k10": round(knn_recall(high, low, metric=metric, sample=sample, seed=seed), 4),
        "quality_sample": int(min(len(high), sample)),
    }
