"""The viewer: one static page per run that opens from disk, over the tiles of every level.

Pan and zoom are Leaflet's (pinned, copied next to the page by :func:`static_files`); the page's
own script and style are files beside it, and the data is one generated script
(``data/atlas.js``) that registers the run, and more data scripts it loads as they are needed:
no inline script, no inline handler, and a Content-Security-Policy that allows nothing but files
of the page's own origin (and ``connect-src 'self'``: served by ``atlas serve``, the page asks
the run's own API, ``/api/...``; opened from disk it asks nothing). Every string from
a dataset (class names, file names, URIs) is JSON-escaped into that data file and written into the
page with ``textContent`` only, so no name can become markup.
"""

from __future__ import annotations

import html
import json
import os
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from atlas_core.compose.vendor import LEAFLET_VERSION
from atlas_core.errors import AtlasError

if TYPE_CHECKING:
    from atlas_core.store import RunLocation

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; object-src 'none'"
)
_STATIC = ("common.js", "viewer.js", "explore.js", "ask.js", "viewer.css")
_LEAFLET = ("leaflet.js", "leaflet.css", "LICENSE")

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="__CSP__">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>Activation atlas: __TITLE__</title>
<link rel="stylesheet" href="__PREFIX__lib/leaflet/leaflet.css">
<link rel="stylesheet" href="__PREFIX__viewer.css">
</head>
<body>
<header><h1 id="title"></h1><p id="meta"></p><nav id="links" aria-label="related pages"></nav>
</header>
<div id="toolbar" role="toolbar" aria-label="atlas controls">
 <span id="level" aria-live="polite"></span>
 <span id="levels" role="group" aria-label="zoom levels"></span>
 <label for="search">Search a class</label>
 <input id="search" type="search" list="classes" autocomplete="off" spellcheck="false">
 <datalist id="classes"></datalist>
 <span id="found" aria-live="polite"></span>
 <label><input id="labels" type="checkbox" checked> labels</label>
 <label><input id="heat" type="checkbox" disabled> class heatmap</label>
 <label><input id="heatneg" type="checkbox" disabled> negative</label>
 <span id="heatinfo" aria-live="polite"></span>
</div>
<main id="panes"></main>
<div id="side">
<section id="ask" aria-label="questions to the model">
 <h2>Ask the model</h2>
 <p id="ask-note" class="hint"></p>
 <div id="ask-tools" hidden>
  <div id="locate-drop" class="drop"><label for="locate-file">Locate an image</label>
  <input id="locate-file" type="file" accept="image/*"><span class="hint">or drop one here
  </span></div>
  <p id="locate-status" role="status"></p>
  <div id="located" hidden>
   <div id="locate-frame"><img id="locate-img" alt="the located image"><div
   id="locate-grid" role="group" aria-label="the layer's positions over the image"></div></div>
   <p id="locate-pos" aria-live="polite"></p>
   <div class="row"><button id="locate-icon" type="button" disabled>icon of this position
   </button> <button id="locate-clear" type="button">clear</button></div>
   <div id="locate-icon-out" class="ondemand" aria-live="polite"></div>
   <h3>Top classes</h3><ol id="locate-top"></ol>
   <h3 id="locate-cells-title"></h3><div id="locate-cells"></div>
  </div>
  <div id="near" hidden><h3 id="near-title"></h3><ol id="near-list"></ol>
  <button id="near-clear" type="button">clear</button></div>
 </div>
</section>
<section id="explore" aria-label="the samples: points, filters, selection"
 hidden>
 <h2>Samples</h2>
 <div class="row"><label><input id="pts" type="checkbox"> points</label>
  <label for="pcolour">colour by</label> <select id="pcolour">
  <option value="pred">predicted class</option>
  <option value="label">label</option><option value="correct">correct or wrong</option>
  <option value="conf">confidence</option><option value="source">source</option></select></div>
 <div class="row"><label for="popacity">opacity</label>
  <input id="popacity" type="range" min="0.1" max="1" step="0.05" value="0.85">
  <label><input id="punder" type="checkbox"> under the icons</label></div>
 <div id="legend"></div>
 <fieldset id="filters"><legend>Filters</legend>
  <label for="f-pred">predicted</label> <input id="f-pred" list="pclasses" autocomplete="off">
  <label for="f-label">label</label> <input id="f-label" list="plabels" autocomplete="off">
  <label for="f-correct">answer</label> <select id="f-correct"><option value="">any</option>
  <option value="correct">correct</option><option value="wrong">wrong</option></select>
  <label for="f-lo">confidence from</label> <input id="f-lo" type="number" min="0" max="1"
  step="0.05" value="0"> <label for="f-hi">to</label> <input id="f-hi" type="number" min="0"
  max="1" step="0.05" value="1">
  <label for="f-source">source</label> <input id="f-source" list="psources" autocomplete="off">
  <button id="f-reset" type="button">reset</button>
  <datalist id="pclasses"></datalist><datalist id="plabels"></datalist>
  <datalist id="psources"></datalist>
 </fieldset>
 <p id="pcount" aria-live="polite"></p>
 <div class="row" role="group" aria-label="selection"><button id="sel-lasso" type="button"
 aria-pressed="false">lasso</button> <button id="sel-box" type="button" aria-pressed="false">box
 </button> <button id="sel-clear" type="button">clear</button> <button id="export"
 type="button">export CSV</button></div>
 <p id="sel-count" aria-live="polite"></p>
 <div class="row" id="sel-ask" hidden><button id="sel-icon" type="button">icon of this selection
 </button> <button id="sel-near" type="button">nearest samples</button></div>
 <div id="sel-icon-out" class="ondemand" aria-live="polite"></div>
 <div id="hists"></div>
 <div id="sel-patches"></div>
 <div class="row"><label><input id="errors" type="checkbox"> error rate per cell</label>
 <span id="errors-note"></span></div>
 <h3 id="confusions-title"></h3><ol id="confusions"></ol>
