"""Landmarks: the fitted sample of a large layout, and how new rows are placed on it.

Above ``fit_rows`` rows only a seeded sample (the landmarks) is fitted with UMAP; every other
row is placed at the membership-weighted mean position of its exact nearest landmarks (UMAP's own
transform initialisation, ``neighbors.place``).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import numpy as np

from atlas_core.reduce.backends import choose_backend, estimator, exact_graph, host
from atlas_core.reduce.neighbors import NeighborIndex, place
from atlas_core.reduce.params import UmapParams

log = logging.getLogger(__name__)


@dataclass
class Landmarks:
    """The fitted sample as the transform needs it: optional PCA (components (d, C), mean (C,)),
    then an exact neighbour index over the projected sample rows. Picklable: built once in the
    driver and shared with every transform task, before the UMAP fit has finished.

    n_place: how many nearest landmarks place a new row (UMAP's membership-weighted mean).
    """

    index: NeighborIndex
    pca_components: np.ndarray | None = None
    pca_mean: np.ndarray | None = None
    n_place: int = 10

    @classmethod
    def build(
        cls,
        x: np.ndarray,
        metric: str = "cosine",
        *,
        pca_dim: int | None = None,
        seed: int | None = 0,
        n_place: int = 10,
    ) -> Landmarks:
        x = np.ascontiguousarray(x, dtype=np.float32)
        comps = mean = None
        if pca_dim is not None and pca_dim < x.shape[1]:
            from sklearn.decomposition import PCA

            pca = PCA(n_components=pca_dim, random_state=seed).fit(x)
            comps = pca.components_.astype(np.float32)
            mean = pca.mean_.astype(np.float32)
            x = (x - mean) @ comps.T
        return cls(NeighborIndex.build(x, metric), comps, mean, n_place)

    def __len__(self) -> int:
        return len(self.index)

    def project(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self.pca_components is None:
            return x
        return (x - self.pca_mean) @ self.pca_components.T

    def neighbors(self, x: np.ndarray, *, device: str = "auto") -> tuple[np.ndarray, np.ndarray]:
        """Each row's ``n_place`` nearest landmarks: indices (n, k), distances (n, k)."""
        return self.index.query(self.project(x), self.n_place, device=device)


def fit_landmarks(
    landmarks: Landmarks,
    params: UmapParams,
    backend: str = "auto",
    *,
    knn: str = "auto",
    device: str = "auto",
) -> np.ndarray:
    """UMAP layout (m, 2) of the landmarks' (projected) rows.

    With umap-learn the kNN graph is exact (``knn=auto`` for every metric but manhattan, whose
    exact search has no matrix-product shortcut; ``knn=nndescent`` keeps umap-learn's own
    approximate search) and handed over as ``precomputed_knn``: the graph the fit sees is then
    the one the transform searches, and the seeded fit is reproducible.
    """
    backend = choose_backend(backend)
    # the rows as the metric compares them (unit rows for cosine): the same distances, so the
    # same graph, and the same rows the transform's searches see
    x = landmarks.index.ref
    kw = params.kwargs(backend)
    k = params.n_neighbors
    if exact_graph(knn, backend, params.metric) and len(x) > k:
        ki, kd = landmarks.index.query(x, k, device=device)
        kw["precomputed_knn"] = (ki.astype(np.int32), kd)
    est = estimator(backend, kw)
    log.info("UMAP fit on %d x %d with %s (%s)", x.shape[0], x.shape[1], backend, params)
    with warnings.catch_warnings():
        # "transforming new data with transform will be unavailable": we place new rows ourselves.
        warnings.filterwarnings("ignore", message=".*knn_search_index.*")
        warnings.filterwarnings("ignore", message=".*n_jobs value.*overridden.*")
        return host(est.fit_transform(x))


@dataclass
class FittedReducer:
    """Landmarks and their fitted 2-D positions (m, 2); picklable."""

    backend: str
    landmarks: Landmarks
    embedding: np.ndarray

    @property
    def pca_components(self) -> np.ndarray | None:
        return self.landmarks.pca_components

    def transform(self, x: np.ndarray, *, device: str = "auto") -> np.ndarray:
        """New rows (n, C) -> raw 2-D coordinates (n, 2) in the fitted layout's frame."""
        if len(x) == 0:
            return np.zeros((0, 2), np.float32)
        return place(*self.landmarks.neighbors(x, device=device), self.embedding)


def fit(
    x: np.ndarray,
    params: UmapParams,
    backend: str = "auto",
    *,
    pca_dim: int | None = None,
    knn: str = "auto",
    n_place: int = 10,
    device: str = "auto",
) -> tuple[FittedReducer, np.ndarray]:
    """Fit on ``x`` (N, C) float32; returns the reducer and the raw layout of ``x`` (N, 2)."""
    backend = choose_backend(backend)
    lm = Landmarks.build(x, params.metric, pca_dim=pca_dim, seed=params.seed, n_place=n_place)
    emb = fit_landmarks(lm, params, backend, knn=knn, device=device)
    return FittedReducer(backend, lm, emb), emb


def fit_transform(x: np.ndarray, params: UmapParams, backend: str = "auto") -> np.ndarray:
    """2-D UMAP layout of ``x`` (N, C) float32 -> (N, 2) float32, raw (not yet normalized)."""
    return fit(x, params, backend)[1]
