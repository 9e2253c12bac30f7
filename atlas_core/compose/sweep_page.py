"""A sweep's comparison page: its atlases in a grid of maps, pan, zoom and hover linked.

``compare.html`` at the sweep's root opens from disk, like a run's viewer (its
Content-Security-Policy, no inline script, every string from data written with ``textContent``).
Each map draws its run's own tiles, read through the run's ``viewer/data/atlas.js`` by a
relative path (the way the diff page does); Leaflet is a run's viewer's copy, or the pinned copy
written beside the page. Beside each map, the run's figures: trustworthiness, icon fidelity,
plausibility margin, and against the sweep's first run the neighbourhood preservation and flip
rate of its diff, linked.

Hovering a cell of one map outlines, in every other map, the cells its samples went to, shaded
by the share of its samples each received. The page computes that from each run's cell of every
sample row at the level shown, written here once per level (``compare/data/level-<G>.js``: per
run an int32 array, row -> flat cell ``iy * G + ix`` of a kept cell, -1 for a hole or a sample
in a dropped cell), so a hover costs the samples of one cell (the page indexes rows by cell once
per level). All runs on the page hold the same images row for row (the caller checks: the
diffs).
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from atlas_core.compose.diff_page import b64, static_dir
from atlas_core.compose.viewer import CSP, put_script, relative_url, safe_json, static_files
from atlas_core.explore import Atlas
from atlas_core.grid.binning import cell_index
from atlas_core.store import RunLocation

PAGE = "compare.html"
ASSETS = "compare"
_STATIC = ("common.js", "sweep.js", "sweep.css")

_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="__CSP__">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>The sweep's atlases compared</title>
<link rel="stylesheet" href="__LIB__leaflet.css">
<link rel="stylesheet" href="compare/sweep.css">
</head>
<body>
<header><h1 id="title"></h1><p id="note" class="hint"></p></header>
<div id="toolbar" role="toolbar" aria-label="comparison controls">
 <span id="levels" role="group" aria-label="grid levels"></span>
 <span id="hover" aria-live="polite"></span>
</div>
<main id="grid"></main>
<script src="compare/data/sweep.js"></script>
__RUNS__
<script src="__LIB__leaflet.js"></script>
<script src="compare/common.js"></script>
<script src="compare/sweep.js"></script>
</body></html>
"""


@dataclass(frozen=True)
class PageRun:
    """One run on the page: its folder's name, where it is, and its figures (trustworthiness,
    fidelity, plausibility, and against the first run neighbourhood_preservation, flip_rate and
    diff, the diff page relative to the run)."""

    name: str
    run_dir: str
    figures: dict[str, Any] = field(default_factory=dict)


def short_names(names: list[str]) -> list[str]:
    """What tells the runs apart: a sweep job's folder is named by all its overrides
    (``a=1,b=2``), so each name keeps only the overrides not every run shares (the whole name
    when that leaves nothing)."""
    parts = [n.split(",") for n in names]
    shared = set.intersection(*(set(p) for p in parts)) if parts else set()
    out = [",".join(x for x in p if x not in shared) for p in parts]
    return [o or n for o, n in zip(out, names, strict=True)]


def row_cells(at: Atlas, size: int) -> np.ndarray:
    """(N * k,) int32: each sample row's flat cell (``iy * size + ix``) at grid ``size``, -1
    where the row is a hole or its cell was dropped (fewer than ``grid.min_count`` samples)."""
    flat = cell_index(at.layout(), size)
    kept, _ = at.store.level(at.layer, size).cells()
    keep = np.zeros(size * size, bool)
    keep[kept[:, 1].astype(np.int64) * size + kept[:, 0]] = True
    ok = flat >= 0
    ok[ok] = keep[flat[ok]]
    return np.where(ok, flat, -1).astype(np.int32)


def _leaflet(root: RunLocation, atlases: list[Atlas]) -> tuple[str, dict[str, bytes]]:
    for at in atlases:
        lib = at.loc.file("viewer", "lib", "leaflet", "leaflet.js")
        rel = relative_url(lib, root) if at.loc.exists(lib) else None
        if rel is not None:
            return rel.rsplit("/", 1)[0] + "/", {}
    files = {k: v for k, v in static_files().items() if k.startswith("lib/leaflet/")}
    return f"{ASSETS}/lib/leaflet/", files


def page_record(
    root: RunLocation, runs: list[PageRun], atlases: list[Atlas], first: str, levels: list[int]
) -> dict[str, Any]:
    """``window.ATLAS_SWEEP``: the runs (titles, viewers and diffs relative to the page,
    figures), the levels and their data files."""
    out = []
    labels = short_names([r.name for r in runs])
    for r, at, label in zip(runs, atlases, labels, strict=True):
        data = at.loc.file("viewer", "data", "atlas.js")
        viewer = relative_url(data, root) if at.loc.exists(data) else None
        diff = r.figures.get("diff")
        diff_rel = relative_url(at.loc.file(*str(diff).split("/")), root) if diff else None
        model = at.manifest.get("model") or at.store.attrs.get("model") or "model"
        out.append(
            {
                "name": r.name,
                "label": label,
                "title": f"{model} {at.layer}",
                "viewer": viewer,
                "page": viewer.rsplit("/", 2)[0] + "/index.html" if viewer else None,
                "diff": diff_rel,
                "figures": {k: v for k, v in r.figures.items() if k != "diff"},
            }
        )
    levels_out = [{"size": g, "file": f"{ASSETS}/data/level-{g}.js"} for g in levels]
    first_label = next((o["label"] for o in out if o["name"] == first), first)
    return {
        "first": first,
        "first_label": first_label,
        "runs": out,
        "levels": levels_out,
        "rows": atlases[0].n_samples,
    }


def write_sweep_page(root: RunLocation, runs: list[PageRun], *, first: str) -> str:
    """Write ``compare.html`` and its files under ``root`` (the sweep's folder) for ``runs``
    (over the same images, the first run first); returns the page's URL."""
    atlases = [Atlas.open(r.run_dir, storage_options=root.storage_options) for r in runs]
    levels = sorted(set.intersection(*(set(at.levels) for at in atlases)))
    record = page_record(root, runs, atlases, first, levels)
    lib, copies = _leaflet(root, atlases)
    for rel, data in copies.items():
        root.write_bytes(root.url(ASSETS, *rel.split("/")), data)
    for name in _STATIC:
        root.write_bytes(root.url(ASSETS, name), (static_dir() / name).read_bytes())
    script = f"window.ATLAS_SWEEP = {safe_json(record)};\n"
    root.write_bytes(root.url(ASSETS, "data", "sweep.js"), script.encode("utf-8"))
    for g in levels:
        cells = [b64(row_cells(at, g), "i4") for at in atlases]
        root.write_bytes(
            root.url(ASSETS, "data", f"level-{g}.js"), put_script({"cells": cells}).encode("utf-8")
        )
    scripts = "\n".join(
        f'<script src="{html.escape(r["viewer"], quote=True)}"></script>'
        for r in record["runs"]
        if r["viewer"]
    )
    page = (
        _HTML.replace("__CSP__", CSP)
        .replace("__LIB__", html.escape(lib, quote=True))
        .replace("__RUNS__", scripts)
    )
    root.write_bytes(root.url(PAGE), page.encode("utf-8"))
    return root.url(PAGE)
