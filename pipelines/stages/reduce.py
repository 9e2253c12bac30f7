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
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from omegaconf import II

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
from atlas_core.reduce.backends import BACKENDS, KNN_MODES
from atlas_core.reduce.params import INITS, METRICS, UmapParams
from atlas_core.store import Markers, RunStore
from atlas_core.store.check import missing_arrays
from pipelines.core import ray_ops
from pipelines.core.common import Clock, inject_fault, peak_rss_mb, test_fault
from pipelines.core.schema import Group, Resources, SettingsBase, choice, setting, store_url
from pipelines.core.stage import Stage, StageResult, StageRun
from pipelines.stages import _view_layout

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AlignConf:
    """One other run whose activations join this run's layout fit (``reduce.align_with``)."""

    run_dir: str = "???"
    layer: str = "???"


@dataclass(frozen=True)
class ReduceConf(Group):
    """reduce: UMAP and how it scales (landmark fit, exact search, placement)."""

    GROUP: ClassVar[str] = "reduce"
    backend: str = "auto"  # auto: cuML where the fit runs has it and a GPU, else umap-learn
    n_neighbors: int = 50
    min_dist: float = 0.05
    metric: str = "cosine"
    n_epochs: int | None = None
    init: str = "spectral"  # spectral | pca | random (pca: reproducible on disconnected graphs)
    seed: int = II("seed")
    extras: dict[str, Any] = field(default_factory=dict)  # {umap-learn: {...}, cuml: {...}}
    knn: str = "auto"  # kNN graph of a umap-learn fit: auto | exact | nndescent
    fit_rows: int = 100_000  # above: fit a seeded sample (the landmarks), place the rest
    pca_dim: int | None = None
    place_neighbors: int = 10
    quality_sample: int = 5000
    joint_layers: tuple[str, ...] = ()  # one joint fit over several extracted layers ...
    align_with: tuple[AlignConf, ...] = ()  # ... or over other runs on the same images

    def __post_init__(self) -> None:
        self._tuples()
        choice("reduce.backend", self.backend, BACKENDS)
        choice("reduce.metric", self.metric, METRICS)
        choice("reduce.init", self.init, INITS)
        choice("reduce.knn", self.knn, KNN_MODES)
        self._ranges(
            {
                "n_neighbors": (2, 10_000),
                "min_dist": (0.0, 1.0),
                "n_epochs": (1, None),
                "fit_rows": (2, None),
                "pca_dim": (1, None),
                "place_neighbors": (1, 1000),
                "quality_sample": (10, None),
            }
        )
        unknown = set(self.extras) - {"umap-learn", "cuml"}
        if unknown:
            raise ConfigError(
                "reduce.extras",
                sorted(unknown),
                choices=("umap-learn", "cuml"),
                fix="key the extras by backend: {umap-learn: {...}, cuml: {...}}.",
            )
        for item in self.align_with:
            if "???" in (item.run_dir, item.layer):
                raise ConfigError(
                    "reduce.align_with",
                    item,
                    fix="each entry is {run_dir: <another run on the same images>, "
                    "layer: <its layer>}.",
                )

    @property
    def umap(self) -> UmapParams:
        extras = {k: dict(v) for k, v in self.extras.items()}
        r = self
        return UmapParams(r.n_neighbors, r.min_dist, r.metric, r.n_epochs, r.init, r.seed, extras)


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
    blocks = [
        _open(s.store_url, s.storage_options).extraction(s.layer).take("acts", rows)
        for s in sources
    ]
    return blocks[0] if len(blocks) == 1 else joint_features(blocks)


def _canonical(url: str) -> str:
    return url if "://" in url else os.path.abspath(url)


def sources_of(s: SettingsBase) -> tuple[Source, ...]:
    """This run's layer(s) plus any aligned runs', in a canonical order (sorted by store and
    layer) so that every run of an aligned set builds the same feature rows."""
    opts = tuple(sorted(s.storage_options.items()))
    own = [Source(s.store_url, name, opts) for name in (s.joint_layers or (s.layer,))]
    other = [Source(store_url(a.run_dir), a.layer, opts) for a in s.reduce.align_with]
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
    store = RunStore.open(job.store_url, mode="r+", storage_options=job.storage_options)
    store.layout_node(job.layer).write("layout_raw", job.start, out)
    return len(rows)


