"""Reduce: UMAP settings, the backend choice (cuML on GPU, umap-learn on CPU), sample fit and
transform, aligned (joint) features, normalization, and layout quality."""

from atlas_core.reduce.backends import KNN_MODES, choose_backend
from atlas_core.reduce.features import joint_features
from atlas_core.reduce.landmarks import FittedReducer, Landmarks, fit, fit_landmarks, fit_transform
from atlas_core.reduce.neighbors import NeighborIndex, membership_weights, place
from atlas_core.reduce.normalize import apply_bounds, normalize_layout
from atlas_core.reduce.params import ReduceSettings, UmapParams
from atlas_core.reduce.quality import knn_recall, layout_quality, trustworthiness

__all__ = [
    "KNN_MODES",
    "FittedReducer",
    "Landmarks",
    "NeighborIndex",
    "ReduceSettings",
    "UmapParams",
    "apply_bounds",
    "choose_backend",
    "fit",
    "fit_landmarks",
    "fit_transform",
    "joint_features",
    "knn_recall",
    "layout_quality",
    "membership_weights",
    "normalize_layout",
    "place",
    "trustworthiness",
]
