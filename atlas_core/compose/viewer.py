"""A static viewer page that opens from disk (no server): the atlas with per-cell details on hover.

Cell data is embedded as JSON in a ``<script type="application/json">`` block with ``<``, ``>`` and
``&`` escaped, and the page writes it with ``textContent`` only, so no string from a dataset, a
class list or a file name can inject markup.
"""

from __future__ import annotations

import html
import json
from typing import Any

_PAGE = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Activation atlas: __TITLE__</title>
<style>
 body { font: 14px system-ui, sans-serif; margin: 16px; color: #222; }
 #wrap { position: relative; display: inline-block; line-height: 0; }
 #atlas { width: min(92vmin, 1200px); border: 1px solid #ddd; display: block; }
 #hl { position: absolute; box-sizing: border-box; border: 2px solid #e33;
       pointer-events: none; display: none; }
 #tip { position: fixed; background: #fff; border: 1px solid #999; padding: 6px 8px;
        pointer-events: none; display: none; box-shadow: 0 2px 6px #0003; max-width: 320px; }
 #tip h4 { margin: 0 0 4px 0; font-size: 13px; } #tip ol { margin: 0; padding-left: 20px; }
 .meta { color: #666; margin-bottom: 8px; }
</style></head>
<body>
<h2 id="title"></h2>
<div class="meta" id="meta"></div>
<div id="wrap"><img id="atlas" src="__IMAGE__" alt="activation atlas"><div id="hl"></div></div>
<div id="tip"><h4 id="tiph"></h4><ol id="tipl"></ol></div>
<script type="application/json" id="data">__DATA__</script>
<script>
(function () {
  const D = JSON.parse(document.getElementById("data").textContent);
  document.getElementById("title").textContent = D.title;
  document.getElementById("meta").textContent = D.meta;
  const byCell = new Map(D.cells.map(c => [c.ix + "," + c.iy, c]));
  const img = document.getElementById("atlas"), tip = document.getElementById("tip");
  const hl = document.getElementById("hl");
  function show(ix, iy, x, y) {
    const c = byCell.get(ix + "," + iy), g = D.size;
    if (!c) { tip.style.display = "none"; hl.style.display = "none"; return; }
    document.getElementById("tiph").textContent =
      "cell (" + ix + ", " + iy + "): " + c.count + " activations" +
      (c.label ? "; label (top attribution): " + c.label : "");
    const ol = document.getElementById("tipl");
    ol.replaceChildren();
    for (const [name, n] of c.top) {
      const li = document.createElement("li");
      li.textContent = name + " (" + n + ")";
      ol.appendChild(li);
    }
    tip.style.left = (x + 14) + "px"; tip.style.top = (y + 14) + "px";
    tip.style.display = "block";
    // percentages of the image: right at any size, before or after layout and on resize
    hl.style.left = (100 * ix / g) + "%"; hl.style.top = (100 * (g - 1 - iy) / g) + "%";
    hl.style.width = hl.style.height = (100 / g) + "%"; hl.style.display = "block";
  }
  img.addEventListener("mousemove", ev => {
    const r = img.getBoundingClientRect(), g = D.size;
    const ix = Math.floor((ev.clientX - r.left) / r.width * g);
    const iy = g - 1 - Math.floor((ev.clientY - r.top) / r.height * g);
    show(ix, iy, ev.clientX, ev.clientY);
  });
  img.addEventListener("mouseleave", () => {
    tip.style.display = "none"; hl.style.display = "none";
  });
  // #cell=ix,iy opens a cell's details: a link to one cell, and what tests use without a mouse
  function fromHash() {
    const m = /^#cell=(\d+),(\d+)$/.exec(location.hash);
    if (!m) return;
    const r = img.getBoundingClientRect(), g = D.size, w = r.width / g;
    const ix = +m[1], iy = +m[2];
    show(ix, iy, r.left + (ix + 1) * w, r.top + (g - iy) * w);
  }
  window.addEventListener("hashchange", fromHash);
  if (img.complete) fromHash(); else img.addEventListener("load", fromHash);
})();
</script>
</body></html>
"""


def _safe_json(obj: Any) -> str:
    return (
        json.dumps(obj, ensure_ascii=True)
        .replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
    )


def viewer_html(
    *,
    image_src: str,
    size: int,
    cells: list[dict[str, Any]],
    title: str,
    meta: str,
) -> str:
    """The viewer page as one self-contained HTML string.

    cells: one dict per drawn cell: ``{"ix", "iy", "count", "top": [[class name, count], ...]}``
        and optionally ``"label"`` (the top class of the cell's mean attribution).
    image_src: the atlas image, relative to the page (e.g. ``"../atlas.png"``).
    """
    data = {"title": title, "meta": meta, "size": int(size), "cells": cells}
    return (
        _PAGE.replace("__TITLE__", html.escape(title))
        .replace("__IMAGE__", html.escape(image_src, quote=True))
        .replace("__DATA__", _safe_json(data))
    )
