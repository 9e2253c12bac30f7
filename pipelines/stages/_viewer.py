"""A view's viewer folder: the page, its data files, the pinned Leaflet, and (for runs whose
layout is aligned with others', ``reduce.align_with``) a side-by-side page per aligned run.

The page fetches little to open: ``data/atlas.js`` (the run: levels, classes, where things are)
and the first level's ``data/level-<G>.js``; every other file is loaded when it is needed: a
level's data when the level is shown, a card's data (top values, exemplars) by chunks of
``CARD_CHUNK`` cells when a card opens, a class's heat when its heatmap is shown, source names
when a source is shown. Number arrays travel as base64 of little-endian typed arrays (a 320 x 320
level's cells are a few MB, not tens). Exemplar patches and source thumbnails are not copied:
the page reads the exemplars stage's own sheets (``../exemplars/<L>/``). The links to the run's
other views and reports are not compose's: the runner writes them (``viewer/data/links.js``,
:func:`write_links`) from the views' markers, after every run. The explorer's points
(``viewer/data/points/``, :func:`write_points`) are read from the store a block of images at a
time and loaded by the page only when its points, a filter or a selection need them.
"""

from __future__ import annotations

import base64
import logging
import os
from typing import Any

import numpy as np

from atlas_core.compose.points import DETAIL_IMAGES, PointsWriter, Sources
from atlas_core.compose.tiles import Level
from atlas_core.compose.viewer import (
    data_script,
    page_html,
    put_script,
    safe_json,
    source_name,
    static_files,
    url_path,
)
from atlas_core.errors import StoreError
from atlas_core.store import Markers, RunStore
from atlas_core.store.location import RunLocation, view_prefix
from atlas_core.store.nodes import Level as LevelNode
from pipelines.core.settings import BACKGROUNDS, TILE_FORMATS, Settings
from pipelines.core.stage import StageRun
from pipelines.core.views import View

log = logging.getLogger(__name__)
LINKS = ("viewer", "data", "links.js")  # the runner's one output in a viewer folder
CARD_CHUNK = 1024  # cells per card data file


