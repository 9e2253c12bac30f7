"""Reduce stage: UMAP of the layer's activations, normalized, written position-addressed.

Up to ``reduce.fit_rows`` usable rows, one fit on all of them in the driver. Above, a seeded
sample (the landmarks) is gathered by the driver and the rest is a Ray task graph:

    fit (1 task: UMAP of the landmarks)  ---------------------------.
    search (1 task per shard: its rows' nearest landmarks, exact) --+--> place (1 task per shard:
                                                                          membership-weighted mean
                                                                          position, written back)

The searches need only the landmarks, not their layout, so they run while the fit runs; each
place task starts as soon as its search and the fit are done. Workers read their own chunk-aligned
row ranges and write the raw layout to the same rows; the driver then normalizes all rows at once
(only N x 2 values). No process holds every activation.

Aligned layouts: ``reduce.joint_layers`` lays several layers of this run out in one fit (each
gets the layout); ``reduce.align_with`` adds other runs on the same images (two models side by
side). The feature blocks are put in a canonical order, so each run of an aligned pair that lists
the other computes the same features, the same fit and the same layout.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from atlas_core.errors import ConfigError, StoreError
from atlas_core.reduce import (
    Landmarks,
    choose_backend,
    fit,
    fit_landmarks,
    joint_features,
    layout_quality,
    normalize_layout,
    place,
)
from atlas_core.reduce.params import UmapParams
from atlas_core.store import RunStore
from pipelines import ray_ops
from pipelines.common import Clock, StageResult, inject_fault, peak_rss_mb
from pipelines.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Source:
    """One block of the features UMAP sees: a layer of a run store."""

    store_url: str
    layer: str
    storage_options: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class TransformJob:
    store_url: str  # where the layout is written
    storage_options: dict[str, Any]
    layer: str
    sources: tuple[Source, ...]
    start: int
    stop: int
    fault: str = ""


def _open(url: str, opts: tuple[tuple[str, Any], ...]) -> RunStore:
    return RunStore.open(url, mode="r", storage_options=dict(opts))


def features(sources: tuple[Source, ...], rows: np.ndarray) -> np.ndarray:
    """The rows UMAP sees: one layer's activations, or the joint features of several blocks."""
    blocks = [_open(s.store_url, s.storage_options).gather(s.layer, rows) for s in sources]
    return blocks[0] if len(blocks) == 1 else joint_features(blocks)


def _canonical(url: str) -> str:
    return url if "://" in url else os.path.abspath(url)


def sources_of(s: Settings) -> tuple[Source, ...]:
    """This run's layer(s) plus any aligned runs', in a canonical order (sorted by store and
    layer) so that every run of an aligned set builds the same feature rows."""
    opts = tuple(sorted(s.storage_options.items()))
    own = [Source(s.store_url, name, opts) for name in (s.reduce.joint_layers or (s.layer,))]
    other = [
        Source(run_dir.rstrip("/") + "/atlas.zarr", layer, opts)
        for run_dir, layer in s.reduce.align_with
    ]
    if not other:
        return tuple(own)
    return tuple(sorted(own + other, key=lambda x: (_canonical(x.store_url), x.layer)))


def usable_rows(store: RunStore, sources: tuple[Source, ...]) -> np.ndarray:
    """(N * k,) bool: rows usable in every source. Aligned runs must hold the same images in
    the same order with the same samples (k and seed, hence the same relative positions)."""
    ok = store.ok_samples()
    mine = store.manifest().uris
    for src in sources:
        if _canonical(src.store_url) == _canonical(store.url):
            continue
        other = _open(src.store_url, src.storage_options)
        if src.layer not in other.layers:
            raise ConfigError(
                "reduce.align_with",
                f"{src.store_url}:{src.layer}",
                choices=tuple(other.layers),
                fix="name a layer that run extracted.",
            )
        same = (other.n_images, other.k, other.attrs.get("seed")) == (
            store.n_images,
            store.k,
            store.attrs.get("seed"),
        ) and np.array_equal(other.manifest().uris, mine)
        if not same:
            raise ConfigError(
                "reduce.align_with",
                src.store_url,
                fix="aligned runs need the same images (data settings), samples_per_image and "
                "seed; re-extract one of them with the other's settings.",
            )
        ok &= other.ok_samples()
    return ok


# ---------------------------------------------------------------------------- task bodies
def fit_task(
    landmarks: Landmarks, params: UmapParams, backend: str, knn: str, fault: str = ""
) -> np.ndarray:
    """Task body: the landmarks' raw 2-D layout (m, 2)."""
    inject_fault(fault, "fit", 0)
    return fit_landmarks(landmarks, params, backend, knn=knn)


