"""Reduce stage: UMAP of the layer's activations, normalized, written position-addressed.

Up to ``reduce.fit_rows`` usable rows, one fit on all of them in the driver. Above, a seeded
sample is fitted and every row is transformed by parallel Ray tasks, each reading its chunk-aligned
row range from the store and writing the raw layout back to the same rows; the driver then
normalizes all rows at once (only N x 2 values). With ``reduce.joint_layers`` one fit lays out
several layers together and every one of them gets the same layout (aligned atlases).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from atlas_core.errors import StoreError
from atlas_core.reduce import (
    FittedReducer,
    choose_backend,
    fit,
    joint_features,
    layout_quality,
    normalize_layout,
)
from atlas_core.store import RunStore
from pipelines import ray_ops
from pipelines.common import Clock, StageResult, peak_rss_mb
from pipelines.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TransformJob:
    store_url: str
    storage_options: dict[str, Any]
    layers: tuple[str, ...]
    start: int
    stop: int


def features(store: RunStore, layers: tuple[str, ...], rows: np.ndarray) -> np.ndarray:
    """The rows UMAP sees: one layer's activations, or the joint features of several."""
    if len(layers) == 1:
        return store.gather(layers[0], rows)
    return joint_features([store.gather(name, rows) for name in layers])


def transform_rows(job: TransformJob, reducer: FittedReducer) -> dict[str, int]:
    """Task body: transform sample rows [start, stop) and write the raw layout there."""
    store = RunStore.open(job.store_url, mode="r+", storage_options=job.storage_options)
    ok = np.flatnonzero(store.ok_samples()[job.start : job.stop]) + job.start
    out = np.full((job.stop - job.start, 2), np.nan, np.float32)
    out[ok - job.start] = reducer.transform(features(store, job.layers, ok))
    store.write_rows(job.layers[0], "layout_raw", job.start, job.stop, out)
    return {"rows": len(ok)}


def run(s: Settings, fp: str) -> StageResult:
    r = s.reduce
    store = RunStore.open(s.store_url, mode="r+", storage_options=s.storage_options)
    layers = r.joint_layers or (s.layer,)
    ok_mask = store.ok_samples()
    ok = np.flatnonzero(ok_mask)
    if len(ok) <= r.umap.n_neighbors:
        raise StoreError(
            f"only {len(ok)} usable activation rows for layer {s.layer}, fewer than "
            f"n_neighbors={r.umap.n_neighbors}: add images (data.n_images) or lower "
            "reduce.n_neighbors"
        )
    backend = choose_backend(r.backend)
    sampled = len(ok) > r.fit_rows
    fit_rows = (
        np.sort(np.random.default_rng(s.seed).choice(ok, r.fit_rows, replace=False))
        if sampled
        else ok
    )
    clock = Clock()
    x_fit = features(store, layers, fit_rows)
    reducer, fit_layout = fit(x_fit, r.umap, backend, pca_dim=r.pca_dim)
    clock.lap("fit")
    if sampled:
        store.create_rows(layers[0], "layout_raw", 2, {"fingerprint": fp})
        jobs = [
            TransformJob(s.store_url, s.storage_options, layers, a, b)
            for a, b in store.sample_ranges()
        ]
        log.info(
            "reduce: fitted on %d of %d rows; transforming in %d tasks",
            len(fit_rows),
            len(ok),
            len(jobs),
        )
        ray_ops.init(s.cluster)
        ray_ops.map_tasks(
            transform_rows, jobs, num_cpus=r.transform_cpus, desc="transform", shared=reducer
        )
        raw = store.rows(layers[0], "layout_raw")
        clock.lap("transform")
    else:
        raw = np.full((len(ok_mask), 2), np.nan, np.float32)
        raw[ok] = fit_layout
    norm, bounds = normalize_layout(raw)
    quality_rows = np.sort(
        np.random.default_rng(s.seed + 1).choice(ok, min(len(ok), r.quality_sample), replace=False)
    )
    quality = layout_quality(
        features(store, layers, quality_rows),
        norm[quality_rows],
        metric=r.umap.metric,
        sample=r.quality_sample,
        seed=s.seed,
    )
    clock.lap("quality")
    attrs = {
        "backend": backend,
        "bounds": bounds.tolist(),
        "fingerprint": fp,
        "joint_layers": list(layers),
        **quality,
    }
    for name in layers:
        store.write_layout(name, norm, attrs)
    log.info("reduce: %d rows (%s fit on %d), %s", len(ok), backend, len(fit_rows), quality)
    return StageResult(
        counts={"rows": len(ok), "holes": int((~ok_mask).sum()), "fit_rows": len(fit_rows)},
        details={
            "backend": backend,
            "sampled_fit": sampled,
            "joint_layers": list(layers),
            "pca_dim": r.pca_dim,
            "peak_rss_mb_driver": peak_rss_mb(),
            **quality,
            "phase_seconds": clock.laps,
        },
    )