# ---------------------------------------------------------------------------- stage
def _fit_and_place(
    ctx: StageRun,
    store: RunStore,
    sources: tuple[Source, ...],
    ok_mask: np.ndarray,
    fit_rows: np.ndarray,
    fp: str,
    clock: Clock,
) -> tuple[np.ndarray, dict[str, str]]:
    """The task graph above; returns the raw layout of every row (N * k, 2), NaN for holes, and
    where the fit ran."""
    s, r, res = ctx.s, ctx.conf(ReduceConf), ctx.s.cluster
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
    node.create(["layout_raw"], _sample_dims(store))
    fault = test_fault()
    jobs = [
        TransformJob(s.store_url, s.storage_options, out_layer, sources, a, b, fault)
        for a, b in store.sample_ranges()
    ]
    to_place = ok_mask.copy()
    to_place[fit_rows] = False  # landmarks keep their fitted positions
    log.info("reduce: fitting %d landmarks, placing %d rows", len(fit_rows), to_place.sum())
    ray_ops.init(s.cluster)
    sr = res.reduce_search
    lm, rows_ref, usable = (ray_ops.put(x) for x in (landmarks, fit_rows, to_place))
    del landmarks
    fit_gpus = max(res.reduce_fit.num_gpus, 1.0 if r.backend == "cuml" else 0.0)
    what = "reduce.backend=cuml: cluster.reduce_fit" if fit_gpus > res.reduce_fit.num_gpus else ""
    ray_ops.require(what or "cluster.reduce_fit", res.reduce_fit.num_cpus, fit_gpus)
    ray_ops.require("cluster.reduce_search", sr.num_cpus, sr.num_gpus)
    emb = ray_ops.submit(
        fit_task,
        lm,
        r.umap,
        _backend(ctx),
        r.knn,
        ctx.device("reduce_fit"),
        fault,
        num_cpus=res.reduce_fit.num_cpus,
        num_gpus=fit_gpus,
    )
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
    (_, where), *_ = ray_ops.gather(
        [emb, *placed],
        desc="reduce",
        unit="task",
        labels=["fit", *(f"rows {j.start}..{j.stop}" for j in jobs)],
    )
    clock.lap("fit+place")
    return node.read("layout_raw"), where


def _sample_dims(store: RunStore) -> dict[str, int]:
    """The per-sample dims of the store's layout arrays (storage objects like the acts')."""
    acts = store.extraction(next(iter(store.layers))).array("acts")
    obj, chunk = int((acts.shards or acts.chunks)[0]), int(acts.chunks[0])
    return {"ns": store.n_images * store.k, "cs": chunk, "os": obj}


def write_layout(store: RunStore, layer: str, norm: np.ndarray, attrs: dict[str, Any]) -> None:
    """The normalized layout (N * k, 2) of a view's layer, NaN rows for holes (driver)."""
    node = store.layout_node(layer)
    node.create(["layout"], _sample_dims(store))
    node.write("layout", 0, norm.astype(np.float32))
    node.array("layout").attrs.update(attrs)


def run(ctx: StageRun) -> StageResult:
    if ctx.view.layout is not None:  # a class view: its own samples, laid out whole
        return _view_layout.layout(ctx, write_layout)
    s, r, fp = ctx.s, ctx.conf(ReduceConf), ctx.fp
    store = ctx.open_store("r+")
    sources = sources_of(s)
    ok_mask = usable_rows(store, sources)
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
    raw, where = _fit_and_place(ctx, store, sources, ok_mask, fit_rows, fp, clock)
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
    joint = [f"{x.store_url}:{x.layer}" if r.align_with else x.layer for x in sources]
    attrs = {
        "backend": where["backend"],
        "bounds": bounds.tolist(),
        "fingerprint": fp,
        "joint_layers": joint,
        **quality,
    }
    for name in s.joint_layers or (s.layer,):
        write_layout(store, name, norm, attrs)
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
        marker = Markers(a.run_dir, ctx.storage_options).read("stage-extract")
        if marker is None:
            raise ConfigError(
                "reduce.align_with",
                a.run_dir,
                fix="that run has no finished extraction: run it with stages=[extract] first.",
            )
        out.append([a.run_dir, a.layer, str(marker.get("fingerprint"))])
    return out


def check(s: SettingsBase) -> None:
    """Joint layers must be extracted."""
    missing = [x for x in s.reduce.joint_layers if x not in s.extracted_layers]
    if missing:
        raise ConfigError(
            "reduce.joint_layers",
            missing,
            choices=s.extracted_layers,
            fix="joint layers must be extracted: add them to extract.layers.",
        )


def outputs(ctx: StageRun, store: RunStore) -> list[str]:
    layers = ctx.s.joint_layers if ctx.view.is_main and ctx.s.joint_layers else (ctx.s.layer,)
    return missing_arrays(store, [f"{store.layout_node(L).path}/layout" for L in layers])


STAGE = Stage(
    name="reduce",
    run=run,
    needs=("extract",),
    settings=ReduceConf,
    resources={"reduce_fit": Resources(), "reduce_search": Resources()},
    outputs=outputs,
    extra=aligned_extractions,
    check=check,
    reads="`layers/<L>/acts` (and aligned runs' acts), `images/status`; a class view: "
    "`layers/<L>/attr`",
    writes="`[views/<v>/]layers/<L>/layout` (+ bounds, quality attrs), `layers/<L>/layout_raw`",
    ray="one fit task + a search task and a place task per shard (`submit`/`gather` task "
    "graph); a class view: one layout task",
)
