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
from pipelines import ray_ops, viewer
from pipelines.common import StageResult, peak_rss_mb
from pipelines.settings import BACKGROUNDS, TILE_FORMATS, Settings
from pipelines.viewer import EXEMPLAR_ROWS

log = logging.getLogger(__name__)
ICONS_PER_TASK = 2048  # icons a drawing task holds at most (besides the tile it draws)


@dataclass(frozen=True)
class Draw:
    """One band of one level at map width ``width``: tiles of zoom ``z`` (rows ``r0..r1`` of
    tiles) written under ``out``, or (``z`` None) one overview strip of pixel rows [r0, r1)."""

    store_url: str
    storage_options: dict[str, Any]
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
    store = RunStore.open(job.store_url, mode="r", storage_options=job.storage_options)
    cell, count = store.grid_cells(job.layer, job.size)
    boxes = icon_boxes(cell, density_scale(count, job.density), job.size, job.width)
    px0, px1 = (job.r0 * job.tile, job.r1 * job.tile) if job.z is not None else (job.r0, job.r1)
    lo, hi = cell_rows_in(job.size, job.width, px0, min(px1, job.width))
    flat = cell[:, 1].astype(np.int64) * job.size + cell[:, 0]
    a, b = np.searchsorted(flat, [lo * job.size, (hi + 1) * job.size])
    icons = store.icon_rows(job.layer, job.size, int(a), int(b))
    boxes, ids = boxes[a:b], np.arange(a, b)
    cache: dict[tuple[int, int, int], Image.Image] = {}
    if job.z is None:
        strip = draw_region(boxes, icons, (0, px0, job.width, px1), background=job.background,
                            cache=cache, ids=ids)  # fmt: skip
        return {"strip": strip, "rss_mb": peak_rss_mb()}
    n = 0
    for ty in range(job.r0, job.r1):
        for tx in range(job.width // job.tile):
            region = (tx * job.tile, ty * job.tile, (tx + 1) * job.tile, (ty + 1) * job.tile)
            tile = draw_region(boxes, icons, region, background=job.background, cache=cache,
                               ids=ids)  # fmt: skip
            _write(f"{job.out}/{job.z}/{tx}/{ty}.{TILE_FORMATS[job.fmt]}",
                   _encode(tile, job.fmt), job.storage_options)  # fmt: skip
            n += 1
    return {"tiles": n, "rss_mb": peak_rss_mb()}


@dataclass(frozen=True)
class Sheets:
    """Card sprites of cells [start, stop) of a level: one icon sheet, and exemplar sheets of
    ``EXEMPLAR_ROWS`` cells each; or (``size`` 0) source thumbnails [start, stop)."""

    store_url: str
    storage_options: dict[str, Any]
    layer: str
    size: int
    start: int
    stop: int
    out: str
    columns: int
    background: int


def sheets_task(job: Sheets) -> dict[str, Any]:
    store = RunStore.open(job.store_url, mode="r", storage_options=job.storage_options)
    ex = store.exemplar_index(job.layer)
    if job.size == 0:  # source thumbnails
        assert ex is not None
        thumbs = store.thumbs(job.layer, job.start, job.stop)
        for u, t in zip(range(job.start, job.stop), thumbs, strict=True):
            w, h = (int(v) for v in ex["thumb_size"][u])
            if w and h:
                _write(f"{job.out}/sources/{u}.jpg", _encode(t[:h, :w], "jpeg"),
                       job.storage_options)  # fmt: skip
        return {"rss_mb": peak_rss_mb()}
    icons = store.icon_rows(job.layer, job.size, job.start, job.stop)
    base = f"{job.out}/levels/{job.size}"
    page = job.start // (job.columns * job.columns)
    _write(f"{base}/icons-{page}.png", _encode(sheet(icons, job.columns, job.background), "png"),
           job.storage_options)  # fmt: skip
    rows = store.grid_extra(job.layer, job.size, "exemplar_row")
    if ex is not None and rows is not None:
        for a in range(job.start, job.stop, EXEMPLAR_ROWS):
            b = min(a + EXEMPLAR_ROWS, job.stop)
            sel = rows[a:b]
            where = np.searchsorted(ex["row"], np.maximum(sel, 0))
            patches = store.exemplar_patches(job.layer, where.ravel())
            patches[(sel < 0).ravel()] = job.background
            k, px = sel.shape[1], patches.shape[1]
            grid = patches.reshape(b - a, k, px, px, 3).transpose(0, 2, 1, 3, 4)
            _write(
                f"{base}/exemplars-{a // EXEMPLAR_ROWS}.jpg",
                _encode(grid.reshape((b - a) * px, k * px, 3), "jpeg"),
                job.storage_options,
            )
    return {"rss_mb": peak_rss_mb()}


@dataclass(frozen=True)
class Shrink:
    """Tile rows ``r0..r1`` of zoom ``z`` of a level, each the 2 x 2 tiles of zoom z + 1 below
    it, box-downsampled: the lower zooms of a level never read its icons."""

    storage_options: dict[str, Any]
    size: int
    z: int
    r0: int
    r1: int
    out: str
    tile: int
    fmt: str


def shrink_task(job: Shrink) -> dict[str, Any]:
    ext, t = TILE_FORMATS[job.fmt], job.tile
    fs, root = fsspec.core.url_to_fs(job.out, **job.storage_options)
    n = 0
    for ty in range(job.r0, job.r1):
        for tx in range(2**job.z):
            quad = Image.new("RGB", (2 * t, 2 * t))
            for dx in (0, 1):
                for dy in (0, 1):
                    with fs.open(f"{root}/{job.z + 1}/{2 * tx + dx}/{2 * ty + dy}.{ext}") as f:
                        quad.paste(Image.open(f).convert("RGB"), (dx * t, dy * t))
            small = quad.resize((t, t), Image.Resampling.BOX)
            _write(f"{job.out}/{job.z}/{tx}/{ty}.{ext}", _encode(np.asarray(small), job.fmt),
                   job.storage_options)  # fmt: skip
            n += 1
    return {"tiles": n, "rss_mb": peak_rss_mb()}


def _shrink_jobs(s: Settings, levels: list[Level], z: int) -> list[Shrink]:
    """Every level's tiles of zoom ``z`` still to make from zoom z + 1, in bands of rows."""
    c, out = s.compose, f"{s.run_dir.rstrip('/')}/viewer/tiles"
    n, rows = 2**z, max(1, 64 // 2**z)
    return [Shrink(s.storage_options, lv.size, z, r0, min(n, r0 + rows), f"{out}/{lv.size}",
                   c.tile_px, c.tile_format)
            for lv in levels if lv.zmin <= z < lv.zmax for r0 in range(0, n, rows)]  # fmt: skip


def _encode(array: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    im = Image.fromarray(np.ascontiguousarray(array))
    if fmt == "png":
        im.save(buf, format="PNG", compress_level=6)
    else:
        im.save(buf, format=fmt.upper(), quality=90)
    return buf.getvalue()


def _write(url: str, data: bytes, storage_options: dict[str, Any]) -> None:
    fs, path = fsspec.core.url_to_fs(url, **storage_options)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(path, "wb") as f:
        f.write(data)


def _draw_jobs(s: Settings, store: RunStore, levels: list[Level]) -> tuple[list[Draw], list[Draw]]:
    """Tile bands of every level's zooms, and overview strips of every level."""
    c, px = s.compose, s.render.icon_px
    tiles, strips = [], []
    common = (s.store_url, s.storage_options, s.layer)
    for lv in levels:
        z = lv.zmax  # the zooms below are shrunk from these tiles (:class:`Shrink`)
        n = 2**z
        per_row = lv.size * (math.ceil(lv.size / n) + 1)  # icons one row of tiles meets
        rows = max(1, min(n, ICONS_PER_TASK // max(per_row, 1), max(1, 256 // n)))
        for r0 in range(0, n, rows):
            tiles.append(Draw(*common, lv.size, c.tile_px * n, r0, min(n, r0 + rows), z,
                              f"{s.run_dir.rstrip('/')}/viewer/tiles/{lv.size}", c.tile_px,
                              c.tile_format, BACKGROUNDS[c.background], c.density))  # fmt: skip
        width = min(lv.size * px, c.overview_px)
        band = max(1, ICONS_PER_TASK * width // (lv.size * lv.size))
        for y0 in range(0, width, band):
            strips.append(Draw(*common, lv.size, width, y0, min(width, y0 + band), None, "",
                               c.tile_px, "png", BACKGROUNDS[c.background], c.density))  # fmt: skip
    return tiles, strips


def _sheet_jobs(s: Settings, store: RunStore) -> list[Sheets]:
    out, per = f"{s.run_dir.rstrip('/')}/viewer", s.compose.sheet_columns**2
    common = (s.store_url, s.storage_options, s.layer)
    bg = BACKGROUNDS[s.compose.background]
    jobs = []
    for g in s.grid.sizes:
        m = len(store.grid_cells(s.layer, g)[1])
        jobs += [Sheets(*common, g, a, min(m, a + per), out, s.compose.sheet_columns, bg)
                 for a in range(0, m, per)]  # fmt: skip
    ex = store.exemplar_index(s.layer)
    u = 0 if ex is None else len(ex["image"])
    jobs += [Sheets(*common, 0, a, min(u, a + 256), out, 0, bg) for a in range(0, u, 256)]
    return jobs


def _overviews(s: Settings, strips: list[Draw], results: list[dict[str, Any]]) -> list[str]:
    files = []
    for g in s.grid.sizes:
        parts = [r["strip"] for j, r in zip(strips, results, strict=True) if j.size == g]
        png = _encode(np.concatenate(parts, axis=0), "png")
        _write(f"{s.run_dir.rstrip('/')}/atlas-{g}.png", png, s.storage_options)
        files.append(f"atlas-{g}.png")
        if g == s.grid.sizes[0]:
            _write(f"{s.run_dir.rstrip('/')}/atlas.png", png, s.storage_options)
            files.append("atlas.png")
    return files


def run(s: Settings, fp: str) -> StageResult:
    store = RunStore.open(s.store_url, mode="r", storage_options=s.storage_options)
    levels = zoom_ranges(s.grid.sizes, s.render.icon_px, s.compose.tile_px)
    tiles, strips = _draw_jobs(s, store, levels)
    sheets = _sheet_jobs(s, store)
    ray_ops.init(s.cluster)
    res = s.cluster.compose
    ray_ops.require("cluster.compose", res.num_cpus, res.num_gpus)
    jobs: list[Draw | Sheets] = [*tiles, *strips, *sheets]
    out: list[Any] = ray_ops.map_tasks(
        _any_task, jobs, num_cpus=res.num_cpus, num_gpus=res.num_gpus,
        desc="compose", labels=[_label(j) for j in jobs],
    )  # fmt: skip
    for z in range(max(lv.zmax for lv in levels) - 1, -1, -1):  # each zoom from the one above
        shrink = _shrink_jobs(s, levels, z)
        if shrink:
            out += ray_ops.map_tasks(shrink_task, shrink, num_cpus=res.num_cpus,
                                     num_gpus=res.num_gpus, desc=f"compose zoom {z}",
                                     labels=[f"zoom {z} of {j.size} rows {j.r0}..{j.r1}"
                                             for j in shrink])  # fmt: skip
    files = _overviews(s, strips, out[len(tiles) : len(tiles) + len(strips)])
    files += viewer.write_viewer(s, store, levels, _write)
    n_tiles = sum(r.get("tiles", 0) for r in out)
    log.info("compose: %d tiles over %d levels, %s under %s", n_tiles, len(levels),
             ", ".join(files), s.run_dir)  # fmt: skip
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
        return f"sheets {job.size or 'sources'} {job.start}..{job.stop}"
    what = f"tiles z{job.z}" if job.z is not None else "overview"
    return f"{what} of {job.size} rows {job.r0}..{job.r1}"
