"""Exemplars stage: the real images behind each cell, as patches in the run store.

plan: score tasks, one per extraction shard's rows, each returning the top-k (cosine to the cell
mean) of its rows for every level; the driver merges them into ``grid/<G>/exemplar_row``. Patch
tasks, one per chunk-aligned range of the chosen sample rows, re-read the source images by their
stored URI and crop (folders, file lists, tar members, object stores alike), cut the layer's
receptive field (measured from the model) around each sampled position, and write the patches and
a thumbnail of each source image. A source that cannot be re-read is counted, not fatal: its
patches stay blank and ``ok`` 0.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image

from atlas_core.data.decode import DecodePolicy, decode
from atlas_core.exemplars import (
    cosine_to_cells,
    merge_top_k,
    patch_box,
    source_box,
    take_patch,
    thumbnail,
    top_k_per_cell,
)
from atlas_core.extract.sampling import map_positions
from atlas_core.grid import cell_index
from atlas_core.models.preprocess import Preprocess
from atlas_core.models.receptive import receptive_field
from atlas_core.store import RunStore
from pipelines import ray_ops
from pipelines.common import StageResult, cached_model
from pipelines.grid import GridJob
from pipelines.settings import Settings

log = logging.getLogger(__name__)
Parts = tuple[np.ndarray, np.ndarray, np.ndarray]


@dataclass(frozen=True)
class ScoreJob(GridJob):
    """The grid's row range, and how many exemplars each cell keeps."""

    k: int = 8


def score_task(job: ScoreJob, means: dict[int, tuple[np.ndarray, np.ndarray]]) -> list[Parts]:
    """Task body: per level, the top-k rows of [start, stop) of each kept cell."""
    store = RunStore.open(job.store_url, mode="r", storage_options=job.storage_options)
    xy = store.layout(job.layer, job.start, job.stop)
    acts = store.acts(job.layer, job.start, job.stop)
    rows = np.arange(job.start, job.stop)
    out = []
    for g in job.sizes:
        kept, unit = means[g]
        idx, score = cosine_to_cells(acts, cell_index(xy, g), kept, unit)
        out.append(top_k_per_cell(idx, score, rows, job.k))
    return out


@dataclass(frozen=True)
class PatchJob:
    """Exemplar rows [start, start + len(rows)) of the row list; their images' URIs and crops;
    the thumbnails this job owns (index into the image list, image row)."""

    store_url: str
    storage_options: dict[str, Any]
    layer: str
    start: int
    rows: np.ndarray
    pos: np.ndarray  # (n, 2) (y, x) on the layer's grid
    images: np.ndarray
    uris: dict[int, str]
    crops: dict[int, tuple[int, int, int, int]]
    thumbs: tuple[tuple[int, int], ...]
    grid: tuple[int, int]
    side: float
    pre: Preprocess
    policy: DecodePolicy
    root: str | None
    patch_px: int
    thumb_px: int


def patch_task(job: PatchJob) -> dict[str, Any]:
    """Task body: write the job's patches and thumbnails; return thumbnail sizes and counts."""

    @lru_cache(maxsize=16)
    def read(uri: str) -> Image.Image | None:  # crops of one photo share its decode
        return decode(uri, None, policy=job.policy, root=job.root).image

    def load(image: int) -> Image.Image | None:
        return read(job.uris[image])

    n, px = len(job.rows), job.patch_px
    patch = np.full((n, px, px, 3), 255, np.uint8)
    box = np.full((n, 4), np.nan, np.float32)
    ok = np.zeros(n, np.uint8)
    for i, (image, pos) in enumerate(zip(job.images, job.pos, strict=True)):
        im = load(int(image))
        if im is None:
            continue
        full = _source_box(job, im, int(image), (int(pos[0]), int(pos[1])))
        patch[i] = take_patch(im, full, px)
        box[i] = np.array(full) / np.array([im.width, im.height, im.width, im.height])
        ok[i] = 1
    store = RunStore.open(job.store_url, mode="r+", storage_options=job.storage_options)
    store.write_exemplar_patches(job.layer, job.start, patch, box, ok)
    sizes, index, thumbs = [], [], []
    for u, image in job.thumbs:
        im = load(image)
        if im is None:
            continue
        t, wh = thumbnail(im, job.thumb_px)
        index.append(u)
        thumbs.append(t)
        sizes.append((u, *wh))
    if thumbs:
        store.write_thumbs(job.layer, np.array(index), np.stack(thumbs))
    return {"sizes": sizes, "ok": int(ok.sum()), "failed": int(n - ok.sum()),
            "images": len(set(job.images.tolist()))}  # fmt: skip


def _source_box(
    job: PatchJob, im: Image.Image, image: int, pos: tuple[int, int]
) -> tuple[float, float, float, float]:
    """The patch's box in the whole source image's pixels (the manifest's crop undone)."""
    crop = job.crops[image]
    ox, oy, w, h = 0, 0, im.width, im.height
    if crop[0] >= 0:
        ox, oy, w, h = crop[0], crop[1], crop[2] - crop[0], crop[3] - crop[1]
    inp = patch_box(pos, job.grid, job.side, job.pre.size)
    x0, y0, x1, y1 = source_box(inp, w, h, job.pre)
    return x0 + ox, y0 + oy, x1 + ox, y1 + oy


