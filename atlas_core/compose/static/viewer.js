/* Activation atlas viewer: Leaflet (CRS.Simple) over the XYZ tiles of every grid level.
 *
 * Map coordinates: a layout point (x, y) in [0, 1]^2, y up, is latLng((y - 1) * T, x * T) with T
 * the tile size, so zoom z shows the map at T * 2^z pixels. Each level is a tile layer limited to
 * its zooms, so the level follows the zoom. Every string from the data is written with
 * textContent; nothing here builds HTML from a string.
 */
(function () {
  "use strict";
  const RUNS = window.ATLAS_RUNS || [];
  const $ = (id) => document.getElementById(id);
  const LABEL_FONT = "11px system-ui, sans-serif";
  const LABEL_CHARS = 22;
  const LABEL_H = 15;
  const CARD_ICON = 160;
  const panes = [];
  let selected = null; // {size, ix, iy}
  let query = "";
  let syncing = false;

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  const measure = (function () {
    const ctx = document.createElement("canvas").getContext("2d");
    ctx.font = LABEL_FONT;
    const cache = new Map();
    return function (text) {
      if (!cache.has(text)) cache.set(text, Math.ceil(ctx.measureText(text).width) + 8);
      return cache.get(text);
    };
  })();

  function short(name) {
    return name.length > LABEL_CHARS ? name.slice(0, LABEL_CHARS - 1) + "\u2026" : name;
  }

  class Pane {
    constructor(entry, index, parent) {
      this.run = entry.run;
      this.root = new URL("../", entry.src).href; // data/atlas.js lives in viewer/data/
      this.T = this.run.tile_px;
      this.levels = this.run.levels.slice().sort((a, b) => a.size - b.size);
      for (const lv of this.levels) {
        lv.index = new Map();
        lv.cells.forEach((c, i) => lv.index.set(c[1] * lv.size + c[0], i));
      }
      const box = el("section", "pane");
      if (RUNS.length > 1) box.appendChild(el("h2", "pane-title", this.run.title));
      if (this.run.axis) { // a two-class comparison: a on the left, b on the right
        const axis = el("div", "axis");
        axis.appendChild(el("span", "left", "\u2190 " + this.run.axis[0]));
        axis.appendChild(el("span", "right", this.run.axis[1] + " \u2192"));
        box.appendChild(axis);
      }
      this.div = el("div", "map");
      this.div.setAttribute("aria-label", "activation atlas of " + this.run.title +
        ": arrow keys pan, + and - zoom, Enter shows the centre cell");
      box.appendChild(this.div);
      parent.appendChild(box);
      const finest = this.levels[this.levels.length - 1];
      const T = this.T;
      let widest = 0;
      for (const c of finest.cells) if (c[3] >= 0) widest = Math.max(widest, measure(short(this.run.classes[c[3]])));
      const allLabels = Math.ceil(Math.log2(Math.max(widest, LABEL_H) * finest.size / T));
      this.maxZoom = Math.max(finest.zmax + 1, allLabels);
      const bounds = L.latLngBounds([[-T, 0], [0, T]]);
      this.map = L.map(this.div, {
        crs: L.CRS.Simple, minZoom: 0, maxZoom: this.maxZoom, zoomSnap: 1,
        attributionControl: false, fadeAnimation: false, maxBounds: bounds.pad(0.25), maxBoundsViscosity: 0.5,
        keyboardPanDelta: 120,
      });
      this.div.style.background = "rgb(" + [this.run.background, this.run.background, this.run.background] + ")";
      this.levels.forEach((lv, i) => {
        const last = i === this.levels.length - 1;
        L.tileLayer(this.root + "tiles/" + lv.size + "/{z}/{x}/{y}." + this.run.tile_ext, {
          tileSize: T, minZoom: lv.zmin, maxZoom: last ? this.maxZoom : lv.zmax,
          minNativeZoom: lv.zmin, maxNativeZoom: lv.zmax, noWrap: true, bounds: bounds,
          keepBuffer: 1,
        }).addTo(this.map);
      });
      this.heat = L.layerGroup().addTo(this.map);
      this.labels = L.layerGroup().addTo(this.map);
      this.hits = L.layerGroup().addTo(this.map);
      this.marks = L.layerGroup().addTo(this.map);
    }

    level() {
      const z = this.map.getZoom();
      for (const lv of this.levels) if (z >= lv.zmin && z <= lv.zmax) return lv;
      return this.levels[this.levels.length - 1];
    }

    toLatLng(x, y) { return L.latLng((y - 1) * this.T, x * this.T); }
    toXY(ll) { return [ll.lng / this.T, ll.lat / this.T + 1]; }

    cellAt(x, y, lv) {
      lv = lv || this.level();
      const g = lv.size;
      if (x < 0 || x > 1 || y < 0 || y > 1) return null;
      const ix = Math.min(g - 1, Math.floor(x * g)), iy = Math.min(g - 1, Math.floor(y * g));
      const i = lv.index.get(iy * g + ix);
      return i === undefined ? null : { lv: lv, i: i, c: lv.cells[i] };
    }

    cellBounds(lv, ix, iy) {
      const g = lv.size;
      return L.latLngBounds(this.toLatLng(ix / g, iy / g), this.toLatLng((ix + 1) / g, (iy + 1) / g));
    }

    mark(cell, kind) {
      this.marks.clearLayers();
      if (!cell) return;
      const b = this.cellBounds(cell.lv, cell.c[0], cell.c[1]);
      L.rectangle(b, { className: "mark-outer " + kind, fill: false, interactive: false }).addTo(this.marks);
      L.rectangle(b, { className: "mark-inner " + kind, fill: false, interactive: false }).addTo(this.marks);
    }

    drawLabels(on) {
      this.labels.clearLayers();
      if (!on) return;
      const lv = this.level(), g = lv.size, z = this.map.getZoom();
      const side = this.T * Math.pow(2, z) / g; // cell side in screen pixels
      let widest = LABEL_H;
      for (const c of lv.cells) if (c[3] >= 0) widest = Math.max(widest, measure(short(this.run.classes[c[3]])));
      const k = Math.max(1, Math.ceil(widest / side), Math.ceil(LABEL_H / side));
      if (this === panes[0]) document.body.dataset.labelStride = k;
      const vb = this.map.getBounds().pad(0.2);
      const [x0, y0] = this.toXY(vb.getSouthWest()), [x1, y1] = this.toXY(vb.getNorthEast());
      const best = new Map();
      for (const c of lv.cells) {
        if (c[3] < 0 || (c[0] + 1) / g < x0 || c[0] / g > x1 || (c[1] + 1) / g < y0 || c[1] / g > y1) continue;
        const key = Math.floor(c[0] / k) + "," + Math.floor(c[1] / k);
        const b = best.get(key);
        if (!b || c[2] > b[2]) best.set(key, c);
      }
      for (const c of best.values()) {
        const text = short(this.run.classes[c[3]]), w = measure(text);
        // the label stays inside its k x k block of cells, so labels never overlap
        const bx0 = Math.floor(c[0] / k) * k * side, by1 = (g - Math.floor(c[1] / k) * k) * side;
        const cx = Math.min(Math.max((c[0] + 0.5) * side, bx0 + w / 2), bx0 + k * side - w / 2);
        const cy = Math.min(Math.max((g - c[1] - 0.5) * side, by1 - k * side + LABEL_H / 2), by1 - LABEL_H / 2);
        const ll = this.map.unproject(L.point(cx, cy), z);
        const span = el("span", null, text);
        L.marker(ll, {
          icon: L.divIcon({ className: "atlas-label", html: span, iconSize: [w, LABEL_H], iconAnchor: [w / 2, LABEL_H / 2] }),
          interactive: false, keyboard: false,
        }).addTo(this.labels);
      }
    }

    heatOf(name) {
      const lv = this.level(), c = this.run.classes.indexOf(name);
      if (!lv.heat || c < 0) return null;
      const j = lv.heat.classes.indexOf(c);
      return j < 0 ? null : lv.heat.values[j];
    }

    drawHeat(name, negative) {
      this.heat.clearLayers();
      const values = name ? this.heatOf(name) : null;
      if (!values) return null;
      const lv = this.level(), sign = negative ? -1 : 1;
      let top = 0;
      for (const v of values) top = Math.max(top, sign * v);
      const vb = this.map.getBounds().pad(0.2), g = lv.size;
      const [x0, y0] = this.toXY(vb.getSouthWest()), [x1, y1] = this.toXY(vb.getNorthEast());
      lv.cells.forEach((c, i) => {
        if ((c[0] + 1) / g < x0 || c[0] / g > x1 || (c[1] + 1) / g < y0 || c[1] / g > y1) return;
        const share = top > 0 ? Math.min(1, Math.max(0, sign * values[i] / top)) : 0;
        // the strongest cells stay clear, the others fade: opacity, not hue, carries the value
        L.rectangle(this.cellBounds(lv, c[0], c[1]), {
          stroke: false, fill: true, fillColor: "#fff", fillOpacity: +(0.9 * (1 - share)).toFixed(4),
          className: "heat", interactive: false,
        }).addTo(this.heat);
      });
      return top;
    }

    search(matches) {
      this.hits.clearLayers();
      if (!matches) return 0;
      const lv = this.level();
      let n = 0;
      for (const c of lv.cells) {
        if (!c[4].some((t) => matches.has(this.run.classes[t[0]]))) continue;
        n += 1;
        if (n > 20000) continue;
        const b = this.cellBounds(lv, c[0], c[1]);
        L.rectangle(b, { className: "hit-outer", fill: false, interactive: false }).addTo(this.hits);
        L.rectangle(b, { className: "hit-inner", fill: false, interactive: false }).addTo(this.hits);
      }
      return n;
    }
  }

  // ------------------------------------------------------------------ the card
  function iconBox(pane, lv, i) {
    const cols = pane.run.sheet_columns, per = cols * cols;
    const page = Math.floor(i / per), pos = i % per;
    const rows = Math.ceil(Math.min(lv.cells.length - page * per, per) / cols);
    const d = el("div", "icon");
    d.style.width = d.style.height = CARD_ICON + "px";
    d.style.backgroundImage = 'url("' + pane.root + "levels/" + lv.size + "/icons-" + page + '.png")';
    d.style.backgroundSize = cols * CARD_ICON + "px " + rows * CARD_ICON + "px";
    d.style.backgroundPosition = -(pos % cols) * CARD_ICON + "px " + -Math.floor(pos / cols) * CARD_ICON + "px";
    d.setAttribute("role", "img");
    d.setAttribute("aria-label", "icon of cell " + lv.cells[i][0] + ", " + lv.cells[i][1]);
    return d;
  }

  function exemplarButton(pane, lv, i, e) {
    const px = pane.run.patch_px, er = pane.run.exemplar_rows;
    const b = el("button", "exemplar");
    b.type = "button";
    const name = pane.run.sources[e[1]] ? pane.run.sources[e[1]][0] : "source " + e[1];
    b.setAttribute("aria-label", "exemplar from " + name + ": show the whole image");
    b.title = name;
    b.style.width = b.style.height = px + "px";
    b.style.backgroundImage = 'url("' + pane.root + "levels/" + lv.size + "/exemplars-" + Math.floor(i / er) + '.jpg")';
    b.style.backgroundPosition = -e[0] * px + "px " + -(i % er) * px + "px";
    b.addEventListener("click", () => openSource(pane, e));
    return b;
  }

  function cardSection(pane, cell) {
    const s = el("section", "cell");
    if (panes.length > 1) s.appendChild(el("h3", null, pane.run.title));
    if (!cell) { s.appendChild(el("p", "hint", "no kept cell here")); return s; }
    const c = cell.c, lv = cell.lv;
    s.appendChild(el("h2", null, "Cell (" + c[0] + ", " + c[1] + ") of " + lv.size + " \u00d7 " + lv.size));
    s.appendChild(iconBox(pane, lv, cell.i));
    s.appendChild(el("p", "count", c[2] + " activations"));
    const attr = pane.run.label_kind === "attribution";
    s.appendChild(el("h4", null, attr ? "Top classes (mean attribution)" : "Top classes (predictions)"));
    const ol = el("ol", "top");
    for (const t of c[4]) ol.appendChild(el("li", null, pane.run.classes[t[0]] + " \u2014 " + t[1]));
    s.appendChild(ol);
    if (pane.run.axis) {
      for (const name of pane.run.axis) {
        const v = pane.heatOf(name);
        if (v) s.appendChild(el("p", "axis-value", "mean attribution to " + name + ": " + v[cell.i]));
      }
    }
    if (c[5].length) {
      s.appendChild(el("h4", null, "Exemplars"));
      const row = el("div", "exemplars");
      for (const e of c[5]) row.appendChild(exemplarButton(pane, lv, cell.i, e));
      s.appendChild(row);
    }
    return s;
  }

  function showCard(x, y, kind) {
    const card = $("card");
    card.replaceChildren();
    for (const p of panes) {
      const cell = p.cellAt(x, y);
      p.mark(cell, kind);
      card.appendChild(cardSection(p, cell));
    }
  }

  function openSource(pane, e) {
    const dlg = $("source"), src = pane.run.sources[e[1]];
    $("source-img").src = pane.root + "sources/" + e[1] + ".jpg";
    $("source-name").textContent = src ? src[0] : "";
    const m = $("source-mark");
    m.style.left = 100 * e[2] + "%"; m.style.top = 100 * e[3] + "%";
    m.style.width = 100 * (e[4] - e[2]) + "%"; m.style.height = 100 * (e[5] - e[3]) + "%";
    dlg.hidden = false;
    $("source-close").focus();
  }

  function closeSource() { $("source").hidden = true; }

  // ------------------------------------------------------------------ state and the URL hash
  function matchesOf(q) {
    if (!q) return null;
    const names = new Set();
    for (const p of panes) for (const n of p.run.classes) names.add(n);
    const lower = q.toLowerCase();
    const exact = [...names].filter((n) => n.toLowerCase() === lower);
    return new Set(exact.length ? exact : [...names].filter((n) => n.toLowerCase().includes(lower)));
  }

  function refresh() {
    const p = panes[0], lv = p.level();
    const idx = p.levels.indexOf(lv);
    $("level").textContent = "Level " + (idx + 1) + " of " + p.levels.length + ": " + lv.size +
      " \u00d7 " + lv.size + " grid, zoom " + p.map.getZoom();
    for (const b of document.querySelectorAll("#levels button")) {
      b.setAttribute("aria-pressed", String(+b.dataset.size === lv.size));
    }
    const labels = $("labels").checked;
    let n = 0;
    const m = matchesOf(query);
    for (const q of panes) { q.drawLabels(labels); n += q.search(m); }
    $("found").textContent = m ? n + " cells at " + lv.size + " \u00d7 " + lv.size + " hold \u201c" + query + "\u201d" : "";
    const one = m && m.size === 1 ? [...m][0] : null;
    const heatable = one !== null && panes.some((q) => q.heatOf(one));
    $("heat").disabled = !heatable;
    $("heatneg").disabled = !heatable;
    const on = heatable && $("heat").checked, neg = $("heatneg").checked;
    let top = null;
    for (const q of panes) { const t = q.drawHeat(on ? one : null, neg); if (top === null) top = t; }
    $("heatinfo").textContent = on ? "opacity: mean " + (neg ? "negative " : "") + "attribution to " + one +
      " relative to the strongest cell (" + (top === null ? "none" : top.toPrecision(3)) + ")" : "";
    if (selected) {
      const s = p.levels.find((l) => l.size === selected.size);
      if (s && s !== lv) selected = null; // a selection belongs to its level
    }
    if (selected) showCard((selected.ix + 0.5) / selected.size, (selected.iy + 0.5) / selected.size, "selected");
    writeHash();
  }

  function writeHash() {
    const p = panes[0], c = p.toXY(p.map.getCenter());
    const h = new URLSearchParams();
    h.set("l", p.level().size);
    h.set("z", p.map.getZoom());
    h.set("x", c[0].toFixed(4));
    h.set("y", c[1].toFixed(4));
    if (selected) h.set("c", selected.ix + "," + selected.iy);
    if (query) h.set("q", query);
    if ($("heat").checked) h.set("h", $("heatneg").checked ? "neg" : "1");
    const next = "#" + h.toString();
    if (location.hash !== next) {
      try { history.replaceState(null, "", next); } catch (err) { /* some file:// setups */ }
    }
  }

  function readHash() {
    const h = new URLSearchParams(location.hash.slice(1));
    const p = panes[0];
    const lv = p.levels.find((l) => l.size === +h.get("l")) || p.levels[0];
    const fit = p.map.getBoundsZoom(L.latLngBounds([[-p.T, 0], [0, p.T]]));
    let z = h.has("z") ? +h.get("z") : h.has("l") ? lv.zmin : Math.min(fit, p.levels[0].zmax);
    if (!Number.isFinite(z)) z = lv.zmin;
    const x = h.has("x") ? +h.get("x") : 0.5, y = h.has("y") ? +h.get("y") : 0.5;
    p.map.setView(p.toLatLng(Number.isFinite(x) ? x : 0.5, Number.isFinite(y) ? y : 0.5),
      Math.max(0, Math.min(p.maxZoom, Math.round(z))), { animate: false });
    query = (h.get("q") || "").trim();
    $("search").value = query;
    $("heat").checked = h.has("h");
    $("heatneg").checked = h.get("h") === "neg";
    const m = /^(\d+),(\d+)$/.exec(h.get("c") || "");
    selected = m ? { size: p.level().size, ix: +m[1], iy: +m[2] } : null;
    refresh();
  }

  // ------------------------------------------------------------------ wiring
  function wire(p) {
    p.map.on("mousemove", (ev) => {
      const [x, y] = p.toXY(ev.latlng);
      if (!selected) showCard(x, y, "hover");
    });
    p.map.on("click", (ev) => {
      const [x, y] = p.toXY(ev.latlng), cell = p.cellAt(x, y);
      selected = cell ? { size: cell.lv.size, ix: cell.c[0], iy: cell.c[1] } : null;
      if (cell) showCard(x, y, "selected"); else panes.forEach((q) => q.mark(null));
      writeHash();
    });
    p.map.on("moveend zoomend", () => {
      if (syncing) return;
      if (panes.length > 1) {
        syncing = true;
        const c = p.toXY(p.map.getCenter());
        for (const q of panes) if (q !== p) q.map.setView(q.toLatLng(c[0], c[1]), p.map.getZoom(), { animate: false });
        syncing = false;
      }
      if (document.activeElement === p.map.getContainer() && !selected) {
        const c = p.toXY(p.map.getCenter());
        showCard(c[0], c[1], "focus");
      }
      refresh();
    });
    p.map.getContainer().addEventListener("keydown", (ev) => {
      if (ev.key === "Enter") {
        const c = p.toXY(p.map.getCenter()), cell = p.cellAt(c[0], c[1]);
        selected = cell ? { size: cell.lv.size, ix: cell.c[0], iy: cell.c[1] } : null;
        showCard(c[0], c[1], "selected");
        writeHash();
      } else if (ev.key === "Escape") {
        selected = null;
        panes.forEach((q) => q.mark(null));
        writeHash();
      }
    });
  }

  function start() {
    if (!RUNS.length || !window.L) {
      $("title").textContent = "The atlas data or Leaflet did not load: open viewer/index.html of a composed run.";
      return;
    }
    const first = RUNS[0].run;
    $("title").textContent = RUNS.map((r) => r.run.title).join(" | ");
    $("meta").textContent = RUNS.map((r) => r.run.meta).join(" | ");
    // the run's own links (side by side pages), then the runner's (data/links.js: its views)
    for (const link of (first.links || []).concat(window.ATLAS_LINKS || [])) {
      const a = el("a", null, link.text);
      a.href = link.href;
      $("links").appendChild(a);
    }
    RUNS.forEach((r, i) => panes.push(new Pane(r, i, $("panes"))));
    document.body.classList.toggle("compare", panes.length > 1);
    const names = new Set();
    for (const p of panes) for (const n of p.run.classes) names.add(n);
    for (const n of [...names].sort()) { const o = el("option"); o.value = n; $("classes").appendChild(o); }
    for (const lv of panes[0].levels) {
      const b = el("button", null, lv.size + " \u00d7 " + lv.size);
      b.type = "button";
      b.dataset.size = lv.size;
      b.addEventListener("click", () => { selected = null; panes[0].map.setZoom(lv.zmin); });
      $("levels").appendChild(b);
    }
    $("search").addEventListener("input", () => { query = $("search").value.trim(); refresh(); });
    $("labels").addEventListener("change", refresh);
    $("heat").addEventListener("change", refresh);
    $("heatneg").addEventListener("change", refresh);
    $("source-close").addEventListener("click", closeSource);
    document.addEventListener("keydown", (ev) => { if (ev.key === "Escape") closeSource(); });
    window.addEventListener("hashchange", readHash);
    panes.forEach(wire);
    document.body.dataset.maxZoom = panes[0].maxZoom;
    readHash();
    document.body.dataset.ready = "1";
  }

  start();
})();
