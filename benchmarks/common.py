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


class RayRssSampler:
    """Largest resident memory of any one Ray worker process (``ray::*``) while the block runs,
    sampled every ``every`` seconds: what one task needed, as opposed to the driver's own peak."""

    def __init__(self, every: float = 0.2) -> None:
        self.every = every
        self.peak_mb = 0.0

    def _sample(self) -> None:
        import psutil

        while not self._stop.wait(self.every):
            for p in psutil.process_iter(["name", "memory_info"]):
                name = p.info.get("name") or ""
                mem = p.info.get("memory_info")
                if name.startswith("ray::") and mem is not None:
                    self.peak_mb = max(self.peak_mb, mem.rss / 2**20)

    def __enter__(self) -> RayRssSampler:
        import threading

        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = round(self.peak_mb, 1)


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
    """One line: our figure, the peer's, how many times better ours is, and the quality next to
    it. Units of time per item ("s", "s/icon") and memory ("MB") are better when lower; rates when
    higher."""
    lower_is_better = unit in ("s", "MB") or unit.startswith("s/")
    num, den = (peer, ours) if lower_is_better else (ours, peer)
    ratio = num / den if den else float("nan")
    log.info(
        "%s: ours %.3g %s, peer %.3g %s, ours %.2fx better; %s",
        label,
        ours,
        unit,
        peer,
        unit,
        ratio,
        quality,
    )


def settings(*overrides: str) -> Any:
    """The pipeline's Settings for ``overrides`` on the default config, composed by Hydra as
    ``atlas`` would (so benchmarks run exactly what users run)."""
    from hydra import compose, initialize_config_dir

    from pipelines.commands.main import CONF_DIR, to_settings

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return to_settings(compose("config", overrides=list(overrides)))[0]


def synthetic_run(
    run_dir: Path, levels: dict[int, float], px: int, *, seed: int = 0, layer: str = "blocks.2"
) -> None:
    """A run store holding what compose reads, without running any stage: per level (size ->
    share of cells kept) kept cells, counts, top classes and random smooth icons (PNG and JPEG
    sizes are realistic), written one storage object per 256 icons as the render stage does."""
    from PIL import Image

    from atlas_core.data.plan import plan_shards
    from atlas_core.data.sources import InputManifest
    from atlas_core.store import GridArrays, RunStore
    from atlas_core.store.run_store import StoreLayout

    rng = np.random.default_rng(seed)
    manifest = InputManifest(np.array(["none.png"], dtype=object), np.full((1, 4), -1, np.int32))
    shape = StoreLayout(k=1, seed=seed, layers={layer: (4, 8, 8)}, topk=5, n_classes=10)
    store = RunStore.create(
        str(run_dir / "atlas.zarr"),
        manifest,
        plan_shards(1, chunk_images=1),
        np.zeros((1, 2), np.int16),
        shape,
    )
    for g, kept_share in levels.items():
        flat = np.flatnonzero(rng.random(g * g) < kept_share)
        m = len(flat)
        cells = np.stack([flat % g, flat // g], 1).astype(np.int32)
        top = rng.integers(0, 10, (m, 5)).astype(np.int32)
        level = store.level(layer, g)
        level.write_grid(
            GridArrays(
                g,
                cells,
                np.zeros((m, 4), np.float32),
                rng.integers(1, 60, m).astype(np.int32),
                top,
                np.ones((m, 5), np.int32),
            ),
            {},
        )
        level.create(
            ["icons", "icon_objective", "icon_cosine"], {"M": m, "px": px, "group": 16, "item": 256}
        )
        for a in range(0, m, 256):
            b = min(m, a + 256)
            small = rng.integers(0, 256, (b - a, 8, 8, 3), dtype=np.uint8)
            level.write(
                "icons",
                a,
                np.stack([np.asarray(Image.fromarray(x).resize((px, px))) for x in small]),
            )
            level.write("icon_cosine", a, np.zeros(b - a, np.float32))
            level.write("icon_objective", a, np.zeros(b - a, np.float32))
