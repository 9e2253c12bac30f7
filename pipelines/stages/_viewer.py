"""A view's viewer folder: the page, its data file, the pinned Leaflet, and (for runs whose
layout is aligned with others', ``reduce.align_with``) a side-by-side page per aligned run.
The links to the run's other views and reports are not compose's: the runner writes them
(``viewer/data/links.js``, :func:`write_links`) from the views' markers, after every run.

The data file holds, per level, one record per kept cell: ``[ix, iy, count, label, top,
exemplars]`` with ``top`` the cell's top classes and values (mean attribution where it was
extracted, else prediction counts) and ``exemplars`` ``[slot, source, left, top, right, bottom]``
(the patch's place in the level's exemplar sheet, the source thumbnail, the patch's box as
fractions of the source image).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

from atlas_core.compose.tiles import Level
from atlas_core.compose.viewer import data_script, page_html, safe_json, source_name, static_files
from atlas_core.errors import StoreError
from atlas_core.store import Markers, RunStore
from atlas_core.store.nodes import Level as LevelNode
from pipelines.core.common import cached_model, write_file
from pipelines.core.schema import SettingsBase
from pipelines.core.stage import StageRun
from pipelines.core.views import View

log = logging.getLogger(__name__)
EXEMPLAR_ROWS = 32  # cells per exemplar sheet (one row of k patches each)
BACKGROUNDS = {"white": 255, "grey": 128, "black": 0}
TILE_FORMATS = {"jpeg": "jpg", "png": "png", "webp": "webp"}
LINKS = "viewer/data/links.js"  # the runner's one output in a viewer folder


def _cell_top(level: LevelNode) -> tuple[str, np.ndarray, np.ndarray]:
    """(label kind, top classes (M, t), their values (M, t)) of a level's cells."""
    ac, av = level.optional("attr_top_class"), level.optional("attr_top_value")
    if ac is not None and av is not None:
        return "attribution", ac, np.round(av.astype(np.float64), 4)
    tc, tn = level.optional("top_class"), level.optional("top_count")
    if tc is None or tn is None:
        raise StoreError(f"{level.path} has no top classes: run its grid stage again")
    return "predictions", tc, tn


def _exemplars(level: LevelNode, k: int, ex: dict[str, np.ndarray] | None) -> list[Any]:
    """Per cell: ``[[slot, source, l, t, r, b], ...]`` for the exemplars re-read successfully
    (slot: the patch's place in the cell's row of the level's exemplar sheet; source: the
    thumbnail slot of its source image)."""
    rows = level.optional("exemplar_row")
    if ex is None or rows is None:
        return []
    where = np.searchsorted(ex["row"], np.maximum(rows, 0))
    where = np.minimum(where, max(len(ex["row"]) - 1, 0))
    src = ex["slot"][where] if len(ex["row"]) else np.zeros_like(rows)
    good = (rows >= 0) & (ex["ok"][where] == 1) if len(ex["row"]) else rows < -1
    box = np.round(ex["box"][where].astype(np.float64), 4) if len(ex["row"]) else None
    out = []
    for i in range(len(rows)):
        out.append([[j, int(src[i, j]), *box[i, j].tolist()]  # type: ignore[index]
                    for j in range(rows.shape[1]) if good[i, j]])  # fmt: skip
    return out


def run_data(ctx: StageRun, store: RunStore, levels: list[Level]) -> dict[str, Any]:
    s = ctx.s
    model = cached_model(s.model.spec, "cpu")
    ex = store.exemplars(s.layer).index()
    used: dict[int, int] = {}
    out_levels, kind = [], "predictions"
    for lv in levels:
        level = store.level(s.layer, lv.size)
        cell, count = level.cells()
        kind, top_c, top_v = _cell_top(level)
        exs = _exemplars(level, store.k, ex)
        cells = []
        for i in range(len(count)):
            top = [[used.setdefault(int(c), len(used)), v.item()]
                   for c, v in zip(top_c[i], top_v[i], strict=True) if c >= 0]  # fmt: skip
            label = top[0][0] if top else -1
            cells.append([int(cell[i, 0]), int(cell[i, 1]), int(count[i]), label, top,
                          exs[i] if exs else []])  # fmt: skip
        heat = _heat(level, used)
        out_levels.append({"size": lv.size, "zmin": lv.zmin, "zmax": lv.zmax, "cells": cells,
                           "heat": heat})  # fmt: skip
    sources = _sources(store, ex)
    sizes = [lv.size for lv in levels]
    c, e = ctx.s.compose, ctx.s.exemplars
    return {
        "title": ctx.view.title or f"{s.model.name} {s.layer}",
        "meta": f"model {s.model.name}, layer {s.layer}, levels "
                + ", ".join(f"{g}x{g}" for g in sizes) + f", {store.n_images} images",
        "label_kind": kind,
        "classes": [model.class_name(c) for c in sorted(used, key=used.__getitem__)],
        "levels": out_levels,
        "icon_px": ctx.s.render.icon_px, "tile_px": c.tile_px,
        "tile_ext": TILE_FORMATS[c.tile_format],
        "background": BACKGROUNDS[c.background],
        "sheet_columns": c.sheet_columns, "exemplar_rows": EXEMPLAR_ROWS,
        "k": e.k, "patch_px": e.patch_px, "sources": sources,
        "overview": f"../atlas-{sizes[0]}.png",
        "axis": list(ctx.view.names) if ctx.view.kind == "compare" else None,
    }  # fmt: skip


