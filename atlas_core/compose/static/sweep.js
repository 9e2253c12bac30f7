/* A sweep's atlases compared: a grid of maps, pan, zoom and hover linked.
 *
 * Map coordinates are the viewer's: a layout point (x, y) in [0, 1]^2, y up, is
 * latLng((y - 1) * T, x * T) with T the tile size. Each map draws its run's tiles from the run's
 * own viewer (its data/atlas.js, loaded by the page). Moving one map moves the others to the
 * same place and zoom. Hovering a cell of the level shown outlines it, and in every other map
 * the cells its samples went to, shaded by the share of its samples each received: each run's
 * cell of every sample row is in compare/data/level-<G>.js (row -> flat cell iy * G + ix, -1
 * for none), indexed by cell once per level. Every string from the data is written with
 * textContent; nothing here builds HTML from a string.
 */
(function () {
  "use strict";
  const C = window.ATLAS_COMMON;
  const S = window.ATLAS_SWEEP;
  const RUNS = window.ATLAS_RUNS || [];
  const $ = (id) => document.getElementById(id);
  // what the page shows (read by the tests): the level, the hovered cell, each map's marks
  // [ix, iy, samples] (sorted), and helpers to find a layout point on screen and a map's centre
  const view = { level: null, hover: null, marks: [] };
  window.SWEEP_VIEW = view;
  const panes = [];
  const state = { level: null, hover: null };
  let syncing = false;

  // ------------------------------------------------------------------ data files
  const load = C.loader();
  const typed = C.typed;
  const el = C.el;
  const num = C.num;

  function byCell(cells, n) { // rows grouped by cell: order[start[c] .. start[c + 1]) are c's
    const start = new Int32Array(n + 1);
    for (let r = 0; r < cells.length; r++) if (cells[r] >= 0) start[cells[r] + 1] += 1;
    for (let c = 0; c < n; c++) start[c + 1] += start[c];
    const order = new Int32Array(start[n]), pos = start.slice(0, n);
    for (let r = 0; r < cells.length; r++) if (cells[r] >= 0) order[pos[cells[r]]++] = r;
    return { start, order };
  }

  function levelData(lv) {
    if (lv.data) return Promise.resolve(lv.data);
    return load(lv.file).then((p) => {
      if (!lv.data) {
        const n = lv.size * lv.size;
        const cells = p.cells.map((b) => typed(b, Int32Array));
        lv.data = { cells, index: cells.map((c) => byCell(c, n)) };
      }
      return lv.data;
    });
  }

  // ------------------------------------------------------------------ the maps
  const Overlay = C.overlay("sweep-overlay");

  function figureList(r) {
    const f = r.figures, dl = el("dl", "figures");
    const first = r.name === S.first;
    const rows = [
      ["trustworthiness", num(f.trustworthiness, 3)],
      ["icon fidelity", num(f.fidelity, 3)],
      ["plausibility margin", num(f.plausibility, 3)],
      ["neighbourhood preservation vs the first run", first ? "reference" : num(f.neighbourhood_preservation, 3)],
      ["flip rate vs the first run", first ? "reference" : num(f.flip_rate, 3)],
    ];
    for (const [k, v] of rows) { dl.appendChild(el("dt", null, k)); dl.appendChild(el("dd", null, v)); }
    return dl;
  }

  function link(href, text) {
    const a = el("a", null, text);
    a.href = href;
    return a;
  }

  class Pane {
    constructor(i, r) {
      this.i = i;
      this.r = r;
      const src = r.viewer ? new URL(r.viewer, location.href).href : null;
      const entry = src ? RUNS.find((x) => x.src === src) : null;
      this.run = entry ? entry.run : null;
      this.T = this.run ? this.run.tile_px : 256;
      this.levels = this.run ? this.run.levels.slice().sort((x, y) => x.size - y.size) : [];
      const box = el("section", "pane");
      const h2 = el("h2", null, r.label + " (" + r.title + ")" + (this.run ? "" : ", no viewer: cells only"));
      h2.title = r.name;
      box.appendChild(h2);
      const body = el("div", "body");
      this.div = el("div", "map");
      this.div.id = "map-" + i;
      this.div.setAttribute("aria-label", "the atlas of " + r.label + ": arrow keys pan, + and - zoom");
      body.appendChild(this.div);
      const side = el("div", "side");
      side.appendChild(figureList(r));
      const links = el("p", "links");
      if (r.page) links.appendChild(link(r.page, "viewer"));
      if (r.diff) { links.appendChild(document.createTextNode(" \u00b7 ")); links.appendChild(link(r.diff, "diff vs the first run")); }
      side.appendChild(links);
      body.appendChild(side);
      box.appendChild(body);
      $("grid").appendChild(box);
      const T = this.T, bounds = L.latLngBounds([[-T, 0], [0, T]]);
      const finest = this.levels[this.levels.length - 1];
      this.map = L.map(this.div, {
        crs: L.CRS.Simple, minZoom: 0, maxZoom: finest ? finest.zmax + 1 : 6, zoomSnap: 1,
        attributionControl: false, fadeAnimation: false, zoomAnimation: false, inertia: false,
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
      this.map.on("move zoom", () => follow(this));
      this.map.on("mousemove", (e) => hoverAt(this, e.latlng));
      this.div.addEventListener("mouseleave", () => setHover(-1, -1));
    }

    toLatLng(x, y) { return L.latLng((y - 1) * this.T, x * this.T); }

    toXY(ll) { return [ll.lng / this.T, ll.lat / this.T + 1]; }

    cellRect(g, c, toPx) {
      const ix = c % g, iy = Math.floor(c / g);
      const p = toPx(this.toLatLng(ix / g, (iy + 1) / g)), q = toPx(this.toLatLng((ix + 1) / g, iy / g));
      return [p.x, p.y, q.x - p.x, q.y - p.y];
    }

    showLevel(g) {
      const lv = this.levels.find((l) => l.size === g);
      if (lv && (this.map.getZoom() < lv.zmin || this.map.getZoom() > lv.zmax)) this.map.setZoom(lv.zmin, { animate: false });
    }

    draw(ctx, toPx) {
      const h = state.hover, lv = state.level;
      if (!h || !lv) return;
      const g = lv.size;
      if (h.pane === this.i) {
        const r = this.cellRect(g, h.cell, toPx);
        ctx.lineWidth = 6; ctx.strokeStyle = "#000"; ctx.strokeRect(...r);
        ctx.lineWidth = 2; ctx.strokeStyle = "#fff"; ctx.strokeRect(...r);
        return;
      }
      const marks = h.to[this.i] || [];
      ctx.font = "bold 12px system-ui, sans-serif";
      for (const [c, n] of marks) {
        const r = this.cellRect(g, c, toPx), f = n / Math.max(1, h.samples);
        ctx.fillStyle = "rgba(255, 190, 0, " + (0.08 + 0.3 * f).toFixed(3) + ")";
        ctx.fillRect(...r);
        ctx.lineWidth = 6; ctx.strokeStyle = "#000"; ctx.strokeRect(...r);
        ctx.lineWidth = 2; ctx.strokeStyle = "#ffbe00"; ctx.strokeRect(...r);
        const label = Math.round(100 * f) + "%", w = ctx.measureText(label).width + 6;
        ctx.fillStyle = "#000"; ctx.fillRect(r[0], r[1], w, 16);
        ctx.fillStyle = "#fff"; ctx.fillText(label, r[0] + 3, r[1] + 12);
      }
    }
  }

  function follow(src) { // the other maps go where this one is
    if (syncing) return;
    syncing = true;
    try {
      const [x, y] = src.toXY(src.map.getCenter()), z = src.map.getZoom();
      for (const p of panes) if (p !== src) p.map.setView(p.toLatLng(x, y), z, { animate: false });
    } finally {
      syncing = false;
    }
  }

  // ------------------------------------------------------------------ hover
  function hoverAt(p, ll) {
    const lv = state.level;
    if (!lv || !lv.data) return;
    const g = lv.size, [x, y] = p.toXY(ll);
    if (!(x >= 0 && x <= 1 && y >= 0 && y <= 1)) { setHover(-1, -1); return; }
    const ix = Math.min(g - 1, Math.floor(x * g)), iy = Math.min(g - 1, Math.floor(y * g));
    setHover(p.i, iy * g + ix);
  }

  function setHover(i, c) {
    const h = state.hover;
    if (h ? h.pane === i && h.cell === c : i < 0) return;
    const lv = state.level, g = lv ? lv.size : 1;
    if (i < 0 || !lv || !lv.data) {
      state.hover = null; view.hover = null; view.marks = panes.map(() => []);
      $("hover").textContent = "";
    } else {
      const d = lv.data, ix = d.index[i], rows = ix.order.subarray(ix.start[c], ix.start[c + 1]);
      const to = panes.map((p) => {
        if (p.i === i) return [];
        const counts = new Map(), cells = d.cells[p.i];
        for (const r of rows) { const t = cells[r]; if (t >= 0) counts.set(t, (counts.get(t) || 0) + 1); }
        return [...counts.entries()].sort((a, b) => a[0] - b[0]);
      });
      state.hover = { pane: i, cell: c, samples: rows.length, to };
      view.hover = { run: S.runs[i].name, pane: i, cell: [c % g, Math.floor(c / g)], samples: rows.length };
      view.marks = to.map((m) => m.map(([t, n]) => [t % g, Math.floor(t / g), n]));
      $("hover").textContent = rows.length + " samples in cell (" + (c % g) + ", " + Math.floor(c / g) + ") of " +
        S.runs[i].label + ": where they went is outlined in the other maps";
    }
    for (const p of panes) p.overlay.redraw();
  }

  // ------------------------------------------------------------------ levels
  function setLevel(g) {
    const lv = S.levels.find((l) => l.size === g) || S.levels[0];
    if (!lv) return Promise.resolve();
    state.level = lv;
    view.level = lv.size;
    setHover(-1, -1);
    for (const b of document.querySelectorAll("#levels button")) b.setAttribute("aria-pressed", String(+b.dataset.size === lv.size));
    return levelData(lv).then(() => { panes[0].showLevel(lv.size); follow(panes[0]); });
  }

  view.point = function (i, x, y) { // a layout point of map i, in the page's client pixels
    const p = panes[i], q = p.map.latLngToContainerPoint(p.toLatLng(x, y)), b = p.div.getBoundingClientRect();
    return { x: b.left + q.x, y: b.top + q.y };
  };
  view.center = function (i) { const p = panes[i]; return p.toXY(p.map.getCenter()).concat([p.map.getZoom()]); };

  function start() {
    if (!S || !window.L) {
      $("title").textContent = "The comparison's data or Leaflet did not load: open compare.html of a sweep's folder.";
      return;
    }
    $("title").textContent = S.runs.length + " atlases of the sweep, over the same images";
    $("note").textContent = "Pan and zoom move every map. Hover a cell: the cells its samples went to are outlined " +
      "in the other maps, shaded by their share. Figures against the sweep's first run, " + S.first_label + ".";
    S.runs.forEach((r, i) => panes.push(new Pane(i, r)));
    view.marks = panes.map(() => []);
    for (const lv of S.levels) {
      const b = el("button", null, lv.size + " \u00d7 " + lv.size);
      b.type = "button";
      b.dataset.size = lv.size;
      b.addEventListener("click", () => setLevel(lv.size));
      $("levels").appendChild(b);
    }
    const h = new URLSearchParams(location.hash.slice(1));
    setLevel(+h.get("l")).then(() => { document.body.dataset.ready = "1"; },
      (err) => { $("title").textContent = "The comparison's data did not load: " + err; });
  }

  start();
})();
