"""The diff's page: both runs' maps side by side, heat layers over the cells, the largest changes.

``diff.html`` in the diff's folder opens from disk, like a run's viewer: no inline script, the
viewer's Content-Security-Policy, every string from data written with ``textContent``. Its own
script and style (``diff.js``, ``diff.css``) and the pages' shared ``common.js`` are copied
beside it; Leaflet is read from a run's viewer (``viewer/lib/leaflet/``, by a relative path) or
copied when neither run has a viewer.
Each run's ``viewer/data/atlas.js`` is loaded by a relative path when it exists (the way a
viewer's side-by-side page loads another run's): its tiles are drawn under the heat layers, and
the exemplar sheets the patches come from are the runs' own. Without a viewer the map draws the
cells alone. Data files:

- ``data/diff.js``: the runs, the overall figures, the levels (``window.ATLAS_DIFF``);
- ``data/level-<G>.js``: a level's two cell tables as base64 typed arrays (ix, iy, count, both,
  preservation, flip_rate, spread, the top destinations and their fractions), the cells kept in
  one run only, and the largest changes with their patches; loaded when the level is shown.
"""

from __future__ import annotations

import base64
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from atlas_core.compose.viewer import CSP, relative_url, safe_json, static_files
from atlas_core.store import RunLocation

if TYPE_CHECKING:
    from atlas_core.compare.result import CellTable
    from atlas_core.compare.runs import DiffResult, RunPair
    from atlas_core.explore import Atlas

_STATIC = ("common.js", "diff.js", "diff.css")
_COLUMNS = {  # CellTable column -> typed array of the page
    "count": "u4",
    "both": "u4",
    "preservation": "f4",
    "flip_rate": "f4",
    "spread": "f4",
    "flow_frac": "f4",
}

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="__CSP__">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>Diff of two atlases</title>
<link rel="stylesheet" href="__LIB__leaflet.css">
<link rel="stylesheet" href="diff.css">
</head>
<body>
<header><h1 id="title"></h1><p id="figures"></p></header>
<div id="toolbar" role="toolbar" aria-label="diff controls">
 <span id="levels" role="group" aria-label="grid levels"></span>
 <label for="heat">heat over the cells</label> <select id="heat">
 <option value="lost">neighbours lost (1 - preservation)</option>
 <option value="flip_rate">flip rate</option>
 <option value="spread">spread of where its samples went</option>
 <option value="none">none</option></select>
 <label><input id="oneside" type="checkbox"> cells kept in one run only</label>
 <span id="legend" aria-live="polite"></span>
</div>
<main id="panes">
 <section class="pane"><h2 id="title-a"></h2><div id="map-a" class="map"></div></section>
 <section class="pane"><h2 id="title-b"></h2><div id="map-b" class="map"></div></section>
</main>
<aside id="side"><h2>Largest changes</h2>
 <p class="hint" id="changes-note"></p><ol id="changes"></ol>
 <section id="detail" aria-live="polite"></section></aside>
