"""Compose stage: XYZ tiles of every level, overview images, the viewer's sheets and page.

Every drawing is a Ray task that reads only the icons of its band of rows from the store and
writes its own files, so no process holds a level's canvas: a band of tiles at the level's
deepest zoom (``viewer/tiles/<G>/<z>/<x>/<y>.<ext>``), an overview strip (returned to the driver,
which stitches ``atlas-<G>.png`` at most ``compose.overview_px`` wide; ``atlas.png`` is the first
level's), a sheet of icons and of exemplar patches for the cards, or a range of source
thumbnails. The level's lower zooms are then made zoom by zoom, each tile from the 2 x 2 tiles
below it (box filter), so a task never holds more than a band of icons or two rows of tiles,
however many cells a low-zoom tile covers. The driver then writes the viewer: the pinned
Leaflet, the page, its script and style, and one data file.
"""

from __future__ import annotations

import io
import logging
import math
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np
from PIL import Image

from atlas_core.compose.tiles import (
    Level,
    cell_rows_in,
    density_scale,
    draw_region,
    icon_boxes,
    sheet,
    zoom_ranges,
)
from atlas_core.store import RunStore
from atlas_core.store.location import RunLocation
from pipelines.core import ray_ops
from pipelines.core.common import peak_rss_mb
from pipelines.core.settings import (
    BACKGROUNDS,
    TILE_FORMATS,
    ComposeConf,
    GridConf,
    RenderConf,
    Resources,
)
from pipelines.core.stage import Stage, StageResult, StageRun
from pipelines.stages import _viewer as viewer

log = logging.getLogger(__name__)
ICONS_PER_TASK = 2048  # icons a drawing task holds at most (besides the tile it draws)


@dataclass(frozen=True)
class Draw:
    """One band of one level at map width ``width``: tiles of zoom ``z`` (rows ``r0..r1`` of
    tiles) written under ``out`` (the view's ``viewer/tiles/<G>``), or (``z`` None) one
    overview strip of pixel rows [r0, r1)."""

    loc: RunLocation
    layer: str
    size: int
    width: int
    r0: int
    r1: int
    z: int | None
    out: str
    tile: int
    fmt: str
    background: int
    density: bool


