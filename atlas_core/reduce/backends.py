"""The one place that chooses a UMAP backend, and the fitted reducer both backends share.

``auto`` takes cuML when it imports and a CUDA device is present, umap-learn otherwise. A backend
asked for by name that is not installed raises an ImportError that says what to install. The cuML
adapter is deliberately thin: construct, ``fit_transform``, and bring the layout back to numpy.
Landmarks (the fitted sample and its search index) live in ``landmarks.py``; feature assembly
for aligned layouts in ``features.py``.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from atlas_core.errors import ConfigError
from atlas_core.reduce.params import BACKENDS, KNN_MODES

log = logging.getLogger(__name__)


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
        raise ConfigError("backend", name, choices=BACKENDS, fix="pick one of the choices.")
    if name == "auto":
        return "cuml" if _has_cuml() else "umap-learn"
    if name == "cuml" and not _has_cuml():
        raise ConfigError(
            "backend",
            name,
            choices=[b for b in BACKENDS if b != name],
            fix="cuml needs RAPIDS cuML and a CUDA GPU where the fit runs: "
            "pip install --extra-index-url=https://pypi.nvidia.com cuml-cu13, or use umap-learn.",
        )
    if name == "umap-learn":
        try:
            import umap  # noqa: F401
        except ImportError as exc:
            raise ConfigError("backend", name, fix="pip install umap-learn") from exc
    return name


_CACHED = False
_SKIP = ("plot", "parametric", "aligned", "tests", "validation")


def cache_numba_kernels() -> int:
    """Turn on numba's on-disk cache for umap-learn's and pynndescent's compiled kernels (most
    are compiled without ``cache=True``), once per process; returns how many were switched.

    A fresh process (every Ray worker that fits) then loads the machine code compiled by an
    earlier one instead of compiling again: about 10 s of a 20k-row fit on 2 cores. The cache
    sits beside the packages' sources, or in numba's user cache dir (``NUMBA_CACHE_DIR``).
    """
    global _CACHED
    if _CACHED:
        return 0
    import importlib
    import pkgutil

    import numba
    import pynndescent
    import umap

    switched = 0
    for pkg in (umap, pynndescent):
        for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
            if any(x in info.name for x in _SKIP):
                continue
            try:
                mod = importlib.import_module(info.name)
            except ImportError:  # optional extras (tensorflow, bokeh) not installed
                continue
            for f in vars(mod).values():
                if isinstance(f, numba.core.registry.CPUDispatcher):
                    f.enable_caching()
                    switched += 1
    _CACHED = True
    return switched


def exact_graph(knn: str, backend: str, metric: str) -> bool:
    """Whether a fit hands umap-learn an exact kNN graph (``reduce.knn``)."""
    if knn not in KNN_MODES:
        raise ConfigError("knn", knn, choices=KNN_MODES, fix="pick one of the choices.")
    if backend != "umap-learn" or knn == "nndescent":
        return False  # cuML builds its own (brute-force, on the GPU) graph
    return knn == "exact" or metric != "manhattan"


def estimator(backend: str, kw: dict[str, Any]) -> Any:
    """An unfitted UMAP of ``backend`` (cuml or umap-learn) with keyword arguments ``kw``."""
    if backend == "cuml":
        from cuml.manifold import UMAP as CumlUMAP

        return CumlUMAP(**kw)
    import umap

    cache_numba_kernels()
    return umap.UMAP(**kw)


def host(a: Any) -> np.ndarray:
    """A backend's output (a CuPy or NumPy array) as float32 NumPy."""
    return np.asarray(a.get() if hasattr(a, "get") else a, dtype=np.float32)