def _sources(store: RunStore, ex: dict[str, np.ndarray] | None) -> list[Any]:
    """Per thumbnail slot: [name, width, height] (null for an unused slot)."""
    if ex is None:
        return []
    uris = store.images.uris()
    return [[source_name(str(uris[u])), int(w), int(h)] if u >= 0 else None
            for u, (w, h) in zip(ex["image"], ex["thumb_size"], strict=True)]  # fmt: skip


def _heat(level: LevelNode, used: dict[int, int]) -> dict[str, Any] | None:
    """The level's class heatmaps: per heatmap class, each cell's mean attribution."""
    values, classes = level.optional("heat"), level.optional("heat_class")
    if values is None or classes is None or not len(classes):
        return None
    return {"classes": [used.setdefault(int(c), len(used)) for c in classes],
            "values": np.round(values.T.astype(np.float64), 5).tolist()}  # fmt: skip


def _aligned(ctx: StageRun) -> list[tuple[str, str]]:
    """(name, data file relative to this run's viewer) of each aligned run with a viewer."""
    s = ctx.s
    if not s.is_local or not ctx.view.is_main:
        return []
    here = os.path.join(s.run_dir.removeprefix("file://"), "viewer")
    out = []
    for a in s.reduce.align_with:
        data = os.path.join(a.run_dir.removeprefix("file://"), "viewer", "data", "atlas.js")
        if "://" in a.run_dir and not a.run_dir.startswith("file://"):
            continue
        if not os.path.isfile(data):
            log.warning("compose: %s has no viewer yet; run its compose stage to compare them "
                        "side by side", a.run_dir)  # fmt: skip
            continue
        out.append((os.path.basename(os.path.normpath(a.run_dir)), os.path.relpath(data, here)))
    return out


def write_viewer(ctx: StageRun, store: RunStore, levels: list[Level]) -> list[str]:
    """Write the view's ``viewer/`` and return the files a user opens."""
    out, so = f"{ctx.run_dir}/viewer", ctx.storage_options
    run = run_data(ctx, store, levels)
    aligned = _aligned(ctx)
    run["links"] = [{"href": f"compare-{i}.html", "text": f"side by side with {name}"}
                    for i, (name, _) in enumerate(aligned)]  # fmt: skip
    for rel, data in static_files().items():
        write_file(f"{out}/{rel}", data, so)
    write_file(f"{out}/data/atlas.js", data_script(run).encode("utf-8"), so)
    scripts = ["data/atlas.js", "data/links.js"]
    write_file(f"{out}/index.html", page_html(run["title"], scripts).encode("utf-8"), so)
    files = ["viewer/index.html"]
    for i, (name, rel) in enumerate(aligned):
        page = page_html(f"{run['title']} | {name}", ["data/atlas.js", rel, "data/links.js"])
        write_file(f"{out}/compare-{i}.html", page.encode("utf-8"), so)
        files.append(f"viewer/compare-{i}.html")
    return files


def links_of(s: SettingsBase, views: list[View], done: dict[str, dict[str, Any]]
             ) -> list[dict[str, str]]:  # fmt: skip
    """Links from the main view's page to every finished view and report (``done``: stage
    markers by name, e.g. ``views/<slug>/stage-compose``)."""
    out = []
    for v in views:
        if v.is_main:
            continue
        if f"{v.marker_prefix}stage-compose" in done:
            out.append({"href": f"../views/{v.slug}/viewer/index.html", "text": v.title})
        if f"{v.marker_prefix}stage-patches" in done:
            a, b = v.names
            out.append({"href": f"../views/{v.slug}/patches/index.html",
                        "text": f"patches: {b} pasted into {a}"})  # fmt: skip
    return out


def write_links(s: SettingsBase, views: list[View], markers: Markers) -> None:
    """``viewer/data/links.js`` of every view that has a viewer: the main page links the
    finished class views and reports, a class view's page links back to the main one."""
    done = {n: r for n, r in markers.read_all("").items() if n.rsplit("/", 1)[-1].startswith(
        "stage-")}  # fmt: skip
    main = links_of(s, views, done)
    for v in views:
        if f"{v.marker_prefix}stage-compose" not in done:
            continue
        links = main if v.is_main else ([{"href": "../../../viewer/index.html",
                                          "text": "the atlas of every activation"}]
                                        if "stage-compose" in done else [])  # fmt: skip
        script = f"window.ATLAS_LINKS = {safe_json(links)};\n"
        write_file(f"{v.directory(s.run_dir)}/{LINKS}", script.encode("utf-8"), s.storage_options)
