"""Reduce stage: UMAP of the layer's activations, normalized, written position-addressed.

The fit always runs in a Ray task, so ``backend=auto`` is decided on the node that fits (cuML
where that node has it and a GPU). Up to ``reduce.fit_rows`` usable rows, every row is a landmark
and the searches have nothing to do; above, a seeded sample is, and the rest is placed:

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
    fit_landmarks,
    joint_features,
    layout_quality,
    normalize_layout,
    place,
)
from atlas_core.reduce.params import UmapParams
from atlas_core.store import RunStore
from atlas_core.store.check import missing_arrays
from atlas_core.store.location import RunLocation
from pipelines.core import ray_ops
from pipelines.core.common import Clock, inject_fault, peak_rss_mb, test_fault
from pipelines.core.settings import ReduceConf, Resources, Settings, setting
from pipelines.core.stage import Stage, StageResult, StageRun
from pipelines.stages import _view_layout

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Source:
    """One block of the features UMAP sees: a layer of a run."""

    loc: RunLocation
    layer: str


@dataclass(frozen=True)
class TransformJob:
    """Sample rows [start, stop) to place; the raw layout goes to ``layer`` of ``loc``."""

    loc: RunLocation
    layer: str
    sources: tuple[Source, ...]
    start: int
    stop: int
    fault: str = ""


def features(sources: tuple[Source, ...], rows: np.ndarray) -> np.ndarray:
    """The rows UMAP sees: one layer's activations, or the joint features of several blocks."""
    blocks = [s.loc.open_store("r").extraction(s.layer).take("acts", rows) for s in sources]
    return blocks[0] if len(blocks) == 1 else joint_features(blocks)


def _canonical(loc: RunLocation) -> str:
    return loc.store_url if "://" in loc.root else os.path.abspath(loc.store_url)


def sources_of(s: Settings) -> tuple[Source, ...]:
    """This run's layer(s) plus any aligned runs', in a canonical order (sorted by store and
    layer) so that every run of an aligned set builds the same feature rows."""
    own = [Source(s.location, name) for name in (s.joint_layers or (s.layer,))]
    other = [
        Source(RunLocation.of(a.run_dir, s.storage_options), a.layer) for a in s.reduce.align_with
    ]
    if not other:
        return tuple(own)
    return tuple(sorted(own + other, key=lambda x: (_canonical(x.loc), x.layer)))


def usable_rows(store: RunStore, loc: RunLocation, sources: tuple[Source, ...]) -> np.ndarray:
    """(N * k,) bool: rows usable in every source. Aligned runs must hold the same images in
    the same order with the same samples (k and seed, hence the same relative positions)."""
    ok = store.ok_samples()
    mine = store.manifest().uris
    for src in sources:
        if _canonical(src.loc) == _canonical(loc):
            continue
        other = src.loc.open_store("r")
        if src.layer not in other.layers:
            raise ConfigError(
                "reduce.align_with",
                f"{src.loc.root}:{src.layer}",
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
                src.loc.root,
                fix="aligned runs need the same images (data settings), samples_per_image and "
                "seed; re-extract one of them with the other's settings.",
            )
        ok &= other.ok_samples()
    return ok


# ---------------------------------------------------------------------------- task bodies
def fit_task(
    landmarks: Landmarks, params: UmapParams, backend: str, knn: str, device: str, fault: str = ""
) -> tuple[np.ndarray, dict[str, str]]:
    """Task body: the landmarks' raw 2-D layout (m, 2), and where it ran with which backend
    (``auto`` is resolved here, on the fitting node)."""
    inject_fault(fault, "fit", 0)
    with setting("reduce"):
        backend = choose_backend(backend)
    layout = fit_landmarks(landmarks, params, backend, knn=knn, device=device)
    return layout, {**ray_ops.where_am_i(), "backend": backend}


