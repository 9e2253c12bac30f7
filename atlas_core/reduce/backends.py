"""The one place that chooses a UMAP backend, and the fitted reducer both backends share.

``auto`` takes cuML when it imports and a CUDA device is present, umap-learn otherwise. A backend
asked for by name that is not installed raises an ImportError that says what to install. The cuML
adapter is deliberately thin: construct, ``fit``/``transform``, and bring results back to numpy.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from atlas_core.errors import ConfigError
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


def make_reducer(params: UmapParams, backend: str) -> Any:
    """An unfitted UMAP estimator of ``backend`` with ``params`` (fit / transform interface)."""
    if backend == "cuml":
        from cuml.manifold import UMAP as CumlUMAP

        return CumlUMAP(**params.kwargs("cuml"))
    import umap

    return umap.UMAP(**params.kwargs("umap-learn"))


def _host(a: Any) -> np.ndarray:
    return np.asarray(a.get() if hasattr(a, "get") else a, dtype=np.float32)


@dataclass
class FittedReducer:
    """Optional PCA (components (d, C), mean (C,)) then a fitted UMAP; picklable, so it can be
    sent once to many transform tasks."""

    backend: str
    umap: Any
    pca_components: np.ndarray | None = None
    pca_mean: np.ndarray | None = None

    def project(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self.pca_components is None:
            return x
        return (x - self.pca_mean) @ self.pca_components.T

    def transform(self, x: np.ndarray) -> np.ndarray:
        """New rows (n, C) -> raw 2-D coordinates (n, 2) in the fitted layout's frame."""
        if len(x) == 0:
            return np.zeros((0, 2), np.float32)
        return _host(self.umap.transform(self.project(x)))


def fit(
    x: np.ndarray,
    params: UmapParams,
    backend: str = "auto",
    *,
    pca_dim: int | None = None,
) -> tuple[FittedReducer, np.ndarray]:
    """Fit on ``x`` (N, C) float32; returns the reducer and the raw layout of ``x`` (N, 2)."""
    backend = choose_backend(backend)
    comps = mean = None
    if pca_dim is not None and pca_dim < x.shape[1]:
        from sklearn.decomposition import PCA

        pca = PCA(n_components=pca_dim, random_state=params.seed).fit(x)
        comps = pca.components_.astype(np.float32)
        mean = pca.mean_.astype(np.float32)
    red = FittedReducer(backend, make_reducer(params, backend), comps, mean)
    log.info("UMAP fit on %d x %d with %s (%s)", x.shape[0], x.shape[1], backend, params)
    out = red.umap.fit_transform(red.project(x))
    return red, _host(out)


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
