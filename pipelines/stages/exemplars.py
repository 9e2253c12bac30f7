"""Exemplars stage: the real images behind each cell, as patches beside the run store.

plan: score tasks, one per extraction shard's rows, each returning the top-k (cosine to the cell
mean) of its rows for every level, folded by the driver as they arrive into
``grid/<G>/exemplar_row``. The exemplar rows are put in sheet order (by their cell of the finest
level, so a cell's exemplars sit together) and cut into tasks of ``exemplars.rows_per_task``.
Each task re-reads its source images by their stored URI (folders, file lists, tar members,
object stores alike; one decode per source), cuts the layer's receptive field (measured from the
model) around each sampled position, and writes one JPEG sheet of its patches and one of the
thumbnails of the source images it is the first to use (a source image is stored once, however
many cells it serves). The driver writes the small index arrays. A source that cannot be re-read
is counted, not fatal: its patches stay blank and ``ok`` 0.
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
    top_k_per_cell,
)
from atlas_core.exemplars.sheets import SHEET_COLUMNS, fit, jpeg, pack
from atlas_core.extract.sampling import map_positions
from atlas_core.grid import cell_index
from atlas_core.models.preprocess import Preprocess
from atlas_core.store import RunStore
from atlas_core.store.check import missing_arrays
from atlas_core.store.location import RunLocation
from pipelines.core import ray_ops
from pipelines.core.common import inject_fault, test_fault
from pipelines.core.settings import ExemplarsConf, GridConf, Resources
from pipelines.core.stage import Stage, StageResult, StageRun
from pipelines.stages.grid import GridJob, grid_jobs

log = logging.getLogger(__name__)
Parts = tuple[np.ndarray, np.ndarray, np.ndarray]


def score_task(
    job: GridJob, k: int, means: dict[int, tuple[np.ndarray, np.ndarray]]
) -> list[Parts]:
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
    """Exemplars [start, start + len(rows)) of the sheet order: their sample rows, positions and
    images' URIs and crops; the thumbnail slots this job owns (slot, URI), from ``slot0``;
    where its two sheets go."""

    start: int
    rows: np.ndarray
    pos: np.ndarray  # (n, 2) (y, x) on the layer's grid
    images: np.ndarray
    uris: dict[int, str]
    crops: dict[int, tuple[int, int, int, int]]
    thumbs: tuple[tuple[int, str], ...]
    slot0: int
    loc: RunLocation  # the view's: its exemplars/<layer>/patches-<n>.jpg and sources-<n>.jpg
    layer: str
    sheet: int
    grid: tuple[int, int]
    side: float
    pre: Preprocess
    policy: DecodePolicy
    root: str | None
    patch_px: int
    thumb_px: int
    fault: str = ""


def patch_task(job: PatchJob) -> dict[str, Any]:
    """Task body: write the job's two sheets; return boxes, flags and thumbnail sizes."""
    inject_fault(job.fault, "patch", job.sheet)

    @lru_cache(maxsize=64)
    def load(uri: str) -> Image.Image | None:  # crops of one source share its decode
        return decode(uri, None, policy=job.policy, root=job.root).image

    n = len(job.rows)
    patches: list[np.ndarray | None] = [None] * n
    box = np.full((n, 4), np.nan, np.float32)
    ok = np.zeros(n, np.uint8)
    for i, (image, pos) in enumerate(zip(job.images, job.pos, strict=True)):
        im = load(job.uris[int(image)])
        if im is None:
            continue
        full = _source_box(job, im, int(image), (int(pos[0]), int(pos[1])))
        patches[i] = take_patch(im, full, job.patch_px)
        box[i] = np.array(full) / np.array([im.width, im.height, im.width, im.height])
        ok[i] = 1
    out = job.loc.exemplars_dir(job.layer)
    job.loc.write_bytes(f"{out}/patches-{job.sheet}.jpg", jpeg(pack(patches, job.patch_px)))
    thumbs: list[np.ndarray | None] = []
    sizes = []
    for slot, uri in job.thumbs:
        im = load(uri)
        thumbs.append(None if im is None else fit(im, job.thumb_px))
        if im is not None:
            sizes.append((slot, int(thumbs[-1].shape[1]), int(thumbs[-1].shape[0])))  # type: ignore[union-attr]
    if job.thumbs:
        job.loc.write_bytes(f"{out}/sources-{job.sheet}.jpg", jpeg(pack(thumbs, job.thumb_px), 80))
    ray_ops.count("atlas_exemplar_patches", int(ok.sum()), {"status": "ok"})
    ray_ops.count("atlas_exemplar_patches", int(n - ok.sum()), {"status": "failed"})
    return {
        "box": box,
        "ok": ok,
        "thumbs": sizes,
        "images": len({job.uris[int(u)] for u in job.images}),
    }


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
    handles = [
        ray_ops.submit(score_task, j, k, shared, num_cpus=res.num_cpus, num_gpus=res.num_gpus)
        for j in jobs
    ]
    best: dict[int, Parts] = {}
    waiting: list[list[Parts]] = []
    pending = [0]  # entries waiting

    def fold() -> None:  # every level's best k per cell, with the parts that came in
        for j, g in enumerate(sizes):
            parts = [p[j] for p in waiting] + ([best[g]] if g in best else [])
            c, r, sc = (np.concatenate(x) for x in zip(*parts, strict=True))
            best[g] = top_k_per_cell(c, sc, r, k)
        waiting.clear()
        pending[0] = 0

    def merge(_: int, parts: list[Parts]) -> None:
        # fold once as much has come in as the best lists hold (and at least 64 results): each
        # entry is sorted O(1) times on average, so the cost stays linear in the rows even when
        # the best lists (cells x k) grow with the run
        waiting.append(parts)
        pending[0] += sum(len(p[0]) for p in parts)
        if len(waiting) >= 64 and pending[0] >= sum(len(b[0]) for b in best.values()):
            fold()

    ray_ops.gather(
        handles,
        desc="exemplar scores",
        labels=[f"rows {j.start}..{j.stop}" for j in jobs],
        on_result=merge,
        keep=False,
    )
    if waiting:
        fold()
    return {g: merge_top_k([best[g]] if g in best else [], len(means[g][0]), k) for g in sizes}


