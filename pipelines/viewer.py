"""The run's viewer folder: the page, its data file, the pinned Leaflet, and (for runs whose
layout is aligned with others', ``reduce.align_with``) a side-by-side page per aligned run.

The data file holds, per level, one record per kept cell: ``[ix, iy, count, label, top,
exemplars]`` with ``top`` the cell's top classes and values (mean attribution where it was
extracted, else prediction counts) and ``exemplars`` ``[slot, source, left, top, right, bottom]``
(the patch's place in the level's exemplar sheet, the source thumbnail, the patch's box as
fractions of the source image).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from atlas_core.compose.tiles import Level
from atlas_core.compose.viewer import data_script, page_html, source_name, static_files
from atlas_core.store import RunStore
from pipelines.common import cached_model
from pipelines.settings import BACKGROUNDS, TILE_FORMATS, Settings

log = logging.getLogger(__name__)
Writer = Callable[[str, bytes, dict[str, Any]], None]
EXEMPLAR_ROWS = 32  # cells per exemplar sheet (one row of k patches each)


def _cell_top(store: RunStore, layer: str, g: int) -> tuple[str, np.ndarray, np.ndarray]:
    """(label kind, top classes (M, t), their values (M, t)) of a level's cells."""
    ac = store.grid_extra(layer, g, "attr_top_class")
    if ac is not None:
        av = store.grid_extra(layer, g, "attr_top_value")
        assert av is not None
        return "attribution", ac, np.round(av.astype(np.float64), 4)
    tc = store.grid_extra(layer, g, "top_class")
    tn = store.grid_extra(layer, g, "top_count")
    assert tc is not None and tn is not None
    return "predictions", tc, tn