def search_task(
    job: TransformJob, landmarks: Landmarks, usable: np.ndarray, device: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Task body: (rows, nearest landmark indices, distances) of the job's usable rows
    (``usable``: the driver's :func:`usable_rows` mask, shared once)."""
    inject_fault(job.fault, "search", job.start)
    ok = np.flatnonzero(usable[job.start : job.stop]) + job.start
    if not len(ok):  # every usable row of this shard is a landmark
        return ok, np.zeros((0, landmarks.n_place), np.int64), np.zeros((0, landmarks.n_place))
    idx, dist = landmarks.neighbors(features(job.sources, ok), device=device)
    return ok, idx, dist


def place_task(
    job: TransformJob,
    found: tuple[np.ndarray, np.ndarray, np.ndarray],
    fitted: tuple[np.ndarray, dict[str, str]],
    fit_rows: np.ndarray,
) -> int:
    """Task body: place the job's rows and write the raw layout to rows [start, stop). Landmark
    rows keep their fitted position."""
    rows, idx, dist = found
    embedding = fitted[0]
    out = np.full((job.stop - job.start, 2), np.nan, np.float32)
    if len(rows):
        out[rows - job.start] = place(idx, dist, embedding)
    a, b = np.searchsorted(fit_rows, [job.start, job.stop])
    out[fit_rows[a:b] - job.start] = embedding[a:b]
    job.loc.open_store("r+").layout_node(job.layer).write("layout_raw", job.start, out)
    return len(rows)


# ---------------------------------------------------------------------------- stage
def _fit_and_place(
    ctx: StageRun,
    store: RunStore,
    sources: tuple[Source, ...],
    ok_mask: np.ndarray,
    fit_rows: np.ndarray,
    clock: Clock,
) -> tuple[np.ndarray, dict[str, str]]:
    """The task graph above; returns the raw layout of every row (N * k, 2), NaN for holes, and
    where the fit ran."""
    s, r = ctx.s, ctx.conf(ReduceConf)
    landmarks = Landmarks.build(
        features(sources, fit_rows),
        r.metric,
        pca_dim=r.pca_dim,
        seed=r.seed,
        n_place=r.place_neighbors,
    )
    clock.lap("landmarks")
    out_layer = (s.joint_layers or (s.layer,))[0]
    node = store.layout_node(out_layer)
    node.create(["layout_raw"], store.sample_dims())
    jobs = [
        TransformJob(s.location, out_layer, sources, a, b, test_fault())
        for a, b in store.sample_ranges()
    ]
    to_place = ok_mask.copy()
    to_place[fit_rows] = False  # landmarks keep their fitted positions
    log.info("reduce: fitting %d landmarks, placing %d rows", len(fit_rows), to_place.sum())
    ray_ops.init(s.cluster)
    lm, rows_ref, usable = (ray_ops.put(x) for x in (landmarks, fit_rows, to_place))
    del landmarks
    emb = _submit_fit(ctx, lm)
    sr = s.cluster.reduce_search
    found = [
        ray_ops.submit(
            search_task,
            j,
            lm,
            usable,
            ctx.device("reduce_search"),
            num_cpus=sr.num_cpus,
            num_gpus=sr.num_gpus,
        )
        for j in jobs
    ]
    placed = [
        ray_ops.submit(place_task, j, f, emb, rows_ref, num_cpus=min(1.0, sr.num_cpus))
        for j, f in zip(jobs, found, strict=True)
    ]
    labels = ["fit", *(f"rows {j.start}..{j.stop}" for j in jobs)]
    (_, where), *_ = ray_ops.gather([emb, *placed], desc="reduce", unit="task", labels=labels)
    clock.lap("fit+place")
    return node.read("layout_raw"), where


def _submit_fit(ctx: StageRun, landmarks: Any) -> Any:
    """The fit task (its handle), after checking some node can hold it and the searches; with
    ``reduce.backend=cuml`` the fit asks for a GPU."""
    r, res = ctx.conf(ReduceConf), ctx.s.cluster
    fit_gpus = max(res.reduce_fit.num_gpus, 1.0 if r.backend == "cuml" else 0.0)
    what = "reduce.backend=cuml: cluster.reduce_fit" if fit_gpus > res.reduce_fit.num_gpus else ""
    ray_ops.require(what or "cluster.reduce_fit", res.reduce_fit.num_cpus, fit_gpus)
    sr = res.reduce_search
    ray_ops.require("cluster.reduce_search", sr.num_cpus, sr.num_gpus)
    device, fault = ctx.device("reduce_fit"), test_fault()
    return ray_ops.submit(
        fit_task,
        landmarks,
        r,
        _backend(ctx),
        r.knn,
        device,
        fault,
        num_cpus=res.reduce_fit.num_cpus,
        num_gpus=fit_gpus,
    )


def write_layout(store: RunStore, layer: str, norm: np.ndarray, attrs: dict[str, Any]) -> None:
    """The normalized layout (N * k, 2) of a view's layer, NaN rows for holes (driver)."""
    node = store.layout_node(layer)
    node.create(["layout"], store.sample_dims())
    node.write("layout", 0, norm.astype(np.float32))
    node.array("layout").attrs.update(attrs)


def run(ctx: StageRun) -> StageResult:
    if ctx.view.layout is not None:  # a class view: its own samples, laid out whole
        return _view_layout.layout(ctx, write_layout)
    s, r, fp = ctx.s, ctx.conf(ReduceConf), ctx.fp
    store = ctx.open_store("r+")
    sources = sources_of(s)
    ok_mask = usable_rows(store, s.location, sources)
    ok = np.flatnonzero(ok_mask)
    if len(ok) <= r.n_neighbors:
        raise StoreError(
            f"only {len(ok)} usable activation rows for layer {s.layer}, fewer than "
            f"n_neighbors={r.n_neighbors}: add images (data.n_images) or lower reduce.n_neighbors"
        )
    sampled = len(ok) > r.fit_rows
    rng = np.random.default_rng(s.seed)
    fit_rows = np.sort(rng.choice(ok, r.fit_rows, replace=False)) if sampled else ok
    clock = Clock()
    raw, where = _fit_and_place(ctx, store, sources, ok_mask, fit_rows, clock)
    norm, bounds = normalize_layout(raw)
    q_rng = np.random.default_rng(s.seed + 1)
    quality_rows = np.sort(q_rng.choice(ok, min(len(ok), r.quality_sample), replace=False))
    quality = layout_quality(
        features(sources, quality_rows),
        norm[quality_rows],
        metric=r.metric,
        sample=r.quality_sample,
        seed=s.seed,
    )
    clock.lap("quality")
    joint = [f"{x.loc.store_url}:{x.layer}" if r.align_with else x.layer for x in sources]
    attrs = {
        "backend": where["backend"],
        "bounds": bounds.tolist(),
        "fingerprint": fp,
        "joint_layers": joint,
        **quality,
    }
    _write_layouts(ctx, store, norm, attrs, fit_rows)
    log.info("reduce: %d rows (fit on %d with %s): %s", len(ok), len(fit_rows), where, quality)
    details = {
        "backend": where["backend"],
        "where": where,
        "sampled_fit": sampled,
        "joint_layers": joint,
        "align_with": [[a.run_dir, a.layer] for a in r.align_with],
        "pca_dim": r.pca_dim,
        "knn": r.knn,
        "peak_rss_mb_driver": peak_rss_mb(),
        **quality,
        "phase_seconds": clock.laps,
    }
    counts = {"rows": len(ok), "holes": int((~ok_mask).sum()), "fit_rows": len(fit_rows)}
    return StageResult(counts=counts, details=details)


def _write_layouts(
    ctx: StageRun, store: RunStore, norm: np.ndarray, attrs: dict[str, Any], fit_rows: np.ndarray
) -> None:
    """The normalized layout of every laid-out layer, with what places a new row in it: the
    landmark rows and how they were searched (the atlas API's locate rebuilds it)."""
    r = ctx.conf(ReduceConf)
    placement = {
        "metric": r.metric,
        "pca_dim": r.pca_dim,
        "seed": r.seed,
        "place_neighbors": r.place_neighbors,
    }
    for name in ctx.s.joint_layers or (ctx.s.layer,):
        write_layout(store, name, norm, {**attrs, "placement": placement})
        store.layout_node(name).put("landmark_rows", fit_rows.astype(np.int64))


def _backend(ctx: StageRun) -> str:
    """``reduce.backend``; ``auto`` where the fit asks for CUDA (on a cluster: a GPU for the fit
    and ``cluster.reduce_fit.device`` not set to cpu) means cuML, and a fit node without it fails
    naming what to install (never a silent 50x slower umap-learn)."""
    r = ctx.conf(ReduceConf)
    if r.backend == "auto" and ctx.device("reduce_fit") == "cuda":
        return "cuml"
    return r.backend


def aligned_extractions(ctx: StageRun) -> list[list[str]]:
    """(run_dir, layer, extract fingerprint) of each run in reduce.align_with: a re-extracted
    aligned run changes this run's reduce fingerprint, so the layout is refitted."""
    out = []
    for a in ctx.s.reduce.align_with if ctx.view.is_main else ():
        marker = RunLocation.of(a.run_dir, ctx.s.storage_options).markers().read("stage-extract")
        if marker is None:
            raise ConfigError(
                "reduce.align_with",
                a.run_dir,
                fix="that run has no finished extraction: run it with stages=[extract] first.",
            )
        out.append([a.run_dir, a.layer, str(marker.get("fingerprint"))])
    return out


def outputs(ctx: StageRun, store: RunStore) -> list[str]:
    layers = ctx.s.joint_layers if ctx.view.is_main and ctx.s.joint_layers else (ctx.s.layer,)
    return missing_arrays(store, [store.layout_node(L).key("layout") for L in layers])


STAGE = Stage(
    name="reduce",
    run=run,
    needs=("extract",),
    settings=ReduceConf,
    resources={"reduce_fit": Resources(), "reduce_search": Resources()},
    outputs=outputs,
    extra=aligned_extractions,
    reads="`layers/<L>/acts` (and aligned runs' acts), `images/status`; a class view: "
    "`layers/<L>/attr`",
    writes="`[views/<v>/]layers/<L>/layout` (+ bounds, quality attrs), `layers/<L>/layout_raw`",
    ray="one fit task + a search task and a place task per shard (`submit`/`gather` task "
    "graph); a class view: one layout task",
)
