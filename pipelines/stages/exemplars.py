"""Exemplars stage: the real images behind each cell, as patches in the run store.

plan: score tasks, one per extraction shard's rows, each returning the top-k (cosine to the cell
mean) of its rows for every level; the driver merges them into ``grid/<G>/exemplar_row``. Patch
tasks, one per ``exemplars.rows_per_task`` exemplar rows (a whole storage object of patches),
re-read the source images by their stored URI and crop (folders, file lists, tar members, object
stores alike), cut the layer's receptive field (measured from the model) around each sampled
position, and write the patches; each task also writes one thumbnail per source image whose
first exemplar row it holds, as JPEG bytes in the thumbnail slots it owns (one storage object:
a source is stored once, however many cells it serves). A source that cannot be re-read is
counted, not fatal: its patches stay blank and ``ok`` 0.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from atlas_core.data.decode import DecodePolicy, decode
from atlas_core.exemplars import (
    cosine_to_cells,
    merge_top_k,
    patch_box,
    source_box,
    take_patch,
    thumbnail_jpeg,
    top_k_per_cell,
)
from atlas_core.extract.sampling import map_positions
from atlas_core.grid import cell_index
from atlas_core.models.preprocess import Preprocess
from atlas_core.models.receptive import receptive_field
from atlas_core.store import RunStore
from atlas_core.store.check import missing_arrays
from pipelines.core import ray_ops
from pipelines.core.common import cached_model
from pipelines.core.schema import NOT_FINGERPRINTED, Group, Resources, choice
from pipelines.core.stage import Stage, StageResult, StageRun
from pipelines.stages.grid import GridConf, GridJob, grid_jobs

log = logging.getLogger(__name__)
Parts = tuple[np.ndarray, np.ndarray, np.ndarray]


@dataclass(frozen=True)
class ExemplarsConf(Group):
    """exemplars: for each kept cell of each level, the k samples whose activation is closest
    (cosine) to the cell's mean, as patches of their source image (the layer's receptive field
    around the sampled position) and a thumbnail of each source image."""

    GROUP: ClassVar[str] = "exemplars"
    k: int = 8
    patch_px: int = 64  # side of each stored patch
    thumb_px: int = 160  # longer side of each source image's thumbnail (JPEG)
    field: str = "effective"  # theoretical | effective: which receptive field a patch covers
    field_mass: float = 0.9  # the effective field holds this share of the gradient's mass
    rows_per_task: int = dataclasses.field(default=256, metadata=NOT_FINGERPRINTED)  # per task

    def __post_init__(self) -> None:
        choice("exemplars.field", self.field, ("theoretical", "effective"))
        self._ranges({
            "k": (1, 64), "patch_px": (8, 512), "thumb_px": (32, 2048),
            "field_mass": (0.05, 1.0), "rows_per_task": (1, None),
        })  # fmt: skip

    @property
    def thumb_bytes(self) -> int:
        """The most bytes one thumbnail may take (JPEG quality drops until it fits)."""
        return max(4096, self.thumb_px * self.thumb_px * 3 // 6)


def score_task(job: GridJob, k: int, means: dict[int, tuple[np.ndarray, np.ndarray]]
               ) -> list[Parts]:  # fmt: skip
    """Task body: per level, the top-k rows of [start, stop) of each kept cell."""
    _, xy, acts = job.open()
    rows = np.arange(job.start, job.stop)
    out = []
    for g in job.sizes:
        kept, unit = means[g]
        idx, score = cosine_to_cells(acts, cell_index(xy, g), kept, unit)
        out.append(top_k_per_cell(idx, score, rows, k))
    return out


@dataclass(frozen=True)
class PatchJob:
    """Exemplar rows [start, start + len(rows)) of the row list, their positions and images'
    URIs and crops; the thumbnail slots this job owns (slot, image row)."""

    store_url: str
    storage_options: dict[str, Any]
    prefix: str
    layer: str
    start: int
    rows: np.ndarray
    pos: np.ndarray  # (n, 2) (y, x) on the layer's grid
    images: np.ndarray
    uris: dict[int, str]
    crops: dict[int, tuple[int, int, int, int]]
    thumbs: tuple[tuple[int, int], ...]
    slot0: int  # the first slot of the job's storage object of thumbnails
    grid: tuple[int, int]
    side: float
    pre: Preprocess
    policy: DecodePolicy
    root: str | None
    patch_px: int
    thumb_px: int
    thumb_bytes: int


def patch_task(job: PatchJob) -> dict[str, Any]:
    """Task body: write the job's patches and thumbnails; return boxes, flags and sizes."""

    @lru_cache(maxsize=32)
    def load(image: int) -> Image.Image | None:  # a source's rows share one decode
        return _read(job.uris[image], job.policy, job.root)

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
    node = store.in_view(job.prefix).exemplars(job.layer)
    node.write("patch", job.start, patch)
    slots = node.array("thumb").chunks[0]
    thumbs = np.zeros((min(slots, node.array("thumb").shape[0] - job.slot0), job.thumb_bytes),
                      np.uint8)  # fmt: skip
    sizes = []
    for slot, image in job.thumbs:
        im = load(image)
        if im is None:
            continue
        blob, (w, h) = thumbnail_jpeg(im, job.thumb_px, job.thumb_bytes)
        thumbs[slot - job.slot0, : len(blob)] = np.frombuffer(blob, np.uint8)
        sizes.append((slot, len(blob), w, h))
    if len(thumbs):
        node.write("thumb", job.slot0, thumbs)
    return {"box": box, "ok": ok, "thumbs": sizes, "images": len(set(job.images.tolist()))}