def draw_task(job: Draw) -> dict[str, Any]:
    """Task body: draw the band from the icons of the cell rows it meets."""
    level = job.loc.open_store("r").level(job.layer, job.size)
    cell, count = level.cells()
    boxes = icon_boxes(cell, density_scale(count, job.density), job.size, job.width)
    px0, px1 = (job.r0 * job.tile, job.r1 * job.tile) if job.z is not None else (job.r0, job.r1)
    lo, hi = cell_rows_in(job.size, job.width, px0, min(px1, job.width))
    flat = cell[:, 1].astype(np.int64) * job.size + cell[:, 0]
    a, b = np.searchsorted(flat, [lo * job.size, (hi + 1) * job.size])
    icons = level.drawn(int(a), int(b), job.background)
    boxes, ids = boxes[a:b], np.arange(a, b)
    cache: dict[tuple[int, int, int], Image.Image] = {}
    if job.z is None:
        strip = draw_region(
            boxes, icons, (0, px0, job.width, px1), background=job.background, cache=cache, ids=ids
        )
        return {"strip": strip, "rss_mb": peak_rss_mb()}
    n = 0
    for ty in range(job.r0, job.r1):
        for tx in range(job.width // job.tile):
            region = (tx * job.tile, ty * job.tile, (tx + 1) * job.tile, (ty + 1) * job.tile)
            tile = draw_region(
                boxes, icons, region, background=job.background, cache=cache, ids=ids
            )
            job.loc.write_bytes(
                f"{job.out}/{job.z}/{tx}/{ty}.{TILE_FORMATS[job.fmt]}", _encode(tile, job.fmt)
            )
            n += 1
    return {"tiles": n, "rss_mb": peak_rss_mb()}


@dataclass(frozen=True)
class Sheets:
    """The card sprites of cells [start, stop) of a level: one sheet of their icons."""

    loc: RunLocation
    layer: str
    size: int
    start: int
    stop: int
    out: str
    columns: int
    background: int


def sheets_task(job: Sheets) -> dict[str, Any]:
    level = job.loc.open_store("r").level(job.layer, job.size)
    icons = level.drawn(job.start, job.stop, job.background)
    page = job.start // (job.columns * job.columns)
    job.loc.write_bytes(
        f"{job.out}/levels/{job.size}/icons-{page}.png",
        _encode(sheet(icons, job.columns, job.background), "png"),
    )
    return {"rss_mb": peak_rss_mb()}


@dataclass(frozen=True)
class Shrink:
    """Tile rows ``r0..r1`` of zoom ``z`` of a level, each the 2 x 2 tiles of zoom z + 1 below
    it, box-downsampled: the lower zooms of a level never read its icons."""

    loc: RunLocation
    size: int
    z: int
    r0: int
    r1: int
    out: str
    tile: int
    fmt: str


def shrink_task(job: Shrink) -> dict[str, Any]:
    ext, t = TILE_FORMATS[job.fmt], job.tile
    fs, root = fsspec.core.url_to_fs(job.out, **job.loc.storage_options)
    n = 0
    for ty in range(job.r0, job.r1):
        for tx in range(2**job.z):
            quad = Image.new("RGB", (2 * t, 2 * t))
            for dx in (0, 1):
                for dy in (0, 1):
                    with fs.open(f"{root}/{job.z + 1}/{2 * tx + dx}/{2 * ty + dy}.{ext}") as f:
                        quad.paste(Image.open(f).convert("RGB"), (dx * t, dy * t))
            small = quad.resize((t, t), Image.Resampling.BOX)
            job.loc.write_bytes(
                f"{job.out}/{job.z}/{tx}/{ty}.{ext}", _encode(np.asarray(small), job.fmt)
            )
            n += 1
    return {"tiles": n, "rss_mb": peak_rss_mb()}


def _shrink_jobs(ctx: StageRun, levels: list[Level], z: int) -> list[Shrink]:
    """Every level's tiles of zoom ``z`` still to make from zoom z + 1, in bands of rows."""
    c, out = ctx.conf(ComposeConf), ctx.loc.file("viewer", "tiles")
    n, rows = 2**z, max(1, 64 // 2**z)
    return [
        Shrink(
            ctx.loc,
            lv.size,
            z,
            r0,
            min(n, r0 + rows),
            f"{out}/{lv.size}",
            c.tile_px,
            c.tile_format,
        )
        for lv in levels
        if lv.zmin <= z < lv.zmax
        for r0 in range(0, n, rows)
    ]


def _encode(array: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    im = Image.fromarray(np.ascontiguousarray(array))
    if fmt == "png":
        im.save(buf, format="PNG", compress_level=6)
    else:
        im.save(buf, format=fmt.upper(), quality=90)
    return buf.getvalue()


def _draw_jobs(ctx: StageRun, levels: list[Level]) -> tuple[list[Draw], list[Draw]]:
    """Tile bands of every level's zooms, and overview strips of every level."""
    c, px = ctx.conf(ComposeConf), ctx.conf(RenderConf).icon_px
    tiles, strips = [], []
    common = (ctx.loc, ctx.s.layer)
    for lv in levels:
        z = lv.zmax  # the zooms below are shrunk from these tiles (:class:`Shrink`)
        n = 2**z
        per_row = lv.size * (math.ceil(lv.size / n) + 1)  # icons one row of tiles meets
        rows = max(1, min(n, ICONS_PER_TASK // max(per_row, 1), max(1, 256 // n)))
        for r0 in range(0, n, rows):
            tiles.append(
                Draw(
                    *common,
                    lv.size,
                    c.tile_px * n,
                    r0,
                    min(n, r0 + rows),
                    z,
                    ctx.loc.file("viewer", "tiles", str(lv.size)),
                    c.tile_px,
                    c.tile_format,
                    BACKGROUNDS[c.background],
                    c.density,
                )
            )
        width = min(lv.size * px, c.overview_px)
        band = max(1, ICONS_PER_TASK * width // (lv.size * lv.size))
        for y0 in range(0, width, band):
            strips.append(
                Draw(
                    *common,
                    lv.size,
                    width,
                    y0,
                    min(width, y0 + band),
                    None,
                    "",
                    c.tile_px,
                    "png",
                    BACKGROUNDS[c.background],
                    c.density,
                )
            )
    return tiles, strips


def _sheet_jobs(ctx: StageRun, store: RunStore) -> list[Sheets]:
    """Icon sheets of every level (exemplars need none: the page reads the exemplars stage's
    own sheets)."""
    c = ctx.conf(ComposeConf)
    out, per = ctx.loc.file("viewer"), c.sheet_columns**2
    common = (ctx.loc, ctx.s.layer)
    bg = BACKGROUNDS[c.background]
    jobs = []
    for g in ctx.conf(GridConf).sizes:
        m = len(store.level(ctx.s.layer, g).read("count"))
        jobs += [
            Sheets(*common, g, a, min(m, a + per), out, c.sheet_columns, bg)
            for a in range(0, m, per)
        ]
    return jobs


def _overviews(ctx: StageRun, strips: list[Draw], results: list[dict[str, Any]]) -> list[str]:
    files, sizes = [], ctx.conf(GridConf).sizes
    for g in sizes:
        parts = [r["strip"] for j, r in zip(strips, results, strict=True) if j.size == g]
        png = _encode(np.concatenate(parts, axis=0), "png")
        ctx.loc.write_bytes(ctx.loc.file(f"atlas-{g}.png"), png)
        files.append(f"atlas-{g}.png")
        if g == sizes[0]:
            ctx.loc.write_bytes(ctx.loc.file("atlas.png"), png)
            files.append("atlas.png")
    return files


def run(ctx: StageRun) -> StageResult:
    store = ctx.open_store("r")
    c = ctx.conf(ComposeConf)
    levels = zoom_ranges(ctx.conf(GridConf).sizes, ctx.conf(RenderConf).icon_px, c.tile_px)
    tiles, strips = _draw_jobs(ctx, levels)
    sheets = _sheet_jobs(ctx, store)
    ray_ops.init(ctx.s.cluster)
    res = ctx.resources()
    ray_ops.require("cluster.compose", res.num_cpus, res.num_gpus)
    jobs: list[Draw | Sheets] = [*tiles, *strips, *sheets]
    out: list[Any] = ray_ops.map_tasks(
        _any_task,
        jobs,
        num_cpus=res.num_cpus,
        num_gpus=res.num_gpus,
        desc="compose",
        labels=[_label(j) for j in jobs],
    )
    for z in range(max(lv.zmax for lv in levels) - 1, -1, -1):  # each zoom from the one above
        shrink = _shrink_jobs(ctx, levels, z)
        if shrink:
            out += ray_ops.map_tasks(
                shrink_task,
                shrink,
                num_cpus=res.num_cpus,
                num_gpus=res.num_gpus,
                desc=f"compose zoom {z}",
                labels=[f"zoom {z} of {j.size} rows {j.r0}..{j.r1}" for j in shrink],
            )
    files = _overviews(ctx, strips, out[len(tiles) : len(tiles) + len(strips)])
    files += viewer.write_viewer(ctx, store, levels)
    n_tiles = sum(r.get("tiles", 0) for r in out)
    log.info(
        "compose: %d tiles over %d levels, %s under %s",
        n_tiles,
        len(levels),
        ", ".join(files),
        ctx.loc.directory,
    )
    return StageResult(
        counts={"tiles": n_tiles, "levels": len(levels), "tasks": len(out)},
        details={
            "files": files,
            "zooms": {str(lv.size): [lv.zmin, lv.zmax] for lv in levels},
            "peak_rss_mb_driver": peak_rss_mb(),
            "peak_rss_mb_tasks": max((r["rss_mb"] for r in out), default=0.0),
        },
    )


def _any_task(job: Draw | Sheets) -> dict[str, Any]:
    return draw_task(job) if isinstance(job, Draw) else sheets_task(job)


def _label(job: Draw | Sheets) -> str:
    if isinstance(job, Sheets):
        return f"icon sheet of {job.size} {job.start}..{job.stop}"
    what = f"tiles z{job.z}" if job.z is not None else "overview"
    return f"{what} of {job.size} rows {job.r0}..{job.r1}"


def outputs(ctx: StageRun, store: RunStore) -> list[str]:
    """The overviews and the viewer's page, in the view's folder."""
    files = [
        "atlas.png",
        "viewer/index.html",
        *(f"atlas-{g}.png" for g in ctx.conf(GridConf).sizes),
    ]
    return [f for f in files if not ctx.loc.exists(ctx.loc.file(f))]


STAGE = Stage(
    name="compose",
    run=run,
    needs=("render", "exemplars", "plausibility"),
    settings=ComposeConf,
    resources={"compose": Resources()},
    outputs=outputs,
    reads="`grid/<G>/{cell,count,icons,icon_alpha,icon_cosine,icon_margin,icon_rank,top_*,"
    "attr_top_*,heat,exemplar_row}`, "
    "`layers/<L>/exemplars/*`, "
    "`layers/<L>/layout`, `images/{uri,top_class,top_prob,label}`, `samples/pos` (the points)",
    writes="`viewer/` (tiles, icon sheets, data per level and per card chunk, the explorer's "
    "points, page, Leaflet), "
    "`atlas.png`, `atlas-<G>.png` (in the view's folder)",
    ray="one task per band of tile rows of each zoom, per overview strip, per icon sheet "
    "(`map_tasks`); each reads only the icons of its band",
)
