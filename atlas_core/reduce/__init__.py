"""Reduce: UMAP settings, the backend choice (cuML on GPU, umap-learn on CPU), sample fit and
transform, aligned (joint) features, normalization, and layout quality."""

from atlas_core.reduce.backends import (
    FittedReducer,
    choose_backend,
    fit,
    fit_transform,
    joint_features,
)
from atlas_core.reduce.normalize import apply_bounds, normalize_layout
from atlas_core.reduce.params import UmapParams
from atlas_core.reduce.quality import knn_recall, layout_quality, trustworthiness

__all__ = [
    "FittedReducer",
    "UmapParams",
    "apply_bounds",
    "choose_backend",
    "fit",
    "fit_transform",
    "joint_features",
    "knn_recall",
    "layout_quality",
    "normalize_layout",
    "trustworthiness",
]