<script src="data/diff.js"></script>
__RUNS__
<script src="__LIB__leaflet.js"></script>
<script src="common.js"></script>
<script src="diff.js"></script>
</body></html>
"""


def static_dir() -> Path:
    return Path(str(resources.files("atlas_core.compose"))) / "static"


def b64(a: np.ndarray, dtype: str) -> str:
    """A little-endian typed array as base64 (``new <Type>Array(bytes)`` in the page)."""
    data = np.ascontiguousarray(a, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()
    return base64.b64encode(data).decode("ascii")


def _viewer(at: Atlas, loc: RunLocation) -> str | None:
    """The run's viewer data script relative to the diff's page, if the run has a viewer."""
    data = at.loc.file("viewer", "data", "atlas.js")
    return relative_url(data, loc) if at.loc.exists(data) else None


def _sheets(at: Atlas, loc: RunLocation) -> dict[str, Any] | None:
    """Where the run's exemplar patches are, relative to the page (None: no exemplars, or
    their sheets are not beside the store)."""
    node = at.store.exemplars(at.layer)
    if node.index() is None:
        return None
    a = node.attrs
    sheets = at.loc.file(str(a["sheets"]))
    where = relative_url(sheets, loc)
    if where is None or not at.loc.exists(at.loc.file(str(a["sheets"]), "patches-0.jpg")):
        return None
    return {
        "dir": where + "/",
        "per": int(a["per_sheet"]),
        "cols": int(a["sheet_columns"]),
        "patch_px": int(a["patch_px"]),
    }


def _side(table: CellTable) -> dict[str, Any]:
    """A cell table as the page's typed arrays."""
    out: dict[str, Any] = {"ix": b64(table.cell % table.size, "u2")}
    out["iy"] = b64(table.cell // table.size, "u2")
    out |= {name: b64(getattr(table, name), t) for name, t in _COLUMNS.items()}
    out["flow_cell"] = b64(table.flow_cell, "i4")
    out["top"] = int(table.flow_cell.shape[1])
    return out


def _level_file(result: DiffResult, size: int) -> dict[str, Any]:
    lv = result.diff.levels[size]
    return {
        "a": _side(lv.a),
        "b": _side(lv.b),
        "appeared": b64(lv.appeared, "i4"),
        "emptied": b64(lv.emptied, "i4"),
        "changes": result.changes.get(size, []),
    }


def page_record(loc: RunLocation, pair: RunPair, result: DiffResult) -> dict[str, Any]:
    """``window.ATLAS_DIFF``: the runs (titles, viewers and sheets relative to the page), the
    figures, and the levels with their data files."""
    f = result.report
    runs = {}
    for side, at in (("a", pair.a), ("b", pair.b)):
        runs[side] = {
            "name": pair.names[0 if side == "a" else 1],
            "title": pair.title(side),
            "viewer": _viewer(at, loc),
            "sheets": _sheets(at, loc),
        }
    levels = []
    for g, lv in result.diff.levels.items():
        levels.append(
            {
                "size": g,
                "cells_a": len(lv.a.cell),
                "cells_b": len(lv.b.cell),
                "appeared": len(lv.appeared),
                "emptied": len(lv.emptied),
                "file": f"data/level-{g}.js",
            }
        )
    keys = ("k", "kept_both", "neighbourhood_preservation", "flip_rate", "flips")
    figures = {key: f.get(key) for key in (*keys, "accuracy_a", "accuracy_b", "labelled_samples")}
    return {"runs": runs, "figures": figures, "levels": levels, "score": f.get("score")}


def _leaflet(loc: RunLocation, pair: RunPair) -> tuple[str, dict[str, bytes]]:
    """(Leaflet's folder relative to the page, files to copy there): a viewer's when a run has
    one, else the pinned copy written into the diff's folder."""
    for at in (pair.b, pair.a):
        lib = at.loc.file("viewer", "lib", "leaflet", "leaflet.js")
        rel = relative_url(lib, loc) if at.loc.exists(lib) else None
        if rel is not None:
            return rel.rsplit("/", 1)[0] + "/", {}
    files = {k: v for k, v in static_files().items() if k.startswith("lib/leaflet/")}
    return "lib/leaflet/", files


def write_diff_page(loc: RunLocation, pair: RunPair, result: DiffResult) -> list[str]:
    """Write ``diff.html``, its script, style and data files into the diff's folder ``loc``;
    returns the page's path."""
    import html

    record = page_record(loc, pair, result)
    lib, copies = _leaflet(loc, pair)
    for rel, data in copies.items():
        loc.write_bytes(loc.diff_asset(*rel.split("/")), data)
    for name in _STATIC:
        loc.write_bytes(loc.diff_asset(name), (static_dir() / name).read_bytes())
    script = f"window.ATLAS_DIFF = {safe_json(record)};\n"
    loc.write_bytes(loc.diff_asset("data", "diff.js"), script.encode("utf-8"))
    for g in result.diff.levels:
        put = (
            f"window.ATLAS_PUT(document.currentScript.src, {safe_json(_level_file(result, g))});\n"
        )
        loc.write_bytes(loc.diff_asset("data", f"level-{g}.js"), put.encode("utf-8"))
    runs = "\n".join(
        f'<script src="{html.escape(r["viewer"], quote=True)}"></script>'
        for r in record["runs"].values()
        if r["viewer"]
    )
    page = (
        _PAGE.replace("__CSP__", CSP)
        .replace("__LIB__", html.escape(lib, quote=True))
        .replace("__RUNS__", runs)
    )
    loc.write_bytes(loc.diff_page_url, page.encode("utf-8"))
    return [loc.diff_page_url]
