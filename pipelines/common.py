"""Small helpers shared by the stage modules: device choice, a per-process model cache, results."""

from __future__ import annotations

from dataclasses import dataclass, field
import resource
import sys
from typing import Any

import torch

from atlas_core.models.registry import LoadedModel, ModelSpec, load_model

_MODELS: dict[tuple[ModelSpec, str], LoadedModel] = {}


def resolve_device(name: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible to this process, else ``cpu``."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            "device=cuda was asked for but no CUDA device is visible; use auto or cpu"
        )
    return name


def cached_model(spec: ModelSpec, device: str) -> LoadedModel:
    """Load a model once per process (Ray reuses worker processes across tasks)."""
    key = (spec, device)
    if key not in _MODELS:
        _MODELS[key] = load_model(spec, device=device)
    return _MODELS[key]


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


@dataclass
class StageResult:
    """What a stage reports to the manifest: status, counts and any details."""

    status: str = "done"
    counts: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
