/* The diff of two atlases: both runs' maps side by side, heat layers over their cells, and the
 * largest changes of A's cells.
 *
 * Map coordinates are the viewer's: a layout point (x, y) in [0, 1]^2, y up, is
 * latLng((y - 1) * T, x * T) with T the tile size. Each run's tiles come from its own viewer
 * (its data/atlas.js, loaded by the page beside data/diff.js); without a viewer the map shows
 * the cells alone. A level's tables are loaded when the level is shown (data/level-<G>.js,
 * handed to ATLAS_PUT). Clicking a change outlines A's cell in A's map and the cells of B its
 * samples went to, with their fractions, and lists the exemplar patches of its samples. Every
 * string from the data is written with textContent; nothing here builds HTML from a string.
 */
(function () {
  "use strict";
  const C = window.ATLAS_COMMON;
  const D = window.ATLAS_DIFF;
  const RUNS = window.ATLAS_RUNS || [];
  const SIDES = ["a", "b"];
  const $ = (id) => document.getElementById(id);
  const HEATS = {
    lost: { text: "neighbours lost (1 - preservation)", of: (t, i) => 1 - t.preservation[i] },
    flip_rate: { text: "flip rate (top-1 changed)", of: (t, i) => t.flip_rate[i] },
    spread: { text: "spread (1 - sum of squared fractions)", of: (t, i) => t.spread[i] },
    none: null,
  };
  // what each map drew last (read by the tests): heat cells, outlined cells [ix, iy, fraction]
  const view = { level: null, change: null, a: { heat: 0, marks: [] }, b: { heat: 0, marks: [] } };
  window.DIFF_VIEW = view;
  const panes = {};
  const state = { level: null, change: -1, heat: "lost", oneside: false };

  // ------------------------------------------------------------------ data files
  const load = C.loader(C.busy());
  const typed = C.typed;
  const el = C.el;
  const num = C.num;

  const pct = (v) => (v === null || v === undefined || Number.isNaN(v) ? "n/a" : Math.round(100 * v) + "%");

  function table(t) { // a side's cell table as typed arrays, indexed by flat cell
    const c = {
      ix: typed(t.ix, Uint16Array), iy: typed(t.iy, Uint16Array), count: typed(t.count, Uint32Array),
      both: typed(t.both, Uint32Array), preservation: typed(t.preservation, Float32Array),
      flip_rate: typed(t.flip_rate, Float32Array), spread: typed(t.spread, Float32Array),
      flow_cell: typed(t.flow_cell, Int32Array), flow_frac: typed(t.flow_frac, Float32Array), top: t.top,
    };
    return c;
  }

  function levelData(lv) {
    if (lv.data) return Promise.resolve(lv.data);
    return load(lv.file).then((p) => {
      if (!lv.data) {
        lv.data = { a: table(p.a), b: table(p.b), appeared: typed(p.appeared, Int32Array),
          emptied: typed(p.emptied, Int32Array), changes: p.changes };
      }
      return lv.data;
    });
  }

  // ------------------------------------------------------------------ the maps
  const Overlay = C.overlay("diff-overlay");

  function runOf(side) { // the run's viewer record (its data/atlas.js), if the page loaded one
    const rel = D.runs[side].viewer;
    if (!rel) return null;
    const src = new URL(rel, location.href).href;
    return RUNS.find((r) => r.src === src) || null;
  }

  class Pane {
    constructor(side) {
      this.side = side;
      const entry = runOf(side);
      this.run = entry ? entry.run : null;
      this.T = this.run ? this.run.tile_px : 256;
      this.levels = this.run ? this.run.levels.slice().sort((x, y) => x.size - y.size) : [];
      const r = D.runs[side];
      $("title-" + side).textContent = (side === "a" ? "A: " : "B: ") + r.name + " (" + r.title + ")" +
        (this.run ? "" : ", no viewer: cells only");
      this.div = $("map-" + side);
      this.div.setAttribute("aria-label", "the atlas of run " + side.toUpperCase() + ": arrow keys pan, + and - zoom");
      const T = this.T, bounds = L.latLngBounds([[-T, 0], [0, T]]);
      const finest = this.levels[this.levels.length - 1];
      this.map = L.map(this.div, {
        crs: L.CRS.Simple, minZoom: 0, maxZoom: finest ? finest.zmax + 1 : 6, zoomSnap: 1,
        attributionControl: false, fadeAnimation: false, maxBounds: bounds.pad(0.25), maxBoundsViscosity: 0.5,
      });
      const bg = this.run ? this.run.background : 240;
      this.div.style.background = "rgb(" + [bg, bg, bg] + ")";
      if (this.run) {
        const root = new URL("../", entry.src).href; // data/atlas.js lives in viewer/data/
        C.tiles(this.map, root, this.run, this.levels, bounds, finest.zmax + 1);
      }
      this.overlay = new Overlay();
      this.overlay.draw = (ctx, toPx) => this.draw(ctx, toPx);
      this.overlay.addTo(this.map);
      this.map.fitBounds(bounds, { animate: false });
    }

    toLatLng(x, y) { return L.latLng((y - 1) * this.T, x * this.T); }

    cellBounds(g, ix, iy) {
      return L.latLngBounds(this.toLatLng(ix / g, iy / g), this.toLatLng((ix + 1) / g, (iy + 1) / g));
    }

    levelZoom(g) { // the zoom at which this run's viewer first shows level g (cells ~64 px without)
      const lv = this.levels.find((l) => l.size === g);
      return lv ? lv.zmin : Math.max(0, Math.round(Math.log2(g * 64 / this.T)));
    }

    showLevel(g) {
      const lv = this.levels.find((l) => l.size === g);
      if (lv && (this.map.getZoom() < lv.zmin || this.map.getZoom() > lv.zmax)) this.map.setZoom(lv.zmin, { animate: false });
    }

    draw(ctx, toPx) {
      const lv = state.level, d = lv && lv.data, drawn = view[this.side];
      drawn.heat = 0; drawn.marks = [];
      if (!d) return;
      const t = d[this.side], g = lv.size;
      const rect = (ix, iy) => {
        const b = this.cellBounds(g, ix, iy), p = toPx(b.getNorthWest()), q = toPx(b.getSouthEast());
        return [p.x, p.y, q.x - p.x, q.y - p.y];
      };
      if (!this.run) { // no tiles: the kept cells show where the layout is
        ctx.fillStyle = "#c8c8c8";
        for (let i = 0; i < t.ix.length; i++) ctx.fillRect(...rect(t.ix[i], t.iy[i]));
      }
      const heat = HEATS[state.heat];
      if (heat) {
        for (let i = 0; i < t.ix.length; i++) {
          const v = heat.of(t, i);
          if (!Number.isFinite(v)) continue;
          ctx.fillStyle = "rgba(200, 40, 20, " + (0.05 + 0.6 * Math.min(1, Math.max(0, v))).toFixed(3) + ")";
          ctx.fillRect(...rect(t.ix[i], t.iy[i]));
          drawn.heat += 1;
        }
      }
      if (state.oneside) {
        const cells = this.side === "a" ? d.emptied : d.appeared;
        ctx.setLineDash([3, 3]); ctx.lineWidth = 2; ctx.strokeStyle = "#000";
        for (let j = 0; j + 1 < cells.length; j += 2) ctx.strokeRect(...rect(cells[j], cells[j + 1]));
        ctx.setLineDash([]);
      }
      const ch = state.change >= 0 ? d.changes[state.change] : null;
      if (!ch) return;
      const marks = this.side === "a" ? [[ch.cell[0], ch.cell[1], 1]] : ch.to;
      ctx.font = "bold 12px system-ui, sans-serif";
      for (const [ix, iy, f] of marks) {
        const r = rect(ix, iy);
        ctx.lineWidth = 6; ctx.strokeStyle = "#000"; ctx.strokeRect(...r);
        ctx.lineWidth = 2; ctx.strokeStyle = "#fff"; ctx.strokeRect(...r);
        if (this.side === "b") {
          const label = pct(f), w = ctx.measureText(label).width + 6;
          ctx.fillStyle = "#000"; ctx.fillRect(r[0], r[1], w, 16);
          ctx.fillStyle = "#fff"; ctx.fillText(label, r[0] + 3, r[1] + 12);
        }
        drawn.marks.push([ix, iy, f]);
      }
    }

    fit(cells, g) { // show these cells of level g
      if (!cells.length) return;
      let b = null;
      for (const [ix, iy] of cells) { const c = this.cellBounds(g, ix, iy); b = b ? b.extend(c) : c; }
      const z = Math.max(this.levelZoom(g), this.map.getZoom()); // never closer than asked
      this.map.fitBounds(b.pad(0.5), { animate: false, maxZoom: z });
    }
  }

  // ------------------------------------------------------------------ the side panel
  function changeText(ch) {
    const to = ch.to.length ? ch.to[0] : null;
    return "(" + ch.cell[0] + ", " + ch.cell[1] + "): " + ch.samples + " samples, " +
      pct(ch.preservation) + " of neighbours kept, " + pct(ch.flip_rate) + " flipped" +
      (to ? "; " + pct(to[2]) + " to (" + to[0] + ", " + to[1] + ")" : "");
  }

  function listChanges() {
    const lv = state.level, d = lv.data, ol = $("changes");
    ol.replaceChildren();
    $("changes-note").textContent = "A's cells of the " + lv.size + " \u00d7 " + lv.size + " grid, ranked by " +
      (D.score === "auto" ? "neighbours lost (in samples), else flips" : D.score) + ". Click one.";
    d.changes.forEach((ch, j) => {
      const li = el("li"), b = el("button", "change", changeText(ch));
      b.type = "button";
      b.setAttribute("aria-pressed", String(j === state.change));
      b.addEventListener("click", () => select(j, true));
      li.appendChild(b);
      ol.appendChild(li);
    });
  }

  function patch(p) { // an exemplar patch from the sheets of the run it is an exemplar in
    const s = D.runs[p.side].sheets, px = s.patch_px, i = p.e % s.per;
    const sheet = new URL(s.dir + "patches-" + Math.floor(p.e / s.per) + ".jpg", location.href).href;
    const div = el("div", "patch");
    div.style.width = div.style.height = px + "px";
    div.style.backgroundImage = 'url("' + sheet + '")';
    div.style.backgroundPosition = -(i % s.cols) * px + "px " + -Math.floor(i / s.cols) * px + "px";
    div.setAttribute("role", "img");
    const where = p.to ? " went to B's cell (" + p.to[0] + ", " + p.to[1] + ")" : " is not kept in B";
    div.setAttribute("aria-label", "sample " + p.row + where);
    div.title = "sample " + p.row + where;
    return div;
  }

  function showDetail() {
    const box = $("detail"), lv = state.level, ch = state.change >= 0 ? lv.data.changes[state.change] : null;
    box.replaceChildren();
    if (!ch) return;
    box.appendChild(el("h3", null, "A's cell (" + ch.cell[0] + ", " + ch.cell[1] + ") of " + lv.size + " \u00d7 " + lv.size));
    box.appendChild(el("p", null, ch.count + " samples in A, " + ch.samples + " kept by both runs; change score " + ch.score));
    box.appendChild(el("p", null, "neighbourhood preservation " + num(ch.preservation, 3) + ", flip rate " +
      num(ch.flip_rate, 3) + ", spread " + num(ch.spread, 3)));
    box.appendChild(el("p", null, "Where its samples went in B:"));
    const ol = el("ol", "flows");
    for (const [ix, iy, f] of ch.to) ol.appendChild(el("li", null, "(" + ix + ", " + iy + "): " + pct(f)));
    box.appendChild(ol);
    const shown = ch.patches.filter((p) => D.runs[p.side].sheets);
    box.appendChild(el("p", null, shown.length ? "Exemplar patches among its samples:" :
      "None of its samples is an exemplar of either run."));
    const row = el("div", "patches");
    for (const p of shown) row.appendChild(patch(p));
    box.appendChild(row);
  }

  // ------------------------------------------------------------------ state
  function redraw() { for (const s of SIDES) panes[s].overlay.redraw(); }

  function select(j, fit) {
    state.change = j;
    view.change = j;
    for (const [i, b] of [...document.querySelectorAll("#changes .change")].entries()) b.setAttribute("aria-pressed", String(i === j));
    showDetail();
    const ch = j >= 0 ? state.level.data.changes[j] : null;
    if (ch && fit) {
      panes.a.fit([ch.cell], state.level.size);
      panes.b.fit(ch.to, state.level.size);
    }
    redraw();
    writeHash();
  }

  function legend() {
    const h = HEATS[state.heat], box = $("legend");
    box.replaceChildren();
    if (!h) return;
    box.appendChild(el("span", null, "0"));
    box.appendChild(el("span", "ramp"));
    box.appendChild(el("span", null, "1: " + h.text + ", over each run's own cells"));
  }

  function setLevel(g, change) {
    const lv = D.levels.find((l) => l.size === g) || D.levels[0];
    state.level = lv;
    view.level = lv.size;
    for (const b of document.querySelectorAll("#levels button")) b.setAttribute("aria-pressed", String(+b.dataset.size === lv.size));
    return levelData(lv).then(() => {
      for (const s of SIDES) panes[s].showLevel(lv.size);
      listChanges();
      const n = lv.data.changes.length;
      select(change >= 0 && change < n ? change : -1, change >= 0);
    });
  }

  function writeHash() {
    const h = new URLSearchParams();
    h.set("l", state.level.size);
    if (state.change >= 0) h.set("c", state.change);
    if (state.heat !== "lost") h.set("h", state.heat);
    if (state.oneside) h.set("o", "1");
    try { history.replaceState(null, "", "#" + h.toString()); } catch (err) { /* some file:// setups */ }
  }

  function figures() {
    const f = D.figures;
    const parts = ["neighbourhood preservation at k = " + f.k + ": " + num(f.neighbourhood_preservation, 3) +
      " over " + f.kept_both + " samples both runs kept", "flip rate " + num(f.flip_rate, 3) + " (" + f.flips + " flips)"];
    if (f.labelled_samples) parts.push("accuracy " + num(f.accuracy_a, 3) + " \u2192 " + num(f.accuracy_b, 3));
    return parts.join("; ");
  }

  function start() {
    if (!D || !window.L) {
      $("title").textContent = "The diff's data or Leaflet did not load: open diff.html of an `atlas diff` folder.";
      return;
    }
    document.body.dataset.busy = "0";
    $("title").textContent = "What changed from " + D.runs.a.name + " to " + D.runs.b.name;
    $("figures").textContent = figures();
    for (const s of SIDES) panes[s] = new Pane(s);
    for (const lv of D.levels) {
      const b = el("button", null, lv.size + " \u00d7 " + lv.size);
      b.type = "button";
      b.dataset.size = lv.size;
      b.addEventListener("click", () => setLevel(lv.size, -1));
      $("levels").appendChild(b);
    }
    $("heat").addEventListener("change", () => { state.heat = $("heat").value; legend(); redraw(); writeHash(); });
    $("oneside").addEventListener("change", () => { state.oneside = $("oneside").checked; redraw(); writeHash(); });
    const h = new URLSearchParams(location.hash.slice(1));
    state.heat = Object.prototype.hasOwnProperty.call(HEATS, h.get("h")) ? h.get("h") : "lost";
    $("heat").value = state.heat;
    state.oneside = h.get("o") === "1";
    $("oneside").checked = state.oneside;
    legend();
    const c = h.has("c") ? parseInt(h.get("c"), 10) : -1;
    setLevel(+h.get("l"), Number.isFinite(c) ? c : -1).then(() => { document.body.dataset.ready = "1"; },
      (err) => { $("title").textContent = "The diff's data did not load: " + err; });
  }

  start();
})();
