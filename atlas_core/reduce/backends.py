"""The one place that chooses a UMAP backend, and the fitted reducer both backends share.

``auto`` takes cuML when it imports and a CUDA device is present, umap-learn otherwise. A backend
asked for by name that is not installed raises an ImportError that says what to install. The cuML
adapter is deliberately thin: construct, ``fit_transform``, and bring the layout back to numpy.
Either backend's layout of the sample (the landmarks) extends to new rows the same way: exact
nearest landmarks, membership-weighted mean of their positions (``neighbors.py``).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from atlas_core.errors import ConfigError
from atlas_core.reduce.neighbors import NeighborIndex, place
from atlas_core.reduce.params import UmapParams

log = logging.getLogger(__name__)

BACKENDS = ("auto", "cuml", "umap-learn")


def _has_cuml() -> bool:
    try:
        import cuml  # noqa: F401
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def choose_backend(name: str = "auto") -> str:
    """Resolve ``auto`` to a concrete backend name; check a named one is importable."""
    if name not in BACKENDS:
        raise ConfigError("reduce.backend", name, choices=BACKENDS, fix="pick one of the choices.")
    if name == "auto":
        return "cuml" if _has_cuml() else "umap-learn"
    if name == "cuml" and not _has_cuml():
        raise ImportError(
            "reduce.backend=cuml needs RAPIDS cuML and a CUDA GPU: "
            "pip install --extra-index-url=https://pypi.nvidia.com cuml-cu12 "
            "(or use reduce.backend=umap-learn)."
        )
    if name == "umap-learn":
        try:
            import umap  # noqa: F401
        except ImportError as exc:
            raise ImportError("reduce.backend=umap-learn needs: pip install umap-learn") from exc
    return name


def _host(a: Any) -> np.ndarray:
    return np.asarray(a.get() if hasattr(a, "get") else a, dtype=np.float32)


KNN_MODES = ("auto", "exact", "nndescent")


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


def _exact_graph(knn: str, backend: str, metric: str) -> bool:
    if knn not in KNN_MODES:
        raise ConfigError("reduce.knn", knn, choices=KNN_MODES, fix="pick one of the choices.")
    if backend != "umap-learn" or knn == "nndescent":
        return False  # cuML builds its own (brute-force, on the GPU) graph
    return knn == "exact" or metric != "manhattan"


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
    if _exact_graph(knn, backend, params.metric) and len(x) > k:
        ki, kd = landmarks.index.query(x, k, device=device)
        kw["precomputed_knn"] = (ki.astype(np.int32), kd)
    if backend == "cuml":
        from cuml.manifold import UMAP as CumlUMAP

        est = CumlUMAP(**kw)
    else:
        import umap

        est = umap.UMAP(**kw)
    log.info("UMAP fit on %d x %d with %s (%s)", x.shape[0], x.shape[1], backend, params)
    with warnings.catch_warnings():
        # "transforming new data with transform will be unavailable": we place new rows ourselves.
        warnings.filterwarnings("ignore", message=".*knn_search_index.*")
        warnings.filterwarnings("ignore", message=".*n_jobs value.*overridden.*")
        return _host(est.fit_transform(x))


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


def joint_features(blocks: list[np.ndarray]) -> np.ndarray:
    """Aligned layouts: each block (N, C_i) L2-normalized per row, concatenated, scaled by
    1 / sqrt(len(blocks)). The cosine of two joint rows is then the mean of the per-block cosines,
    so one fit lays out several layers (or two models on the same images) at once."""
    out = []
    for b in blocks:
        n = np.linalg.norm(b, axis=1, keepdims=True)
        out.append(b / np.maximum(n, 1e-12))
    return (np.concatenate(out, axis=1) / np.sqrt(len(blocks))).astype(np.float32)