def _read(uri: str, policy: DecodePolicy, root: str | None) -> Image.Image | None:
    return decode(uri, None, policy=policy, root=root).image


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


def _score(ctx: StageRun, store: RunStore) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Each level's (exemplar rows (M, k), scores (M, k)), from score tasks over every shard."""
    sizes, k = ctx.conf(GridConf).sizes, ctx.conf(ExemplarsConf).k
    means = {}
    for g in sizes:
        grid = store.level(ctx.s.layer, g).grid()
        kept = (grid.cell[:, 1].astype(np.int64) * g + grid.cell[:, 0]).astype(np.int64)
        norm = np.linalg.norm(grid.mean, axis=1, keepdims=True)
        means[g] = (kept, (grid.mean / np.maximum(norm, 1e-12)).astype(np.float32))
    jobs = grid_jobs(ctx, store, sizes)
    res = ctx.resources()
    shared = ray_ops.put(means)
    handles = [ray_ops.submit(score_task, j, k, shared, num_cpus=res.num_cpus,
                              num_gpus=res.num_gpus) for j in jobs]  # fmt: skip
    best: dict[int, Parts] = {}

    def merge(_: int, parts: list[Parts]) -> None:  # fold as they arrive: k per cell held
        for g, p in zip(sizes, parts, strict=True):
            if g in best:
                c, r, sc = (np.concatenate([x, y]) for x, y in zip(best[g], p, strict=True))
                p = top_k_per_cell(c, sc, r, k)
            best[g] = p

    ray_ops.gather(handles, desc="exemplar scores", labels=[f"rows {j.start}..{j.stop}"
                   for j in jobs], on_result=merge, keep=False)  # fmt: skip
    return {g: merge_top_k([best[g]] if g in best else [], len(means[g][0]), k) for g in sizes}