def _exemplars(store: RunStore, layer: str, g: int, ex: dict[str, np.ndarray] | None) -> list[Any]:
    """Per cell: ``[[slot, source, l, t, r, b], ...]`` for the exemplars re-read successfully."""
    rows = store.grid_extra(layer, g, "exemplar_row")
    if ex is None or rows is None:
        return []
    where = np.searchsorted(ex["row"], np.maximum(rows, 0))
    where = np.minimum(where, max(len(ex["row"]) - 1, 0))
    src = np.searchsorted(ex["image"], np.maximum(rows, 0) // store.k)
    good = (rows >= 0) & (ex["ok"][where] == 1) if len(ex["row"]) else rows < -1
    box = np.round(ex["box"][where].astype(np.float64), 4) if len(ex["row"]) else None
    out = []
    for i in range(len(rows)):
        out.append([[j, int(src[i, j]), *box[i, j].tolist()]  # type: ignore[index]
                    for j in range(rows.shape[1]) if good[i, j]])  # fmt: skip
    return out


def run_data(s: Settings, store: RunStore, levels: list[Level]) -> dict[str, Any]:
    model = cached_model(s.model.spec, "cpu")
    ex = store.exemplar_index(s.layer)
    used: dict[int, int] = {}
    out_levels, kind = [], "predictions"
    for lv in levels:
        cell, count = store.grid_cells(s.layer, lv.size)
        kind, top_c, top_v = _cell_top(store, s.layer, lv.size)
        exs = _exemplars(store, s.layer, lv.size, ex)
        cells = []
        for i in range(len(count)):
            top = [[used.setdefault(int(c), len(used)), v.item()]
                   for c, v in zip(top_c[i], top_v[i], strict=True) if c >= 0]  # fmt: skip
            label = top[0][0] if top else -1
            cells.append([int(cell[i, 0]), int(cell[i, 1]), int(count[i]), label, top,
                          exs[i] if exs else []])  # fmt: skip
        heat = _heat(store, s.layer, lv.size, used)
        out_levels.append({"size": lv.size, "zmin": lv.zmin, "zmax": lv.zmax, "cells": cells,
                           "heat": heat})  # fmt: skip
    uris = store.uris()
    sources = [] if ex is None else [
        [source_name(str(uris[u])), int(w), int(h)]
        for u, (w, h) in zip(ex["image"], ex["thumb_size"], strict=True)
    ]  # fmt: skip
    g0 = s.grid.sizes[0]
    return {
        "title": f"{s.model.name} {s.layer}",
        "meta": f"model {s.model.name}, layer {s.layer}, levels "
                + ", ".join(f"{g}x{g}" for g in s.grid.sizes) + f", {store.n_images} images",
        "label_kind": kind,
        "classes": [model.class_name(c) for c in sorted(used, key=used.__getitem__)],
        "levels": out_levels,
        "icon_px": s.render.icon_px, "tile_px": s.compose.tile_px,
        "tile_ext": TILE_FORMATS[s.compose.tile_format],
        "background": BACKGROUNDS[s.compose.background],
        "sheet_columns": s.compose.sheet_columns, "exemplar_rows": EXEMPLAR_ROWS,
        "k": s.exemplars.k, "patch_px": s.exemplars.patch_px, "sources": sources,
        "overview": f"../atlas-{g0}.png",
        "links": [],
        "axis": _axis(s, model),
    }  # fmt: skip


def _heat(store: RunStore, layer: str, g: int, used: dict[int, int]) -> dict[str, Any] | None:
    """The level's class heatmaps: per heatmap class, each cell's mean attribution."""
    values = store.grid_extra(layer, g, "heat")
    classes = store.grid_extra(layer, g, "heat_class")
    if values is None or classes is None or not len(classes):
        return None
    return {"classes": [used.setdefault(int(c), len(used)) for c in classes],
            "values": np.round(values.T.astype(np.float64), 5).tolist()}  # fmt: skip


def _axis(s: Settings, model: Any) -> list[str] | None:
    """A two-class comparison's class names, left (a) and right (b)."""
    if not s.reduce.rows.startswith("compare:"):
        return None
    _, a, b = s.reduce.rows.split(":")
    return [model.class_name(int(a)), model.class_name(int(b))]


def _aligned(s: Settings) -> list[tuple[str, str]]:
    """(name, data file relative to this run's viewer) of each aligned run with a viewer."""
    if not s.is_local:
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


def view_links(s: Settings) -> list[dict[str, str]]:
    """Links to the run's finished class views and patch reports (from their stage markers)."""
    from atlas_core.store import Markers

    markers = Markers(s.run_dir, s.storage_options)
    views = ((markers.read("stage-classes") or {}).get("details") or {}).get("views", [])
    reports = ((markers.read("stage-patches") or {}).get("details") or {}).get("reports", [])
    links = [{"href": f"../{v['viewer']}", "text": v["title"]} for v in views]
    return links + [{"href": f"../patches/{r['view']}/index.html",
                     "text": f"patches: {r['b_name']} pasted into {r['a_name']}"}
                    for r in reports]  # fmt: skip


def write_viewer(
    s: Settings, store: RunStore, levels: list[Level], write: Writer,
    extra_links: list[dict[str, str]] | None = None,
) -> list[str]:  # fmt: skip
    """Write ``viewer/`` and return the files a user opens."""
    out, so = f"{s.run_dir.rstrip('/')}/viewer", s.storage_options
    run = run_data(s, store, levels)
    aligned = _aligned(s)
    run["links"] = [{"href": f"compare-{i}.html", "text": f"side by side with {name}"}
                    for i, (name, _) in enumerate(aligned)]  # fmt: skip
    run["links"] += view_links(s) if extra_links is None else extra_links
    for rel, data in static_files().items():
        write(f"{out}/{rel}", data, so)
    write(f"{out}/data/atlas.js", data_script(run).encode("utf-8"), so)
    write(f"{out}/index.html", page_html(run["title"], ["data/atlas.js"]).encode("utf-8"), so)
    files = ["viewer/index.html"]
    for i, (name, rel) in enumerate(aligned):
        page = page_html(f"{run['title']} | {name}", ["data/atlas.js", rel])
        write(f"{out}/compare-{i}.html", page.encode("utf-8"), so)
        files.append(f"viewer/compare-{i}.html")
    return files
