"""The one place that chooses a UMAP backend.

``auto`` takes cuML when it imports and a CUDA device is present, umap-learn otherwise. A backend
asked for by name that is not installed raises an ImportError that says what to install.
"""

from __future__ import annotations

import logging

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


def make_reducer(params: UmapParams, backend: str):  # type: ignore[no-untyped-def]
    """An unfitted UMAP estimator of ``backend`` with ``params`` (fit / transform interface)."""
    common = dict(
        n_neighbors=params.n_neighbors,
        min_dist=params.min_dist,
        metric=params.metric,
        n_components=2,
        random_state=params.seed,
        init=params.init,
        **params.extras,
    )
    if params.n_epochs is not None:
        common["n_epochs"] = params.n_epochs
    if backend == "cuml":
        from cuml.manifold import UMAP as CumlUMAP

        return CumlUMAP(**common)
    import umap

    return umap.UMAP(**common)


def fit_transform(x: np.ndarray, params: UmapParams, backend: str = "auto") -> np.ndarray:
    """2-D UMAP layout of ``x`` (N, C) float32 -> (N, 2) float32, raw (not yet normalized)."""
    backend = choose_backend(backend)
    log.info("UMAP on %d x %d with %s (%s)", x.shape[0], x.shape[1], backend, params)
    reducer = make_reducer(params, backend)
    out = reducer.fit_transform(np.ascontiguousarray(x, dtype=np.float32))
    if backend == "cuml" and hasattr(out, "get"):
        out = out.get()
    return np.asarray(out, dtype=np.float32)
