"""UMAP settings shared by every backend, plus per-backend extras passed through unchanged."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

METRICS = ("cosine", "euclidean", "correlation", "manhattan")
INITS = ("spectral", "pca", "random")


@dataclass(frozen=True)
class UmapParams:
    """n_neighbors, min_dist, metric: the UMAP settings (R1 and R3 defaults: 50 / 0.05 / cosine).

    n_epochs: None lets the backend decide (umap-learn: 200 above 10k rows, else 500).
    init: ``"spectral"`` (UMAP's default), ``"pca"`` or ``"random"``. umap-learn's spectral init
        is not reproducible when the kNN graph falls into disconnected components; ``"pca"`` is.
    seed: random_state; with umap-learn a seed also makes it single-threaded (reproducible).
    extras: per-backend keyword arguments, ``{"umap-learn": {"low_memory": True}, "cuml": {...}}``.
    """

    n_neighbors: int = 50
    min_dist: float = 0.05
    metric: str = "cosine"
    n_epochs: int | None = None
    init: str = "spectral"
    seed: int | None = 0
    extras: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.n_neighbors < 2:
            raise ValueError(f"n_neighbors must be at least 2, got {self.n_neighbors}")
        if self.init not in INITS:
            raise ValueError(f"init {self.init!r} is not one of spectral, pca, random")
        if self.metric not in METRICS:
            raise ValueError(f"metric {self.metric!r} is not one of {', '.join(METRICS)}")
        unknown = set(self.extras) - {"umap-learn", "cuml"}
        if unknown:
            raise ValueError(f"extras keys must be backend names (umap-learn, cuml), got {unknown}")

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
        kw.update(self.extras.get(backend, {}))
        return kw