def b64(a: np.ndarray, dtype: str) -> str:
    """A little-endian typed array, base64 (read in the page as ``new <Type>Array(bytes)``)."""
    return base64.b64encode(
        np.ascontiguousarray(a, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()
    ).decode("ascii")


def _put(payload: dict[str, Any]) -> bytes:
    return put_script(payload).encode("utf-8")


def _cell_top(level: LevelNode) -> tuple[str, np.ndarray, np.ndarray]:
    """(label kind, top classes (M, t), their values (M, t)) of a level's cells."""
    ac, av = level.optional("attr_top_class"), level.optional("attr_top_value")
    if ac is not None and av is not None:
        return "attribution", ac, av.astype(np.float32)
    tc, tn = level.optional("top_class"), level.optional("top_count")
    if tc is None or tn is None:
        raise StoreError(f"{level.path} has no top classes: run its grid stage again")
    return "predictions", tc, tn.astype(np.float32)


class _Classes:
    """The classes the page names, numbered as they are first met."""

    def __init__(self) -> None:
        self.index: dict[int, int] = {}

    def __call__(self, c: np.ndarray) -> np.ndarray:
        flat = [
            self.index.setdefault(int(x), len(self.index)) if x >= 0 else -1
            for x in np.asarray(c).ravel()
        ]
        return np.array(flat, np.int32).reshape(np.shape(c))


def _level_files(
    ctx: StageRun,
    store: RunStore,
    lv: Level,
    classes: _Classes,
    ex: dict[str, np.ndarray] | None,
    name: Any,
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """(the level's entry in atlas.js, its data files by name)."""
    level = store.level(ctx.s.layer, lv.size)
    cell, count = level.cells()
    kind, top_c, top_v = _cell_top(level)
    top = classes(top_c)
    files = {
        f"level-{lv.size}.js": _put(
            {
                "ix": b64(cell[:, 0], "u2"),
                "iy": b64(cell[:, 1], "u2"),
                "count": b64(count, "u4"),
                "label": b64(top[:, 0] if top.shape[1] else np.full(len(cell), -1), "i2"),
                "top": b64(top, "i2"),
                "t": int(top.shape[1]),
            }
        )
    }
    files |= _card_files(level, lv.size, top_v, ex)
    heat, heat_class = level.optional("heat"), level.optional("heat_class")
    heats = None
    if heat is not None and heat_class is not None and len(heat_class):
        heats = classes(heat_class).tolist()
        for j in range(len(heat_class)):
            files[f"heat-{lv.size}-{j}.js"] = _put({"values": b64(heat[:, j], "f4")})
    labels = {int(c) for c in top_c[:, 0] if c >= 0} if top.shape[1] else set()
    widest = max((name(c) for c in labels), key=len, default="")
    entry = {
        "size": lv.size,
        "zmin": lv.zmin,
        "zmax": lv.zmax,
        "cells": len(cell),
        "heat": heats,
        "kind": kind,
        "widest": widest,
        "plausibility": level.attrs.get("plausibility"),
    }
    return entry, files


def _card_files(
    level: LevelNode, size: int, top_v: np.ndarray, ex: dict[str, np.ndarray] | None
) -> dict[str, bytes]:
    """A level's card data, by chunks of ``CARD_CHUNK`` cells: top values, exemplars, fidelity,
    plausibility."""
    exr, slot, box = _exemplars(level, ex)
    m = len(top_v)
    fid = level.optional("icon_cosine")
    margin, rank = level.optional("icon_margin"), level.optional("icon_rank")
    fid = np.full(m, np.nan, np.float32) if fid is None else fid
    margin = np.full(m, np.nan, np.float32) if margin is None else margin
    rank = np.zeros(m, np.int32) if rank is None else rank
    files = {}
    for n, a in enumerate(range(0, m, CARD_CHUNK)):
        b = min(m, a + CARD_CHUNK)
        files[f"cards-{size}-{n}.js"] = _put(
            {
                "topv": b64(top_v[a:b], "f4"),
                "ex": b64(exr[a:b], "i4"),
                "slot": b64(slot[a:b], "i4"),
                "box": b64(box[a:b], "f4"),
                "fid": b64(fid[a:b], "f4"),
                "margin": b64(margin[a:b], "f4"),
                "rank": b64(rank[a:b], "i4"),
            }
        )
    return files


def _exemplars(
    level: LevelNode, ex: dict[str, np.ndarray] | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per (cell, j): the exemplar's place in the sheets (-1: none, or not re-read), its
    source's thumbnail slot, and the patch's box in the source (fractions)."""
    rows = level.optional("exemplar_row")
    if ex is None or rows is None or not len(ex["row"]):
        m, k = (len(level.read("count")), 1) if rows is None else rows.shape
        return (
            np.full((m, k), -1, np.int32),
            np.full((m, k), -1, np.int32),
            np.zeros((m, k, 4), np.float32),
        )
    order = np.argsort(ex["row"], kind="stable")
    at = np.searchsorted(ex["row"], np.maximum(rows, 0), sorter=order)
    idx = order[np.minimum(at, len(order) - 1)]
    good = (rows >= 0) & (ex["row"][idx] == rows) & (ex["ok"][idx] == 1)
    return (
        np.where(good, idx, -1).astype(np.int32),
        np.where(good, ex["slot"][idx], -1).astype(np.int32),
        np.where(good[..., None], ex["box"][idx], 0).astype(np.float32),
    )


def _source_files(store: RunStore, ex: dict[str, np.ndarray] | None, per: int) -> dict[str, bytes]:
    """Names and sizes of the source thumbnails, one file per sheet of slots."""
    if ex is None:
        return {}
    uris = store.images.uris()
    out = {}
    for n, a in enumerate(range(0, len(ex["source"]), per)):
        src, wh = ex["source"][a : a + per], ex["thumb_size"][a : a + per]
        out[f"sources-{n}.js"] = _put(
            {
                "names": [source_name(str(uris[u])) if u >= 0 else "" for u in src],
                "w": wh[:, 0].tolist(),
                "h": wh[:, 1].tolist(),
            }
        )
    return out


def run_data(
    ctx: StageRun, store: RunStore, levels: list[Level]
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """(the run's atlas.js record, every data file by name)."""
    s, card = ctx.s, ctx.card
    node = store.exemplars(s.layer)
    ex = node.index()
    classes, entries = _Classes(), []
    files: dict[str, bytes] = {}
    for lv in levels:
        entry, lf = _level_files(ctx, store, lv, classes, ex, card.class_name)
        entries.append(entry)
        files |= lf
    sheets = node.attrs if ex is not None else {}
    per = int(sheets.get("per_sheet", 256))
    files |= _source_files(store, ex, per)
    c = ctx.s.compose
    run = {
        "title": ctx.view.title or f"{s.model.name} {s.layer}",
        "meta": f"model {s.model.name}, layer {s.layer}, levels "
        + ", ".join(f"{lv.size}x{lv.size}" for lv in levels)
        + f", {store.n_images} images",
        "label_kind": entries[0]["kind"] if entries else "predictions",
        "classes": [
            card.class_name(c) for c in sorted(classes.index, key=classes.index.__getitem__)
        ],
        "levels": entries,
        "icon_px": s.render.icon_px,
        "tile_px": c.tile_px,
        "tile_ext": TILE_FORMATS[c.tile_format],
        "background": BACKGROUNDS[c.background],
        "sheet_columns": c.sheet_columns,
        "k": s.exemplars.k,
        "card_chunk": CARD_CHUNK,
        "exemplars": None
        if ex is None
        else {
            "dir": f"../{sheets['sheets']}/",
            "per": per,
            "cols": int(sheets["sheet_columns"]),
            "patch_px": int(sheets["patch_px"]),
            "thumb_px": int(sheets["thumb_px"]),
        },
        "overview": f"../atlas-{levels[0].size}.png",
        "axis": list(ctx.view.names) if ctx.view.kind == "compare" else None,
    }
    return run, files


def _aligned(ctx: StageRun) -> list[tuple[str, str]]:
    """(name, data file relative to this run's viewer) of each aligned run with a viewer."""
    s = ctx.s
    if not s.is_local or not ctx.view.is_main:
        return []
    here = ctx.loc.file("viewer").removeprefix("file://")
    out = []
    for a in s.reduce.align_with:
        other = RunLocation.of(a.run_dir)
        if not other.is_local:
            continue
        data = other.file("viewer", "data", "atlas.js").removeprefix("file://")
        if not os.path.isfile(data):
            log.warning(
                "compose: %s has no viewer yet; run its compose stage to compare them side by side",
                a.run_dir,
            )
            continue
        rel = url_path(os.path.relpath(data, here).replace(os.sep, "/"))
        out.append((os.path.basename(os.path.normpath(a.run_dir)), rel))
    return out


def write_viewer(ctx: StageRun, store: RunStore, levels: list[Level]) -> list[str]:
    """Write the view's ``viewer/`` and return the files a user opens."""
    loc, out = ctx.loc, ctx.loc.file("viewer")
    run, files = run_data(ctx, store, levels)
    aligned = _aligned(ctx)
    run["links"] = [
        {"href": f"compare-{i}.html", "text": f"side by side with {name}"}
        for i, (name, _) in enumerate(aligned)
    ]
    for rel, data in static_files().items():
        loc.write_bytes(f"{out}/{rel}", data)
    for name, data in files.items():
        loc.write_bytes(f"{out}/data/{name}", data)
    run["points"] = write_points(ctx, store, levels, f"{out}/data/points")  # the explorer's
    loc.write_bytes(f"{out}/data/atlas.js", data_script(run).encode("utf-8"))
    scripts = ["data/atlas.js", "data/links.js"]
    loc.write_bytes(f"{out}/index.html", page_html(run["title"], scripts).encode("utf-8"))
    pages = ["viewer/index.html"]
    for i, (name, rel) in enumerate(aligned):
        page = page_html(f"{run['title']} | {name}", ["data/atlas.js", rel, "data/links.js"])
        loc.write_bytes(f"{out}/compare-{i}.html", page.encode("utf-8"))
        pages.append(f"viewer/compare-{i}.html")
    return pages


def links_of(views: list[View], done: dict[str, dict[str, Any]]) -> list[dict[str, str]]:
    """Links from the main view's page to every finished view and report (``done``: stage
    markers by name, e.g. ``views/<slug>/stage-compose``)."""
    out = []
    for v in views:
        if v.is_main:
            continue
        prefix = view_prefix(v.slug)
        if f"{prefix}stage-compose" in done:
            out.append({"href": f"../views/{v.slug}/viewer/index.html", "text": v.title})
        if f"{prefix}stage-patches" in done:
            a, b = v.names
            out.append(
                {
                    "href": f"../views/{v.slug}/patches/index.html",
                    "text": f"patches: {b} pasted into {a}",
                }
            )
    return out


def write_links(s: Settings, views: list[View], markers: Markers) -> None:
    """``viewer/data/links.js`` of every view that has a viewer: the main page links the
    finished class views and reports, a class view's page links back to the main one."""
    done = {
        n: r for n, r in markers.read_all("").items() if n.rsplit("/", 1)[-1].startswith("stage-")
    }
    main = links_of(views, done)
    back = [{"href": "../../../viewer/index.html", "text": "the atlas of every activation"}]
    for v in views:
        loc = s.location.in_view(v.slug)
        if f"{loc.marker_prefix}stage-compose" not in done:
            continue
        links = main if v.is_main else (back if "stage-compose" in done else [])
        script = f"window.ATLAS_LINKS = {safe_json(links)};\n"
        loc.write_bytes(loc.file(*LINKS), script.encode("utf-8"))


# ---------------------------------------------------------------------- the explorer's points
def write_points(
    ctx: StageRun, store: RunStore, levels: list[Level], out: str
) -> dict[str, Any] | None:
    """Every sample of the view's layout as the explorer's typed columns under ``out``
    (:mod:`atlas_core.compose.points`), read from the store a block of images at a time;
    returns the run record's ``points`` entry (None: the view has no layout)."""
    layout = store.layout_node(ctx.s.layer)
    if not layout.has("layout"):
        return None
    img, k, n = store.images, store.k, store.n_images
    labelled = img.has("label")

    def put(name: str, data: bytes) -> None:
        ctx.loc.write_bytes(f"{out}/{name}", data)

    writer = PointsWriter(put, k=k, levels=[lv.size for lv in levels], labelled=labelled)
    sources, topk = Sources(), 0
    for a in range(0, n, DETAIL_IMAGES):
        b = min(n, a + DETAIL_IMAGES)
        xy = layout.read("layout", a * k, b * k)
        uri, top = img.uris(a, b), img.read("top_class", a, b)
        prob, topk = img.read("top_prob", a, b), top.shape[1]
        label = img.read("label", a, b) if labelled else None
        rows = np.flatnonzero(~np.isnan(xy).any(axis=1))
        image = rows // k
        writer.add(
            row=rows + a * k,
            x=xy[rows, 0],
            y=xy[rows, 1],
            pred=top[image, 0] if topk else np.full(len(rows), -1),
            conf=prob[image, 0] if topk else np.full(len(rows), np.nan),
            source=sources(uri, img.crops(a, b))[image],
            label=None if label is None else label[image],
        )
        writer.add_details(a, uri, top, prob, store.samples.read("pos", a * k, b * k))
    ex = store.exemplars(ctx.s.layer).index()
    if ex is not None:
        good = np.flatnonzero((ex["ok"] == 1) & (ex["row"] >= 0))
        writer.add_patches(ex["row"][good], good, ex["slot"][good], ex["box"][good])
    # the labels live with the images: in the shared extraction when the run has one (a sweep)
    names = store.source.array("images/label").attrs.get("names") if labelled else None
    label_names = [str(v) for v in names] if isinstance(names, list) else []
    head = writer.finish(
        ctx.card.class_name, sources.names(), label_names, topk=topk, patches=ex is not None
    )
    return {"n": head["n"], "labelled": labelled, "header": "points/points.js"}
