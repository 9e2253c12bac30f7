"""Reduce: UMAP settings, the backend choice (cuML on GPU, umap-learn on CPU), normalization."""

from atlas_core.reduce.backends import choose_backend, fit_transform
from atlas_core.reduce.normalize import normalize_layout
from atlas_core.reduce.params import UmapParams
from atlas_core.reduce.quality import trustworthiness

__all__ = ["UmapParams", "choose_backend", "fit_transform", "normalize_layout", "trustworthiness"]