def _slots(images: np.ndarray, rc: int) -> tuple[np.ndarray, np.ndarray]:
    """Thumbnail slots: (slot of each exemplar row, source image of each slot (-1: unused)).
    Job j (rows [j * rc, (j + 1) * rc)) owns slots [j * rc, (j + 1) * rc), given to the sources
    whose first row it holds."""
    first = np.r_[True, images[1:] != images[:-1]]  # rows are sorted, so are their images
    n_jobs = max(1, -(-len(images) // rc))
    image_of_slot = np.full(n_jobs * rc, -1, np.int64)
    slot_of = {}
    for j in range(n_jobs):
        starts = np.flatnonzero(first[j * rc : (j + 1) * rc]) + j * rc
        for local, row in enumerate(starts):
            slot_of[int(images[row])] = j * rc + local
            image_of_slot[j * rc + local] = images[row]
    return np.array([slot_of[int(u)] for u in images], np.int32), image_of_slot


def _patch_jobs(ctx: StageRun, store: RunStore, rows: np.ndarray, image_of_slot: np.ndarray,
                side: float) -> list[PatchJob]:  # fmt: skip
    """One job per storage object of exemplar rows (``rows_per_task``); job j owns the
    thumbnail slots [j * rc, (j + 1) * rc)."""
    s, e = ctx.s, ctx.conf(ExemplarsConf)
    k, rc = store.k, e.rows_per_task
    images = rows // k
    grid_hw = (int(store.layers[s.layer][1]), int(store.layers[s.layer][2]))
    pos = _positions(store, rows, grid_hw)
    uris, crops = store.images.uris(), store.images.crops()
    pre = cached_model(s.model.spec, "cpu").preprocess
    jobs = []
    for a in range(0, len(rows), rc):
        b = min(a + rc, len(rows))
        uniq = [int(u) for u in np.unique(images[a:b])]
        own = tuple((a + j, int(u)) for j, u in enumerate(image_of_slot[a : a + rc]) if u >= 0)
        jobs.append(PatchJob(
            ctx.store_url, ctx.storage_options, ctx.view.store_prefix, s.layer, a, rows[a:b],
            pos[a:b], images[a:b], {u: str(uris[u]) for u in uniq},
            {u: (int(crops[u][0]), int(crops[u][1]), int(crops[u][2]), int(crops[u][3]))
             for u in uniq},
            own, a, grid_hw, side, pre, s.data.decode, store.attrs.get("root"),
            e.patch_px, e.thumb_px, e.thumb_bytes,
        ))  # fmt: skip
    return jobs


def _positions(store: RunStore, rows: np.ndarray, grid_hw: tuple[int, int]) -> np.ndarray:
    """(y, x) of sample ``rows`` on the layer's grid."""
    pos = store.samples.take("pos", rows)
    src = tuple(int(v) for v in store.attrs["position_grid"])
    return map_positions(pos.astype(np.int16), (src[0], src[1]), grid_hw)


def run(ctx: StageRun) -> StageResult:
    s, e = ctx.s, ctx.conf(ExemplarsConf)
    store = ctx.open_store("r+")
    ray_ops.init(s.cluster)
    res = ctx.resources()
    ray_ops.require("cluster.exemplars", res.num_cpus, res.num_gpus)
    chosen = _score(ctx, store)
    for g, (rows, scores) in chosen.items():
        level = store.level(s.layer, g)
        level.put_cells("exemplar_row", rows)
        level.put_cells("exemplar_score", scores)
    rows = np.unique(np.concatenate([r[r >= 0] for r, _ in chosen.values()]))
    model = cached_model(s.model.spec, "cpu")
    rf = receptive_field(model.module, s.layer, model.preprocess.size, mass=e.field_mass)
    side = rf.side(e.field)
    ok, read, seconds, sources = _patches(ctx, store, rows, side)
    node = store.exemplars(s.layer)
    node.set_attrs({"fingerprint": ctx.fp, "field": e.field, "field_px": side,
                    "theoretical_px": rf.theoretical, "effective_px": rf.effective,
                    "grid": list(rf.grid), "input_px": rf.input_px})  # fmt: skip
    n_ok = int(ok.sum())
    log.info(
        "exemplars: %d patches (%d failed) from %d images in %.1f s (%.1f images/s); field %d px",
        n_ok, len(rows) - n_ok, sources, seconds, read / max(seconds, 1e-9), side,
    )  # fmt: skip
    return StageResult(
        counts={
            "exemplar_rows": len(rows), "patches_ok": n_ok, "patches_failed": len(rows) - n_ok,
            "source_images": sources,
            "cells_with_exemplars": {str(g): int((r[:, 0] >= 0).sum()) for g, (r, _) in
                                     chosen.items()},
        },
        details={"field_px": side, "receptive_field": {"theoretical": rf.theoretical,
                 "effective": rf.effective, "grid": list(rf.grid)},
                 "patch_seconds": round(seconds, 3),
                 "images_per_s": round(read / max(seconds, 1e-9), 2)},
    )  # fmt: skip


def _patches(ctx: StageRun, store: RunStore, rows: np.ndarray, side: float
             ) -> tuple[np.ndarray, int, float, int]:  # fmt: skip
    """Patch tasks over the exemplar rows; the driver then writes the small arrays, ``ok``
    last. Returns (ok per row, source images read, seconds, source images)."""
    e, res = ctx.conf(ExemplarsConf), ctx.resources()
    slot, image_of_slot = _slots(rows // store.k, e.rows_per_task)
    node = store.exemplars(ctx.s.layer)
    node.create(["patch"], {"R": len(rows), "px": e.patch_px, "rc": e.rows_per_task})
    node.create(["thumb"], {"slots": len(image_of_slot), "tb": e.thumb_bytes,
                            "rc": e.rows_per_task})  # fmt: skip
    node.put("row", rows)
    node.put("slot", slot)
    node.put("image", image_of_slot)
    jobs = _patch_jobs(ctx, store, rows, image_of_slot, side)
    t0 = time.perf_counter()
    box, ok = np.full((len(rows), 4), np.nan, np.float32), np.zeros(len(rows), np.uint8)
    lens, wh = np.zeros(len(image_of_slot), np.int32), np.zeros((len(image_of_slot), 2), np.int32)
    read = [0]

    def collect(i: int, out: dict[str, Any]) -> None:
        a = jobs[i].start
        box[a : a + len(out["ok"])], ok[a : a + len(out["ok"])] = out["box"], out["ok"]
        for u, n, w, h in out["thumbs"]:
            lens[u], wh[u] = n, (w, h)
        read[0] += out["images"]

    ray_ops.map_tasks(
        patch_task, jobs, num_cpus=res.num_cpus, num_gpus=res.num_gpus, desc="exemplar patches",
        labels=[f"exemplar rows {j.start}..{j.start + len(j.rows)}" for j in jobs],
        on_result=collect, keep=False,
    )  # fmt: skip
    seconds = time.perf_counter() - t0
    node.put("box", box)
    node.put("thumb_len", lens)
    node.put("thumb_size", wh)
    node.put("ok", ok)  # last: the stage's rows are done
    return ok, read[0], seconds, int((image_of_slot >= 0).sum())


def outputs(ctx: StageRun, store: RunStore) -> list[str]:
    keys = [f"{store.exemplars(ctx.s.layer).path}/ok"]
    keys += [f"{store.level(ctx.s.layer, g).path}/exemplar_row" for g in ctx.conf(GridConf).sizes]
    return missing_arrays(store, keys)


STAGE = Stage(
    name="exemplars",
    run=run,
    needs=("grid",),
    settings=ExemplarsConf,
    resources={"exemplars": Resources()},
    outputs=outputs,
    reads="`layers/<L>/{layout,acts}`, `grid/<G>/{cell,mean}`, `images/{uri,crop}`, "
    "`samples/pos`, the source images",
    writes="`grid/<G>/exemplar_{row,score}`, `layers/<L>/exemplars/*` (patches; one JPEG "
    "thumbnail per source image)",
    ray="one scoring task per shard (top-k lists, merged as they arrive), then one patch task "
    "per storage object of exemplar rows, re-reading sources by URI",
)