</section>
<aside id="card" aria-live="polite"><p class="hint">Hover over the atlas, or focus it and press
Enter, to see a cell. Arrow keys pan, + and - zoom.</p></aside>
</div>
<div id="source" role="dialog" aria-modal="true" aria-labelledby="source-name" hidden>
 <div class="frame" id="source-frame"><img id="source-img" alt="source image"><div
 id="source-mark"></div></div>
 <p id="source-name"></p><button id="source-near" type="button" hidden>nearest samples to
 this one</button> <button id="source-close" type="button">Close (Esc)</button>
</div>
__SCRIPTS__
<script src="__PREFIX__lib/leaflet/leaflet.js"></script>
<script src="__PREFIX__common.js"></script>
<script src="__PREFIX__explore.js"></script>
<script src="__PREFIX__ask.js"></script>
<script src="__PREFIX__viewer.js"></script>
</body></html>
"""


def url_path(path: str) -> str:
    """A relative file path as a URL path: every character a browser would read otherwise
    (``%``, ``#``, ``?``, spaces) percent-escaped; ``/`` and the characters a sweep's job
    folders are named with (``=``, ``,``, ``+``, brackets) kept as they are."""
    return quote(path, safe="/=,+[]@:~")


def relative_url(target: str, root: RunLocation) -> str | None:
    """``target`` (a local path) relative to the folder of ``root`` (a RunLocation), as a URL
    path; None when either is not on the local disk (a page on disk cannot reach an object
    store)."""
    if not root.is_local or "://" in target.removeprefix("file://"):
        return None
    rel = os.path.relpath(target.removeprefix("file://"), root.root.removeprefix("file://"))
    return url_path(rel.replace(os.sep, "/"))


def safe_json(obj: Any) -> str:
    """JSON that is safe inside a script: ``<``, ``>``, ``&`` and non-ASCII escaped."""
    return (
        json.dumps(obj, ensure_ascii=True, separators=(",", ":"))
        .replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
    )


def data_script(run: dict[str, Any]) -> str:
    """The data file of one run: registers ``run`` and where the file is (tiles, sheets and
    thumbnails are found relative to it, so a page elsewhere can show this run)."""
    return (
        "(window.ATLAS_RUNS = window.ATLAS_RUNS || []).push("
        f"{{src: document.currentScript.src, run: {safe_json(run)}}});\n"
    )


def put_script(payload: dict[str, Any]) -> str:
    """A data file the page loads when it needs it (a script tag): it hands ``payload`` to the
    page's loader, keyed by the file's own URL."""
    return f"window.ATLAS_PUT(document.currentScript.src, {safe_json(payload)});\n"


def page_html(title: str, data_srcs: list[str], prefix: str = "") -> str:
    """The page: ``data_srcs`` are the data files of the runs it shows (one, or two side by
    side), relative to the page; ``prefix`` is where the viewer's own files are."""
    scripts = "\n".join(
        f'<script src="{html.escape(src, quote=True)}"></script>' for src in data_srcs
    )
    return (
        _PAGE.replace("__CSP__", CSP)
        .replace("__TITLE__", html.escape(title))
        .replace("__PREFIX__", html.escape(prefix, quote=True))
        .replace("__SCRIPTS__", scripts)
    )


def static_dir() -> Path:
    return Path(str(resources.files("atlas_core.compose"))) / "static"


def static_files() -> dict[str, bytes]:
    """The viewer's own files and the pinned Leaflet, by path relative to ``viewer/``."""
    root = static_dir()
    lib = root / "vendor" / f"leaflet-{LEAFLET_VERSION}"
    if not (lib / "leaflet.js").is_file():
        raise AtlasError(
            f"the viewer's Leaflet {LEAFLET_VERSION} is not installed at {lib}: run `make` "
            "(or `python -m atlas_core.compose.vendor`), which fetches the pinned package from "
            "the npm registry and checks its hash."
        )
    out = {name: (root / name).read_bytes() for name in _STATIC}
    out |= {f"lib/leaflet/{n}": (lib / n).read_bytes() for n in _LEAFLET}
    out |= {f"lib/leaflet/images/{p.name}": p.read_bytes() for p in (lib / "images").iterdir()}
    return out


def source_name(uri: str) -> str:
    """What the card calls a source: its file name (a tar member's name, an object's key)."""
    tail = uri.removeprefix("tar://").split("::", 1)[0]
    return tail.rstrip("/").rsplit("/", 1)[-1] or uri
