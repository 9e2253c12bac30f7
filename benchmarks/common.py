"""Shared helpers: a store of synthetic activations, timing, peak memory, and result files."""

from __future__ import annotations

import json
import logging
import os
import platform
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("benchmarks")
RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    import torch

    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def children_peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)


class Timer:
    def __enter__(self) -> Timer:
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.t0


def mixture(n: int, dim: int, *, clusters: int = 60, seed: int = 0) -> np.ndarray:
    """A synthetic stand-in for activations: non-negative (post-ReLU-like) Gaussian mixture with
    clusters of different spreads along random low-dimensional subspaces."""
    rng = np.random.default_rng(seed)
    centres = np.abs(rng.normal(size=(clusters, dim))) * rng.gamma(2.0, 0.5, size=(clusters, 1))
    basis = rng.normal(size=(clusters, 4, dim)) * 0.6
    label = rng.integers(0, clusters, n)
    coef = rng.normal(size=(n, 4))
    x = centres[label] + np.einsum("nk,nkd->nd", coef, basis[label])
    x += rng.normal(size=(n, dim)) * 0.25
    return np.maximum(x, 0).astype(np.float32)


def write(name: str, result: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    result = {"benchmark": name, "machine": machine(), **result}
    path.write_text(json.dumps(result, indent=2, sort_keys=True, default=float))
    log.info("wrote %s", path)
    return path


def report(label: str, ours: float, peer: float, unit: str, quality: str) -> None:
    """One line: our figure, the peer's, their ratio, and the quality next to it."""
    ratio = ours / peer if peer else float("nan")
    log.info(
        "%s: ours %.3g %s, peer %.3g %s, ratio %.2fx; %s",
        label,
        ours,
        unit,
        peer,
        unit,
        ratio,
        quality,
    )
