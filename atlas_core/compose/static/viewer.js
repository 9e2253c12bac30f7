/* Activation atlas viewer: Leaflet (CRS.Simple) over the XYZ tiles of every grid level.
 *
 * Map coordinates: a layout point (x, y) in [0, 1]^2, y up, is latLng((y - 1) * T, x * T) with T
 * the tile size, so zoom z shows the map at T * 2^z pixels. Each level is a tile layer limited to
 * its zooms, so the level follows the zoom.
 *
 * Data is loaded when it is needed (data files are scripts that hand their payload to
 * ATLAS_PUT): a level's cells when the level is shown, card data by chunks of cells, a class's
 * heat when its heatmap is shown, source names when a source is. Search matches and heat are
 * drawn on one canvas per map, for the cells in the viewport only. Every string from the data is
 * written with textContent; nothing here builds HTML from a string.
 */
(function () {
  "use strict";
  const C = window.ATLAS_COMMON;
  const RUNS = window.ATLAS_RUNS || [];
  const $ = (id) => document.getElementById(id);
  const LABEL_FONT = "11px system-ui, sans-serif";
  const LABEL_CHARS = 22;
  const LABEL_H = 15;
  const CARD_ICON = 160;
  const SOURCE_PX = 420;
  const panes = [];
  const view = { panes: [] }; // what each map drew last (read by the tests)
  window.ATLAS_VIEW = view;
  let selected = null; // {size, ix, iy}
  let query = "";
  let syncing = false;
  // the explorer (explore.js) and the questions (ask.js) plug in here: hash fields, overlay
  // cells, card lines (text or a node), an exemplar's source opened (pane, patch index)
  const hooks = { write: [], read: [], overlay: [], card: [], source: [] };

  // ------------------------------------------------------------------ loading data files
  const track = C.busy();
  const load = C.loader(track);
  const typed = C.typed;
  const el = C.el;

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

  // ------------------------------------------------------------------ the canvas overlay
  const Overlay = C.overlay("atlas-overlay");

  class Pane {
    constructor(entry, index, parent) {
      this.run = entry.run;
      this.index = index;
      this.root = new URL("../", entry.src).href; // data/atlas.js lives in viewer/data/
      this.data = new URL("./", entry.src).href;
      this.T = this.run.tile_px;
      this.levels = this.run.levels.slice().sort((a, b) => a.size - b.size);
      this.drawn = { hits: [], heat: [] };
      view.panes[index] = this.drawn;
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
      const widest = finest.widest ? measure(short(finest.widest)) : LABEL_H;
      const allLabels = Math.ceil(Math.log2(Math.max(widest, LABEL_H) * finest.size / T));
      this.maxZoom = Math.max(finest.zmax + 1, allLabels);
      const bounds = L.latLngBounds([[-T, 0], [0, T]]);
      this.map = L.map(this.div, {
        crs: L.CRS.Simple, minZoom: 0, maxZoom: this.maxZoom, zoomSnap: 1,
        attributionControl: false, fadeAnimation: false, maxBounds: bounds.pad(0.25), maxBoundsViscosity: 0.5,
        keyboardPanDelta: 120,
      });
      this.div.style.background = "rgb(" + [this.run.background, this.run.background, this.run.background] + ")";
      C.tiles(this.map, this.root, this.run, this.levels, bounds, this.maxZoom);
      this.overlay = new Overlay();
      this.overlay.draw = (ctx, toPx, size) => this.drawOverlay(ctx, toPx, size);
      this.overlay.addTo(this.map);
      this.labels = L.layerGroup().addTo(this.map);
      this.marks = L.layerGroup().addTo(this.map);
      this.hits = null; // {level, set of cell indices} of the current search
      this.heatShown = null; // {name, negative}
    }

    level() {
      const z = this.map.getZoom();
      for (const lv of this.levels) if (z >= lv.zmin && z <= lv.zmax) return lv;
      return this.levels[this.levels.length - 1];
    }

    // ---------------------------------------------------------------- data of a level
    levelData(lv) {
      if (lv.loaded) return Promise.resolve(lv.loaded);
      return load(this.data + "level-" + lv.size + ".js").then((d) => {
        if (!lv.loaded) {
          const c = {
            ix: typed(d.ix, Uint16Array), iy: typed(d.iy, Uint16Array),
            count: typed(d.count, Uint32Array), label: typed(d.label, Int16Array),
            top: typed(d.top, Int16Array), t: d.t, index: new Map(), cards: new Map(), heat: new Map(),
          };
          for (let i = 0; i < c.ix.length; i++) c.index.set(c.iy[i] * lv.size + c.ix[i], i);
          lv.loaded = c;
        }
        return lv.loaded;
      });
    }

    cardChunk(lv, i) {
      const n = Math.floor(i / this.run.card_chunk), d = lv.loaded;
      if (d.cards.has(n)) return Promise.resolve(d.cards.get(n));
      return load(this.data + "cards-" + lv.size + "-" + n + ".js").then((p) => {
        const c = { topv: typed(p.topv, Float32Array), ex: typed(p.ex, Int32Array),
          slot: typed(p.slot, Int32Array), box: typed(p.box, Float32Array),
          fid: p.fid ? typed(p.fid, Float32Array) : null,
          margin: p.margin ? typed(p.margin, Float32Array) : null,
          rank: p.rank ? typed(p.rank, Int32Array) : null };
        d.cards.set(n, c);
        return c;
      });
    }

    sources(slot) {
      const n = Math.floor(slot / this.run.exemplars.per);
      return load(this.data + "sources-" + n + ".js");
    }

    heatValues(lv, name) {
      const c = this.run.classes.indexOf(name);
      if (!lv.heat || c < 0) return null;
      const j = lv.heat.indexOf(c);
      if (j < 0) return null;
      const d = lv.loaded;
      if (d && d.heat.has(j)) return Promise.resolve(d.heat.get(j));
      return this.levelData(lv).then((dd) => load(this.data + "heat-" + lv.size + "-" + j + ".js").then((p) => {
        const v = typed(p.values, Float32Array);
        dd.heat.set(j, v);
        return v;
      }));
    }

    heatLoaded(lv, name) {
      const c = this.run.classes.indexOf(name), d = lv.loaded;
      if (!lv.heat || !d || c < 0) return null;
      const j = lv.heat.indexOf(c);
      return j < 0 ? null : d.heat.get(j) || null;
    }

    // ---------------------------------------------------------------- geometry
    toLatLng(x, y) { return L.latLng((y - 1) * this.T, x * this.T); }
    toXY(ll) { return [ll.lng / this.T, ll.lat / this.T + 1]; }

    viewport(pad) {
      const vb = this.map.getBounds().pad(pad);
      const [x0, y0] = this.toXY(vb.getSouthWest()), [x1, y1] = this.toXY(vb.getNorthEast());
      return [x0, y0, x1, y1];
    }

    visible(lv, fn) { // fn(i) for every kept cell of the level inside the viewport
      const d = lv.loaded, g = lv.size;
      if (!d) return;
      const [x0, y0, x1, y1] = this.viewport(0.1);
      const a = Math.max(0, Math.floor(x0 * g)), b = Math.min(g - 1, Math.floor(x1 * g));
      const c = Math.max(0, Math.floor(y0 * g)), e = Math.min(g - 1, Math.floor(y1 * g));
      if ((b - a + 1) * (e - c + 1) < d.ix.length) {
        for (let iy = c; iy <= e; iy++) for (let ix = a; ix <= b; ix++) {
          const i = d.index.get(iy * g + ix);
          if (i !== undefined) fn(i);
        }
      } else {
        for (let i = 0; i < d.ix.length; i++) if (d.ix[i] >= a && d.ix[i] <= b && d.iy[i] >= c && d.iy[i] <= e) fn(i);
      }
    }

    cellAt(x, y, lv) {
      lv = lv || this.level();
      const g = lv.size, d = lv.loaded;
      if (!d || x < 0 || x > 1 || y < 0 || y > 1) return null;
      const ix = Math.min(g - 1, Math.floor(x * g)), iy = Math.min(g - 1, Math.floor(y * g));
      const i = d.index.get(iy * g + ix);
      return i === undefined ? null : { lv: lv, i: i, ix: ix, iy: iy };
    }

    cellBounds(lv, ix, iy) {
      const g = lv.size;
      return L.latLngBounds(this.toLatLng(ix / g, iy / g), this.toLatLng((ix + 1) / g, (iy + 1) / g));
    }

    mark(cell, kind) {
      this.marks.clearLayers();
      if (!cell) return;
      const b = this.cellBounds(cell.lv, cell.ix, cell.iy);
      L.rectangle(b, { className: "mark-outer " + kind, fill: false, interactive: false }).addTo(this.marks);
      L.rectangle(b, { className: "mark-inner " + kind, fill: false, interactive: false }).addTo(this.marks);
    }

    // ---------------------------------------------------------------- what the map shows
    drawLabels(on) {
      this.labels.clearLayers();
      const lv = this.level(), d = lv.loaded;
      if (!on || !d) return;
      const g = lv.size, z = this.map.getZoom();
      const side = this.T * Math.pow(2, z) / g; // cell side in screen pixels
      const names = this.run.classes;
      const widest = lv.widest ? measure(short(lv.widest)) : LABEL_H;
      const k = Math.max(1, Math.ceil(widest / side), Math.ceil(LABEL_H / side));
      if (this === panes[0]) document.body.dataset.labelStride = k;
      const best = new Map();
      this.visible(lv, (i) => {
        if (d.label[i] < 0) return;
        const key = Math.floor(d.ix[i] / k) + "," + Math.floor(d.iy[i] / k);
        const b = best.get(key);
        if (b === undefined || d.count[i] > d.count[b]) best.set(key, i);
      });
      for (const i of best.values()) {
        const text = short(names[d.label[i]]), w = measure(text), ix = d.ix[i], iy = d.iy[i];
        // the label stays inside its k x k block of cells, so labels never overlap
        const bx0 = Math.floor(ix / k) * k * side, by1 = (g - Math.floor(iy / k) * k) * side;
        const cx = Math.min(Math.max((ix + 0.5) * side, bx0 + w / 2), bx0 + k * side - w / 2);
        const cy = Math.min(Math.max((g - iy - 0.5) * side, by1 - k * side + LABEL_H / 2), by1 - LABEL_H / 2);
        const ll = this.map.unproject(L.point(cx, cy), z);
        L.marker(ll, {
          icon: L.divIcon({ className: "atlas-label", html: el("span", null, text), iconSize: [w, LABEL_H], iconAnchor: [w / 2, LABEL_H / 2] }),
          interactive: false, keyboard: false,
        }).addTo(this.labels);
      }
    }

    drawOverlay(ctx, toPx) {
      const lv = this.level(), d = lv.loaded;
      this.drawn.hits = [];
      this.drawn.heat = [];
      if (!d) return;
      const rect = (i) => {
        const b = this.cellBounds(lv, d.ix[i], d.iy[i]);
        const p = toPx(b.getNorthWest()), q = toPx(b.getSouthEast());
        return [p.x, p.y, q.x - p.x, q.y - p.y];
      };
      const hs = this.heatShown, values = hs ? this.heatLoaded(lv, hs.name) : null;
      for (const f of hooks.overlay) f(this, ctx, lv, rect);
      if (values) {
        const sign = hs.negative ? -1 : 1;
        let top = 0;
        for (let i = 0; i < values.length; i++) top = Math.max(top, sign * values[i]);
        this.drawn.top = top;
        ctx.fillStyle = "#fff";
        this.visible(lv, (i) => {
          const share = top > 0 ? Math.min(1, Math.max(0, sign * values[i] / top)) : 0;
          // the strongest cells stay clear, the others fade: opacity, not hue, carries the value
          const opacity = +(0.9 * (1 - share)).toFixed(4);
          ctx.globalAlpha = opacity;
          ctx.fillRect(...rect(i));
          this.drawn.heat.push([d.ix[i], d.iy[i], opacity]);
        });
        ctx.globalAlpha = 1;
      }
      if (this.hits && this.hits.level === lv) {
        this.visible(lv, (i) => {
          if (!this.hits.set.has(i)) return;
          const r = rect(i);
          ctx.setLineDash([]); ctx.lineWidth = 5; ctx.strokeStyle = "#000"; ctx.strokeRect(...r);
          ctx.setLineDash([4, 3]); ctx.lineWidth = 2; ctx.strokeStyle = "#fff"; ctx.strokeRect(...r);
          this.drawn.hits.push([d.ix[i], d.iy[i]]);
        });
        ctx.setLineDash([]);
      }
    }

    search(matches) { // the cells of the level whose label or top classes hold a match
      const lv = this.level(), d = lv.loaded;
      this.hits = null;
      if (!matches || !d) return 0;
      const ids = new Set();
      this.run.classes.forEach((n, c) => { if (matches.has(n)) ids.add(c); });
      const set = new Set();
      for (let i = 0; i < d.ix.length; i++) {
        for (let j = 0; j < d.t; j++) if (ids.has(d.top[i * d.t + j])) { set.add(i); break; }
      }
      this.hits = { level: lv, set: set };
      return set.size;
    }
  }

  // ------------------------------------------------------------------ the card
  function iconBox(pane, lv, cell, px) {
    const cols = pane.run.sheet_columns, per = cols * cols, side = px || CARD_ICON;
    const page = Math.floor(cell.i / per), pos = cell.i % per;
    const rows = Math.ceil(Math.min(lv.cells - page * per, per) / cols);
    const d = el("div", "icon");
    d.style.width = d.style.height = side + "px";
    d.style.backgroundImage = 'url("' + pane.root + "levels/" + lv.size + "/icons-" + page + '.png")';
    d.style.backgroundSize = cols * side + "px " + rows * side + "px";
    d.style.backgroundPosition = -(pos % cols) * side + "px " + -Math.floor(pos / cols) * side + "px";
    d.setAttribute("role", "img");
    d.setAttribute("aria-label", "icon of cell " + cell.ix + ", " + cell.iy);
    return d;
  }

  function exemplarButton(pane, e, slot, box, names) {
    const ex = pane.run.exemplars, px = ex.patch_px, pos = e % ex.per;
    const b = el("button", "exemplar");
    b.type = "button";
    const i = slot % ex.per, name = names && names.names[i] ? names.names[i] : "source " + slot;
    b.setAttribute("aria-label", "exemplar from " + name + ": show the whole image");
    b.title = name;
    b.style.width = b.style.height = px + "px";
    b.style.backgroundImage = 'url("' + pane.root + ex.dir + "patches-" + Math.floor(e / ex.per) + '.jpg")';
    b.style.backgroundPosition = -(pos % ex.cols) * px + "px " + -Math.floor(pos / ex.cols) * px + "px";
    b.dataset.e = String(e);
    b.addEventListener("click", () => openSource(pane, slot, box, names, e));
    return b;
  }

  function cardFacts(pane, cell) { // every file the card reads, loaded
    const lv = cell.lv;
    return pane.cardChunk(lv, cell.i).then((c) => {
      const k = pane.run.k, at = (cell.i % pane.run.card_chunk);
      const ex = [];
      for (let j = 0; j < k; j++) {
        const e = c.ex[at * k + j];
        if (e >= 0) ex.push({ e: e, slot: c.slot[at * k + j], box: Array.from(c.box.slice((at * k + j) * 4, (at * k + j) * 4 + 4)) });
      }
      const t = lv.loaded.t, topv = Array.from(c.topv.slice(at * t, at * t + t));
      const chunks = [...new Set(ex.map((x) => Math.floor(x.slot / pane.run.exemplars.per)))];
      const heats = pane.run.axis ? pane.run.axis.map((n) => pane.heatValues(lv, n) || Promise.resolve(null)) : [];
      return Promise.all([Promise.all(chunks.map((n) => pane.sources(n * pane.run.exemplars.per))), Promise.all(heats)])
        .then(([names, axis]) => ({ ex: ex, topv: topv, names: new Map(chunks.map((n, j) => [n, names[j]])), axis: axis,
          fid: c.fid ? c.fid[at] : NaN, margin: c.margin ? c.margin[at] : NaN, rank: c.rank ? c.rank[at] : 0 }));
    });
  }

  function iconQuality(lv, f) { // fidelity and plausibility of the cell's icon (one line)
    const parts = [];
    if (!isNaN(f.fid)) parts.push("icon fidelity " + f.fid.toFixed(3));
    if (f.rank > 0) {
      const p = lv.plausibility, n = p && p.icons ? (p.icons.ranked_among || p.icons.cells) : lv.cells;
      parts.push("plausibility margin " + f.margin.toFixed(3) + ", own exemplars ranked " + f.rank + " of " + n +
        (p ? " (judge " + p.judge + ")" : ""));
    }
    return parts.length ? parts.join("; ") : "icon not judged";
  }

  function cardSection(pane, cell, facts) {
    const s = el("section", "cell");
    if (panes.length > 1) s.appendChild(el("h3", null, pane.run.title));
    if (!cell) { s.appendChild(el("p", "hint", "no kept cell here")); return s; }
    const lv = cell.lv, d = lv.loaded;
    s.appendChild(el("h2", null, "Cell (" + cell.ix + ", " + cell.iy + ") of " + lv.size + " \u00d7 " + lv.size));
    s.appendChild(iconBox(pane, lv, cell));
    s.appendChild(el("p", "count", d.count[cell.i] + " activations"));
    for (const f of hooks.card) {
      const line = f(pane, cell);
      if (line) s.appendChild(typeof line === "string" ? el("p", "passing", line) : line);
    }
    const attr = lv.kind === "attribution";
    s.appendChild(el("h4", null, attr ? "Top classes (mean attribution)" : "Top classes (predictions)"));
    const ol = el("ol", "top");
    for (let j = 0; j < d.t; j++) {
      const c = d.top[cell.i * d.t + j];
      if (c < 0) continue;
      const v = facts ? (attr ? +facts.topv[j].toFixed(4) : facts.topv[j]) : "\u2026";
      ol.appendChild(el("li", null, pane.run.classes[c] + " \u2014 " + v));
    }
    s.appendChild(ol);
    if (!facts) { s.appendChild(el("p", "hint", "loading\u2026")); return s; }
    s.appendChild(el("p", "icon-quality", iconQuality(lv, facts)));
    if (pane.run.axis) {
      pane.run.axis.forEach((name, j) => {
        const v = facts.axis[j];
        if (v) s.appendChild(el("p", "axis-value", "mean attribution to " + name + ": " + +v[cell.i].toFixed(5)));
      });
    }
    if (facts.ex.length) {
      s.appendChild(el("h4", null, "Exemplars"));
      const row = el("div", "exemplars");
      for (const x of facts.ex) {
        const names = facts.names.get(Math.floor(x.slot / pane.run.exemplars.per));
        row.appendChild(exemplarButton(pane, x.e, x.slot, x.box, names));
      }
      s.appendChild(row);
    }
    return s;
  }

  let cardToken = 0;
  function showCard(x, y, kind) {
    const token = ++cardToken, card = $("card");
    const cells = panes.map((p) => p.cellAt(x, y));
    panes.forEach((p, i) => p.mark(cells[i], kind));
    card.replaceChildren(...panes.map((p, i) => cardSection(p, cells[i], null)));
    const all = Promise.all(panes.map((p, i) => (cells[i] ? cardFacts(p, cells[i]) : Promise.resolve(null))));
    track(all);
    all.then((facts) => {
      if (token !== cardToken) return; // a newer card took its place
      card.replaceChildren(...panes.map((p, i) => cardSection(p, cells[i], facts[i])));
    });
  }

  function openSource(pane, slot, box, names, e) {
    const ex = pane.run.exemplars, i = slot % ex.per, n = Math.floor(slot / ex.per);
    const w = names ? names.w[i] : ex.thumb_px, h = names ? names.h[i] : ex.thumb_px;
    const sc = SOURCE_PX / Math.max(w, h, 1);
    const frame = $("source-frame"), img = $("source-img");
    frame.style.width = Math.round(w * sc) + "px";
    frame.style.height = Math.round(h * sc) + "px";
    img.style.width = ex.cols * ex.thumb_px * sc + "px";
    img.style.left = -(i % ex.cols) * ex.thumb_px * sc + "px";
    img.style.top = -Math.floor(i / ex.cols) * ex.thumb_px * sc + "px";
    img.src = pane.root + ex.dir + "sources-" + n + ".jpg";
    $("source-name").textContent = names ? names.names[i] : "";
    const m = $("source-mark");
    m.style.left = 100 * box[0] + "%"; m.style.top = 100 * box[1] + "%";
    m.style.width = 100 * (box[2] - box[0]) + "%"; m.style.height = 100 * (box[3] - box[1]) + "%";
    $("source").hidden = false;
    for (const f of hooks.source) f(pane, e);
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

  function ensure() { // what every pane's current view needs: its level, the visible cards
    return Promise.all(panes.map((p) => {
      const lv = p.level();
      return p.levelData(lv).then(() => {
        const chunks = new Set();
        p.visible(lv, (i) => chunks.add(Math.floor(i / p.run.card_chunk)));
        if (chunks.size > 8) return null; // a coarse view of a big level: cards load on demand
        const cards = [...chunks].map((n) => p.cardChunk(lv, n * p.run.card_chunk));
        return Promise.all(cards).then((cs) => {
          const more = [], per = p.run.exemplars ? p.run.exemplars.per : 0, seen = new Set();
          for (const c of cs) for (const s of c.slot) {
            if (s >= 0 && per && !seen.has(Math.floor(s / per))) { seen.add(Math.floor(s / per)); more.push(p.sources(s)); }
          }
          for (const n of p.run.axis || []) { const v = p.heatValues(lv, n); if (v) more.push(v); }
          return Promise.all(more);
        });
      });
    }));
  }

  function refresh() {
    const p = panes[0], lv = p.level();
    if (panes.some((q) => !q.level().loaded)) { // draw once the level's data is here
      ensure().then(refresh, (err) => { $("found").textContent = String(err); });
      return;
    }
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
    const heatable = one !== null && panes.some((q) => q.heatValues(q.level(), one) !== null);
    $("heat").disabled = !heatable;
    $("heatneg").disabled = !heatable;
    const on = heatable && $("heat").checked, neg = $("heatneg").checked;
    const pending = [];
    for (const q of panes) {
      q.heatShown = on ? { name: one, negative: neg } : null;
      const v = on ? q.heatValues(q.level(), one) : null;
      if (v) pending.push(v);
    }
    Promise.all(pending).then(() => {
      for (const q of panes) q.overlay.redraw();
      const top = panes[0].drawn.top;
      $("heatinfo").textContent = on ? "opacity: mean " + (neg ? "negative " : "") + "attribution to " + one +
        " relative to the strongest cell (" + (top === undefined ? "none" : top.toPrecision(3)) + ")" : "";
    });
    if (selected) {
      const s = p.levels.find((l) => l.size === selected.size);
      if (s && s !== lv) selected = null; // a selection belongs to its level
    }
    if (selected) showCard((selected.ix + 0.5) / selected.size, (selected.iy + 0.5) / selected.size, "selected");
    writeHash();
    ensure();
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
    for (const f of hooks.write) f(h);
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
    return Promise.all(hooks.read.map((f) => f(h))).then(ensure).then(refresh);
  }

  // ------------------------------------------------------------------ wiring
  function wire(p) {
    p.map.on("mousemove", (ev) => {
      const [x, y] = p.toXY(ev.latlng);
      if (!selected) showCard(x, y, "hover");
    });
    p.map.on("click", (ev) => {
      const [x, y] = p.toXY(ev.latlng), cell = p.cellAt(x, y);
      selected = cell ? { size: cell.lv.size, ix: cell.ix, iy: cell.iy } : null;
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
        selected = cell ? { size: cell.lv.size, ix: cell.ix, iy: cell.iy } : null;
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
    document.body.dataset.busy = "0";
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
    window.ATLAS_MAP = panes[0].map;
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
    const core = { panes: panes, hooks: hooks, load: load, track: track, typed: typed, el: el,
      view: view, refresh: refresh, writeHash: writeHash, redraw: () => panes.forEach((q) => q.overlay.redraw()),
      exemplarButton: exemplarButton, showCard: showCard, cardFacts: cardFacts, iconBox: iconBox,
      closeSource: closeSource };
    if (window.ATLAS_EXPLORE) window.ATLAS_EXPLORE(core); // the explorer's instruments over the first pane
    if (window.ATLAS_ASK) window.ATLAS_ASK(core); // the questions to the model, when served
    document.body.dataset.maxZoom = panes[0].maxZoom;
    readHash().then(() => { document.body.dataset.ready = "1"; },
      (err) => { $("title").textContent = "The atlas data did not load: " + err; });
  }

  start();
})();
