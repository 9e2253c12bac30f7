"""The reduce settings as values: UMAP's parameters, shared by every backend, and how the layout
scales (a fitted sample of landmarks, exact searches, the out-of-sample placement).

These are the schema of the ``reduce`` settings group: the pipeline's group derives from
:class:`ReduceSettings` and adds only which layers and runs it lays out together.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from atlas_core.config import Group
from atlas_core.errors import ConfigError

METRICS = ("cosine", "euclidean", "correlation", "manhattan")
INITS = ("spectral", "pca", "random")
BACKENDS = ("auto", "cuml", "umap-learn")
KNN_MODES = ("auto", "exact", "nndescent")


@dataclass(frozen=True)
class UmapParams(Group):
    """UMAP's parameters, shared by every backend (R1 and R3 defaults: 50 / 0.05 / cosine)."""

    n_neighbors: int = 50  # UMAP's n_neighbors
    min_dist: float = 0.05  # UMAP's min_dist
    metric: str = "cosine"  # cosine | euclidean | correlation | manhattan
    n_epochs: int | None = None  # null: the backend decides (umap-learn: 200 above 10k rows)
    # spectral (UMAP's) | pca (reproducible even when the kNN graph splits into components) |
    # random
    init: str = "spectral"
    seed: int | None = 0  # random_state (umap-learn: seeded fits are single-threaded)
    # per-backend keyword arguments: {umap-learn: {low_memory: true}, cuml: {...}}
    extras: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._tuples()
        self._choice("metric", METRICS)
        self._choice("init", INITS)
        self._ranges({"n_neighbors": (2, 10_000), "min_dist": (0.0, 1.0), "n_epochs": (1, None)})
        unknown = set(self.extras) - {"umap-learn", "cuml"}
        if unknown:
            raise ConfigError(
                self.key("extras"),
                sorted(unknown),
                choices=("umap-learn", "cuml"),
                fix="key the extras by backend: {umap-learn: {...}, cuml: {...}}.",
            )

    def kwargs(self, backend: str) -> dict[str, Any]:
        """Keyword arguments of the backend's UMAP class."""
        kw: dict[str, Any] = dict(
            n_neighbors=self.n_neighbors,
            min_dist=self.min_dist,
            metric=self.metric,
            n_components=2,
            random_state=self.seed,
            init=self.init,
        )
        if self.n_epochs is not None:
            kw["n_epochs"] = self.n_epochs
        kw.update(dict(self.extras.get(backend, {})))
        return kw


@dataclass(frozen=True)
class ReduceSettings(UmapParams):
    """UMAP's parameters and how the layout scales: up to ``fit_rows`` usable rows UMAP is fitted
    on all of them; above, on a seeded sample (the landmarks), and every other row is placed by
    its ``place_neighbors`` nearest landmarks (UMAP's own transform initialisation)."""

    # auto (cuML where the fit runs has it and a GPU, else umap-learn) | cuml | umap-learn
    backend: str = "auto"
    # umap-learn's kNN graph: auto (exact for cosine, correlation, euclidean) | exact | nndescent
    knn: str = "auto"
    fit_rows: int = 100_000  # above: fit a seeded sample (the landmarks), place the rest
    pca_dim: int | None = None  # project to this many dimensions before the fit (null: no PCA)
    place_neighbors: int = 10  # nearest landmarks that place each other row
    quality_sample: int = 5000  # rows trustworthiness and kNN recall (k = 10) are measured on

    def __post_init__(self) -> None:
        super().__post_init__()
        self._choice("backend", BACKENDS)
        self._choice("knn", KNN_MODES)
        self._ranges(
            {
                "fit_rows": (2, None),
                "pca_dim": (1, None),
                "place_neighbors": (1, 1000),
                "quality_sample": (10, None),
            }
        )
