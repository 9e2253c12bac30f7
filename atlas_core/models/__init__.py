"""Models: registry by name, safe weight loading, preprocessing, and layer lookup and hooks."""

from atlas_core.models.layers import capture, layer_names, resolve_layer, stop_at
from atlas_core.models.preprocess import Preprocess
from atlas_core.models.registry import LoadedModel, ModelSpec, available_models, load_model
from atlas_core.models.weights import load_state_dict

__all__ = [
    "LoadedModel",
    "ModelSpec",
    "Preprocess",
    "available_models",
    "capture",
    "layer_names",
    "load_model",
    "load_state_dict",
    "resolve_layer",
    "stop_at",
]