def search_task(
    job: TransformJob, landmarks: Landmarks, usable: np.ndarray, device: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Task body: (rows, nearest landmark indices, distances) of the job's usable rows
    (``usable``: the driver's :func:`usable_rows` mask, shared once)."""
    inject_fault(job.fault, "search", job.start)
    ok = np.flatnonzero(usable[job.start : job.stop]) + job.start
    idx, dist = landmarks.neighbors(features(job.sources, ok), device=device)
    return ok, idx, dist


def place_task(
    job: TransformJob,
    found: tuple[np.ndarray, np.ndarray, np.ndarray],
    embedding: np.ndarray,
    fit_rows: np.ndarray,
) -> int:
    """Task body: place the job's rows and write the raw layout to rows [start, stop). Landmark
    rows keep their fitted position."""
    rows, idx, dist = found
    out = np.full((job.stop - job.start, 2), np.nan, np.float32)
    out[rows - job.start] = place(idx, dist, embedding)
    a, b = np.searchsorted(fit_rows, [job.start, job.stop])
    out[fit_rows[a:b] - job.start] = embedding[a:b]
    store = RunStore.open(job.store_url, mode="r+", storage_options=job.storage_options)
    store.write_rows(job.layer, "layout_raw", job.start, job.stop, out)
    return len(rows)


# ---------------------------------------------------------------------------- stage
def _sampled(
    s: Settings,
    store: RunStore,
    sources: tuple[Source, ...],
    ok_mask: np.ndarray,
    fit_rows: np.ndarray,
    backend: str,
    fp: str,
    clock: Clock,
) -> np.ndarray:
    """The task graph above; returns the raw layout of every row (N * k, 2), NaN for holes."""
    r = s.reduce
    landmarks = Landmarks.build(
        features(sources, fit_rows),
        r.umap.metric,
        pca_dim=r.pca_dim,
        seed=r.umap.seed,
        n_place=r.place_neighbors,
    )
    clock.lap("landmarks")
    out_layer = (r.joint_layers or (s.layer,))[0]
    store.create_rows(out_layer, "layout_raw", 2, {"fingerprint": fp})
    jobs = [
        TransformJob(s.store_url, s.storage_options, out_layer, sources, a, b, r.fault)
        for a, b in store.sample_ranges()
    ]
    log.info(
        "reduce: fitting %d landmarks while %d tasks search every row's %d nearest",
        len(fit_rows),
        len(jobs),
        r.place_neighbors,
    )
    ray_ops.init(s.cluster)
    lm = ray_ops.put(landmarks)
    del landmarks
    rows_ref = ray_ops.put(fit_rows)
    usable = ray_ops.put(ok_mask)
    emb = ray_ops.submit(
        fit_task,
        lm,
        r.umap,
        backend,
        r.knn,
        r.fault,
        num_cpus=r.fit_cpus,
        num_gpus=max(r.fit_gpus, 1.0 if backend == "cuml" else 0.0),
    )
    placed = [
        ray_ops.submit(
            place_task,
            job,
            ray_ops.submit(
                search_task,
                job,
                lm,
                usable,
                r.device,
                num_cpus=r.transform_cpus,
                num_gpus=r.transform_gpus,
            ),
            emb,
            rows_ref,
            num_cpus=min(1.0, r.transform_cpus),
        )
        for job in jobs
    ]
    ray_ops.gather(
        [emb, *placed],
        desc="reduce",
        labels=["fit", *(f"rows {j.start}-{j.stop}" for j in jobs)],
        unit="task",
    )
    clock.lap("fit+transform")
    return store.rows(out_layer, "layout_raw")


def run(s: Settings, fp: str) -> StageResult:
    r = s.reduce
    store = RunStore.open(s.store_url, mode="r+", storage_options=s.storage_options)
    sources = sources_of(s)
    ok_mask = usable_rows(store, sources)
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
    if sampled:
        raw = _sampled(s, store, sources, ok_mask, fit_rows, backend, fp, clock)
    else:
        _, fit_layout = fit(
            features(sources, fit_rows), r.umap, backend, pca_dim=r.pca_dim, knn=r.knn
        )
        raw = np.full((len(ok_mask), 2), np.nan, np.float32)
        raw[ok] = fit_layout
        clock.lap("fit")
    norm, bounds = normalize_layout(raw)
    quality_rows = np.sort(
        np.random.default_rng(s.seed + 1).choice(ok, min(len(ok), r.quality_sample), replace=False)
    )
    quality = layout_quality(
        features(sources, quality_rows),
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
        "joint_layers": [f"{x.store_url}:{x.layer}" if r.align_with else x.layer for x in sources],
        **quality,
    }
    for name in r.joint_layers or (s.layer,):
        store.write_layout(name, norm, attrs)
    log.info("reduce: %d rows (%s fit on %d), %s", len(ok), backend, len(fit_rows), quality)
    return StageResult(
        counts={"rows": len(ok), "holes": int((~ok_mask).sum()), "fit_rows": len(fit_rows)},
        details={
            "backend": backend,
            "sampled_fit": sampled,
            "joint_layers": attrs["joint_layers"],
            "align_with": [list(x) for x in r.align_with],
            "pca_dim": r.pca_dim,
            "knn": r.knn,
            "peak_rss_mb_driver": peak_rss_mb(),
            **quality,
            "phase_seconds": clock.laps,
        },
    )