def _score(s: Settings, store: RunStore) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Each level's (exemplar rows (M, k), scores (M, k)), from score tasks over every shard."""
    means = {}
    for g in s.grid.sizes:
        grid = store.grid(s.layer, g)
        kept = (grid.cell[:, 1].astype(np.int64) * g + grid.cell[:, 0]).astype(np.int64)
        norm = np.linalg.norm(grid.mean, axis=1, keepdims=True)
        means[g] = (kept, (grid.mean / np.maximum(norm, 1e-12)).astype(np.float32))
    jobs = [
        ScoreJob(s.store_url, s.storage_options, s.layer, s.grid.sizes, a, b, s.exemplars.k)
        for a, b in store.sample_ranges()
    ]
    res = s.cluster.exemplars
    parts = ray_ops.map_tasks(
        score_task, jobs, num_cpus=res.num_cpus, num_gpus=res.num_gpus, desc="exemplar scores",
        shared=means, labels=[f"rows {j.start}..{j.stop}" for j in jobs],
    )  # fmt: skip
    return {
        g: merge_top_k([p[i] for p in parts], len(means[g][0]), s.exemplars.k)
        for i, g in enumerate(s.grid.sizes)
    }


def _patch_jobs(s: Settings, store: RunStore, rows: np.ndarray, side: float) -> list[PatchJob]:
    """Chunk-aligned ranges of the exemplar rows; each image's thumbnail is owned by the job
    holding its first row."""
    k, e = store.k, s.exemplars
    images = rows // k
    uniq = np.unique(images)
    grid_hw = tuple(store.layers[s.layer][1:])
    pos = _positions(store, rows, grid_hw)
    uris, crops = store.uris(), store.crops()
    first = {int(u): i for i, u in reversed(list(enumerate(images)))}
    ucount = {int(u): j for j, u in enumerate(uniq)}
    jobs = []
    for a in range(0, len(rows), e.rows_per_task):
        b = min(a + e.rows_per_task, len(rows))
        imgs = images[a:b]
        own = tuple((ucount[int(u)], int(u)) for u in np.unique(imgs) if a <= first[int(u)] < b)
        jobs.append(PatchJob(
            s.store_url, s.storage_options, s.layer, a, rows[a:b], pos[a:b], imgs,
            {int(u): str(uris[u]) for u in np.unique(imgs)},
            {int(u): tuple(int(v) for v in crops[u]) for u in np.unique(imgs)},  # type: ignore[misc]
            own, grid_hw, side, cached_model(s.model.spec, "cpu").preprocess,  # type: ignore[arg-type]
            s.data.decode, store.attrs.get("root"), e.patch_px, e.thumb_px,
        ))  # fmt: skip
    return jobs


def _positions(store: RunStore, rows: np.ndarray, grid_hw: tuple[int, ...]) -> np.ndarray:
    """(y, x) of sample ``rows`` on the layer's grid."""
    k = store.k
    out = np.zeros((len(rows), 2), np.int16)
    for a, b in store.attrs["shards"]:  # read positions shard by shard, only where needed
        sel = (rows >= a * k) & (rows < b * k)
        if sel.any():
            out[sel] = store.positions(a, b)[rows[sel] - a * k]
    src = tuple(int(v) for v in store.attrs["position_grid"])
    return map_positions(out, (src[0], src[1]), (int(grid_hw[0]), int(grid_hw[1])))


def run(s: Settings, fp: str) -> StageResult:
    store = RunStore.open(s.store_url, mode="r+", storage_options=s.storage_options)
    ray_ops.init(s.cluster)
    res, e = s.cluster.exemplars, s.exemplars
    ray_ops.require("cluster.exemplars", res.num_cpus, res.num_gpus)
    chosen = _score(s, store)
    for g, (rows, scores) in chosen.items():
        store.write_grid_extra(s.layer, g, "exemplar_row", rows)
        store.write_grid_extra(s.layer, g, "exemplar_score", scores)
    rows = np.unique(np.concatenate([r[r >= 0] for r, _ in chosen.values()]))
    model = cached_model(s.model.spec, "cpu")
    rf = receptive_field(model.module, s.layer, model.preprocess.size, mass=e.field_mass)
    side = rf.side(e.field)
    images = np.unique(rows // store.k)
    store.create_exemplars(
        s.layer, rows, images, (e.patch_px, e.thumb_px, e.rows_per_task),
        {"fingerprint": fp, "field": e.field, "field_px": side, "theoretical_px": rf.theoretical,
         "effective_px": rf.effective, "grid": list(rf.grid), "input_px": rf.input_px},
    )  # fmt: skip
    jobs = _patch_jobs(s, store, rows, side)
    t0 = time.perf_counter()
    out = ray_ops.map_tasks(
        patch_task, jobs, num_cpus=res.num_cpus, num_gpus=res.num_gpus, desc="exemplar patches",
        labels=[f"exemplar rows {j.start}..{j.start + len(j.rows)}" for j in jobs],
    )  # fmt: skip
    seconds = time.perf_counter() - t0
    sizes = np.zeros((len(images), 2), np.int32)
    for o in out:
        for u, w, h in o["sizes"]:
            sizes[u] = (w, h)
    store.write_thumb_sizes(s.layer, sizes)
    ok, failed = sum(o["ok"] for o in out), sum(o["failed"] for o in out)
    read = sum(o["images"] for o in out)
    log.info(
        "exemplars: %d patches (%d failed) from %d images in %.1f s (%.1f images/s); field %d px",
        ok, failed, len(images), seconds, read / max(seconds, 1e-9), side,
    )  # fmt: skip
    return StageResult(
        counts={
            "exemplar_rows": len(rows), "patches_ok": ok, "patches_failed": failed,
            "source_images": len(images),
            "cells_with_exemplars": {str(g): int((r[:, 0] >= 0).sum()) for g, (r, _) in
                                     chosen.items()},
        },
        details={"field_px": side, "receptive_field": {"theoretical": rf.theoretical,
                 "effective": rf.effective, "grid": list(rf.grid)},
                 "patch_seconds": round(seconds, 3),
                 "images_per_s": round(read / max(seconds, 1e-9), 2)},
    )  # fmt: skip