def sheet_order(store: RunStore, layer: str, rows: np.ndarray, finest: int) -> np.ndarray:
    """``rows`` (sample rows) sorted by their cell of the finest level, then by row: the cells'
    exemplars sit together in the sheets, so a card reads one sheet or two."""
    xy = store.layout_node(layer).take("layout", np.sort(rows))
    cells = cell_index(xy, finest)
    order = np.lexsort((np.sort(rows), cells))
    return np.sort(rows)[order]


def _slots(uri_of: list[str], rc: int) -> tuple[np.ndarray, list[str]]:
    """Thumbnail slots, one per source URI: (slot of each exemplar, the URI of each slot ('' for
    an unused one)). Task j (exemplars
    [j * rc, (j + 1) * rc)) owns slots [j * rc, (j + 1) * rc), given to the URIs it is first to
    use."""
    n_jobs = max(1, -(-len(uri_of) // rc))
    slot_uri = [""] * (n_jobs * rc)
    slot_of: dict[str, int] = {}
    taken = [0] * n_jobs
    slot = np.empty(len(uri_of), np.int32)
    for i, uri in enumerate(uri_of):
        if uri not in slot_of:
            j = i // rc
            slot_of[uri] = j * rc + taken[j]
            slot_uri[slot_of[uri]] = uri
            taken[j] += 1
        slot[i] = slot_of[uri]
    return slot, slot_uri


def _patch_jobs(
    ctx: StageRun, store: RunStore, rows: np.ndarray, slot_uri: list[str], side: float
) -> list[PatchJob]:
    """One job per ``rows_per_task`` exemplars of the sheet order; job j owns the thumbnail
    slots [j * rc, (j + 1) * rc) and writes sheets j."""
    s, e = ctx.s, ctx.conf(ExemplarsConf)
    k, rc = store.k, e.rows_per_task
    images = rows // k
    grid_hw = (int(store.layers[s.layer][1]), int(store.layers[s.layer][2]))
    pos = _positions(store, rows, grid_hw)
    uris, crops = store.images.uris(), store.images.crops()
    pre = ctx.card.preprocess
    jobs = []
    for j, a in enumerate(range(0, len(rows), rc)):
        b = min(a + rc, len(rows))
        uniq = [int(u) for u in np.unique(images[a:b])]
        own = tuple((a + i, u) for i, u in enumerate(slot_uri[a : a + rc]) if u)
        jobs.append(
            PatchJob(
                a,
                rows[a:b],
                pos[a:b],
                images[a:b],
                {u: str(uris[u]) for u in uniq},
                {
                    u: (int(crops[u][0]), int(crops[u][1]), int(crops[u][2]), int(crops[u][3]))
                    for u in uniq
                },
                own,
                a,
                ctx.loc,
                s.layer,
                j,
                grid_hw,
                side,
                pre,
                s.data.decode,
                store.attrs.get("root"),
                e.patch_px,
                e.thumb_px,
                test_fault(),
            )
        )
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
    rf = ctx.card.fields[s.layer]
    side = rf.side(e.field)
    ok, read, seconds, sources = _patches(ctx, store, rows, side)
    store.exemplars(s.layer).set_attrs(_index_attrs(ctx, side))
    n_ok = int(ok.sum())
    log.info(
        "exemplars: %d patches (%d failed) from %d images in %.1f s (%.1f images/s); field %d px",
        n_ok,
        len(rows) - n_ok,
        sources,
        seconds,
        read / max(seconds, 1e-9),
        side,
    )
    return StageResult(
        counts={
            "exemplar_rows": len(rows),
            "patches_ok": n_ok,
            "patches_failed": len(rows) - n_ok,
            "source_images": sources,
            "cells_with_exemplars": {
                str(g): int((r[:, 0] >= 0).sum()) for g, (r, _) in chosen.items()
            },
        },
        details={
            "field_px": side,
            "receptive_field": {
                "theoretical": rf.theoretical,
                "effective": rf.effective,
                "grid": list(rf.grid),
            },
            "patch_seconds": round(seconds, 3),
            "images_per_s": round(read / max(seconds, 1e-9), 2),
        },
    )


def _index_attrs(ctx: StageRun, side: float) -> dict[str, Any]:
    """What a reader of the exemplar sheets needs: the field, the grid, the sheets' layout."""
    e, layer = ctx.conf(ExemplarsConf), ctx.s.layer
    rf = ctx.card.fields[layer]
    grid = ctx.card.token_grid
    return {
        "fingerprint": ctx.fp,
        "field": e.field,
        "field_px": side,
        "theoretical_px": rf.theoretical,
        "effective_px": rf.effective,
        "grid": list(rf.grid),
        "input_px": rf.input_px,
        # a transformer's token covers one patch; its measured field is wider
        "token_patch_px": grid.patch[0] if grid else None,
        "sheets": f"exemplars/{layer}",  # relative to the view's folder
        "per_sheet": e.rows_per_task,
        "sheet_columns": SHEET_COLUMNS,
        "patch_px": e.patch_px,
        "thumb_px": e.thumb_px,
    }


def _patches(
    ctx: StageRun, store: RunStore, rows: np.ndarray, side: float
) -> tuple[np.ndarray, int, float, int]:
    """Patch tasks over the exemplars in sheet order; the driver then writes the index arrays,
    ``ok`` last. Returns (ok per exemplar, source images read, seconds, source images)."""
    e, res = ctx.conf(ExemplarsConf), ctx.resources()
    rows = sheet_order(store, ctx.s.layer, rows, max(ctx.conf(GridConf).sizes))
    uris = store.images.uris()
    uri_of = [str(uris[r // store.k]) for r in rows]
    slot, slot_uri = _slots(uri_of, e.rows_per_task)
    first = {u: i for i, u in reversed(list(enumerate(uri_of)))}
    source = np.array([rows[first[u]] // store.k if u else -1 for u in slot_uri], np.int64)
    jobs = _patch_jobs(ctx, store, rows, slot_uri, side)
    t0 = time.perf_counter()
    box, ok = np.full((len(rows), 4), np.nan, np.float32), np.zeros(len(rows), np.uint8)
    wh = np.zeros((len(slot_uri), 2), np.int32)
    read = [0]

    def collect(i: int, out: dict[str, Any]) -> None:
        a = jobs[i].start
        box[a : a + len(out["ok"])], ok[a : a + len(out["ok"])] = out["box"], out["ok"]
        for u, w, h in out["thumbs"]:
            wh[u] = (w, h)
        read[0] += out["images"]

    ray_ops.map_tasks(
        patch_task,
        jobs,
        num_cpus=res.num_cpus,
        num_gpus=res.num_gpus,
        desc="exemplar patches",
        labels=[f"exemplars {j.start}..{j.start + len(j.rows)}" for j in jobs],
        on_result=collect,
        keep=False,
    )
    seconds = time.perf_counter() - t0
    node = store.exemplars(ctx.s.layer)
    for name, values in (
        ("row", rows),
        ("slot", slot),
        ("source", source),
        ("box", box),
        ("thumb_size", wh),
        ("ok", ok),
    ):  # ok last: the stage's rows are done
        node.put(name, values)
    return ok, read[0], seconds, int(sum(1 for u in slot_uri if u))


def outputs(ctx: StageRun, store: RunStore) -> list[str]:
    keys = [store.exemplars(ctx.s.layer).key("ok")]
    keys += [store.level(ctx.s.layer, g).key("exemplar_row") for g in ctx.conf(GridConf).sizes]
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
    writes="`grid/<G>/exemplar_{row,score}`, `layers/<L>/exemplars/*` (the index), "
    "`exemplars/<L>/{patches,sources}-<n>.jpg` (sheets; a source image once)",
    ray="one scoring task per shard (top-k lists, merged as they arrive), then one patch task "
    "per sheet of exemplars, re-reading sources by URI",
)
