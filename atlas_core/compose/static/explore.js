/* The explorer: every sample as a point on the atlas, filters, lasso and box selection, export,
 * and where labels exist the error rate per cell and the most frequent confusions.
 *
 * ONE state object (`state`) holds what the user chose: the points layer (on, colour field,
 * opacity, over or under the icons), the filters, the selection polygon and the error map. Every
 * view reads it: the points, the cells' emphasis and error heat on the map's overlay, the counts,
 * histograms, confusions, the card and the URL hash (which holds all of it). What is derived
 * from it (which points pass the filters, which are selected, per-cell counts) is recomputed by
 * `derive()` whenever it changes, never kept elsewhere.
 *
 * Columns (viewer/data/points/, see atlas_core/compose/points.py) are loaded when the points
 * are shown or a filter, selection or error map needs them. Points are drawn into one canvas per
 * map as pixels of an ImageData (docs/explorer.md says why: WebGL libraries in headless
 * chromium's software renderer were tens of times slower). A point's cell at a level is
 * floor(fround(x * G)), the float32 rule of atlas_core.grid.cell_index. Strings (class, label
 * and source names, URIs) are written with textContent only.
 */
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const PAGE = 24; // patches per page of the selection panel
  const PALETTE = [ // 20 categorical colours, then they repeat
    [31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189], [140, 86, 75],
    [227, 119, 194], [127, 127, 127], [188, 189, 34], [23, 190, 207], [174, 199, 232], [255, 187, 120],
    [152, 223, 138], [255, 152, 150], [197, 176, 213], [196, 156, 148], [247, 182, 210], [199, 199, 199],
    [219, 219, 141], [158, 218, 229]];
  const RAMP = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]]; // low to high
  const FIELDS = { pred: "predicted class", label: "label", correct: "correct or wrong", conf: "confidence", source: "source" };

  window.ATLAS_EXPLORE = function (core) {
    const pane = core.panes[0], run = pane.run, el = core.el;
    if (!run.points || !run.points.n) return;
    const base = pane.data + "points/";
    const state = { // everything the user chose; the URL hash holds all of it
      points: false, colour: "pred", opacity: 0.85, under: false,
      filters: { pred: "", label: "", correct: "", conf: null, source: "" },
      polygon: null, errors: false,
    };
    let head = null, cols = null, colsPromise = null;
    let pass = null, selected = null, nPass = 0, nSel = 0, perLevel = new Map(), patchPage = 0;
    const names = { classes: new Map(), labels: new Map(), sources: [] };
    const ids = { classes: new Map(), labels: new Map(), sources: new Map() };
    // what the views drew last and how long the work took (read by the tests and the benchmark)
    const out = { drawn: 0, passing: 0, selected: 0, errors: [], confusions: [], loaded: false, ms: {} };
    core.view.explore = out;
    document.getElementById("explore").hidden = false;

    // ---------------------------------------------------------------- data
    function header() {
      if (head) return Promise.resolve(head);
      return core.load(base + "points.js").then((h) => {
        if (head) return head;
        head = h;
        for (const [c, n] of h.classes) { names.classes.set(c, n); ids.classes.set(n, c); }
        for (const [c, n] of h.labels || []) { names.labels.set(c, n); ids.labels.set(n, c); }
        names.sources = h.sources;
        h.sources.forEach((n, i) => ids.sources.set(n, i));
        fill($("pclasses"), h.classes.map((x) => x[1]));
        fill($("plabels"), (h.labels || []).map((x) => x[1]));
        fill($("psources"), h.sources);
        for (const id of ["f-label", "errors", "f-correct"]) $(id).disabled = !h.labels;
        if (!h.labels) $("errors-note").textContent = "this data has no labels: no error map";
        return h;
      });
    }

    function fill(list, values) {
      list.replaceChildren(...[...new Set(values)].sort().map((v) => { const o = el("option"); o.value = v; return o; }));
    }

    function columns() { // every chunk of points, decoded to typed arrays
      if (cols) return Promise.resolve(cols);
      if (colsPromise) return colsPromise;
      const t0 = performance.now();
      colsPromise = header().then((h) => {
        const files = [];
        for (let i = 0; i < h.files; i++) files.push(core.load(base + "points-" + i + ".js"));
        return Promise.all(files).then((parts) => {
          const T = { f4: Float32Array, u4: Uint32Array, i2: Int16Array, u2: Uint16Array, f2: Uint16Array };
          const c = { n: h.n };
          for (const [f, dt] of Object.entries(h.fields)) {
            const whole = new T[dt](h.n);
            let at = 0;
            for (const p of parts) { const a = core.typed(p[f], T[dt]); whole.set(a, at); at += a.length; }
            c[f] = whole;
          }
          c.conf = halves(c.conf);
          cols = c;
          out.ms.load = performance.now() - t0;
          out.loaded = true;
          return c;
        });
      });
      core.track(colsPromise);
      return colsPromise;
    }

    function halves(u16) { // float16 bits to numbers (exact)
      const out = new Float32Array(u16.length);
      for (let i = 0; i < u16.length; i++) out[i] = half(u16[i]);
      return out;
    }

    function half(h) {
      const s = h & 0x8000 ? -1 : 1, e = (h >> 10) & 0x1f, f = h & 0x3ff;
      if (e === 0) return s * Math.pow(2, -14) * (f / 1024);
      if (e === 31) return f ? NaN : s * Infinity;
      return s * Math.pow(2, e - 15) * (1 + f / 1024);
    }

    // ---------------------------------------------------------------- what the state implies
    function needed() { // whether any view needs the columns
      const f = state.filters;
      return state.points || state.polygon || state.errors || f.pred || f.label || f.correct || f.conf || f.source;
    }

    function filterIds() { // the filters as ids (-2: a name this run does not have, matches nothing)
      const f = state.filters, get = (m, n) => (n ? (m.has(n) ? m.get(n) : -2) : null);
      return { pred: get(ids.classes, f.pred), label: get(ids.labels, f.label), source: get(ids.sources, f.source),
        correct: f.correct || null, conf: f.conf };
    }

    let passKey = null, selKey = null;
    function derive() { // pass, selected, per-level counts, confusions: from state and columns
      const t0 = performance.now(), fk = JSON.stringify(state.filters), sk = JSON.stringify(state.polygon);
      if (fk !== passKey) { passKey = fk; selKey = null; derivePass(); }
      if (sk !== selKey) { selKey = sk; deriveSelection(); }
      out.ms.derive = performance.now() - t0;
    }

    function derivePass() { // which points pass the filters, and what is counted over them
      const c = cols, n = c.n, f = filterIds(), lab = c.label || null;
      pass = new Uint8Array(n);
      nPass = 0;
      for (let i = 0; i < n; i++) {
        if (f.pred !== null && c.pred[i] !== f.pred) continue;
        if (f.source !== null && c.source[i] !== f.source) continue;
        if (f.label !== null && (!lab || lab[i] !== f.label)) continue;
        if (f.correct) {
          if (!lab || lab[i] < 0) continue;
          if ((c.pred[i] === lab[i]) !== (f.correct === "correct")) continue;
        }
        if (f.conf && !(c.conf[i] >= f.conf[0] && c.conf[i] <= f.conf[1])) continue;
        pass[i] = 1;
        nPass++;
      }
      perLevel = new Map();
      out.passing = nPass;
      out.confusions = confusions();
    }

    function deriveSelection() { // the passing points inside the polygon
      selected = null;
      nSel = 0;
      if (state.polygon) {
        selected = inside(state.polygon, cols.x, cols.y, pass);
        for (let i = 0; i < cols.n; i++) nSel += selected[i];
      }
      out.selected = nSel;
    }

    function inside(poly, x, y, keep) { // even-odd rule over the polygon [[x, y], ...]
      // edges are bucketed by the horizontal bands they span: a point tests only its band's
      // edges, and an edge outside it cannot cross the point's ray (the same result as all)
      const m = poly.length, res = new Uint8Array(x.length), B = Math.max(1, Math.min(256, m));
      let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
      for (const [px, py] of poly) { x0 = Math.min(x0, px); x1 = Math.max(x1, px); y0 = Math.min(y0, py); y1 = Math.max(y1, py); }
      const band = (v) => Math.min(B - 1, Math.max(0, Math.floor(((v - y0) / (y1 - y0 || 1)) * B)));
      const bands = Array.from({ length: B }, () => []);
      for (let p = 0, q = m - 1; p < m; q = p++) {
        const lo = band(Math.min(poly[p][1], poly[q][1])), hi = band(Math.max(poly[p][1], poly[q][1]));
        for (let k = lo; k <= hi; k++) bands[k].push(poly[p][0], poly[p][1], poly[q][0], poly[q][1]);
      }
      for (let i = 0; i < x.length; i++) {
        if (!keep[i]) continue;
        const a = x[i], b = y[i];
        if (a < x0 || a > x1 || b < y0 || b > y1) continue;
        const e = bands[band(b)];
        let odd = false;
        for (let j = 0; j < e.length; j += 4) {
          const xi = e[j], yi = e[j + 1], xj = e[j + 2], yj = e[j + 3];
          if ((yi > b) !== (yj > b) && a < ((xj - xi) * (b - yi)) / (yj - yi) + xi) odd = !odd;
        }
        if (odd) res[i] = 1;
      }
      return res;
    }

    function levelCounts(lv) { // per kept cell: points, passing, labelled and wrong passing
      if (perLevel.has(lv.size)) return perLevel.get(lv.size);
      const d = lv.loaded, g = lv.size, c = cols, m = d.ix.length;
      const r = { total: new Uint32Array(m), pass: new Uint32Array(m), labelled: new Uint32Array(m), wrong: new Uint32Array(m) };
      for (let i = 0; i < c.n; i++) {
        const ix = Math.min(g - 1, Math.max(0, Math.floor(Math.fround(c.x[i] * g))));
        const iy = Math.min(g - 1, Math.max(0, Math.floor(Math.fround(c.y[i] * g))));
        const k = d.index.get(iy * g + ix);
        if (k === undefined) continue;
        r.total[k]++;
        if (!pass[i]) continue;
        r.pass[k]++;
        if (c.label && c.label[i] >= 0) { r.labelled[k]++; if (c.pred[i] !== c.label[i]) r.wrong[k]++; }
      }
      perLevel.set(lv.size, r);
      return r;
    }

    function confusions() { // (label -> prediction, count) among the passing points, most first
      const c = cols;
      if (!c.label) return [];
      const counts = new Map();
      for (let i = 0; i < c.n; i++) {
        if (!pass[i] || c.label[i] < 0 || c.pred[i] < 0 || c.pred[i] === c.label[i]) continue;
        const key = c.label[i] * 65536 + c.pred[i];
        counts.set(key, (counts.get(key) || 0) + 1);
      }
      return [...counts].map(([k, n]) => [Math.floor(k / 65536), k % 65536, n])
        .sort((a, b) => b[2] - a[2] || a[0] - b[0] || a[1] - b[1]).slice(0, 15);
    }

    // ---------------------------------------------------------------- colours
    let cache = { key: null, values: null };
    function colours() { // every point's packed colour under the chosen field (kept until it changes)
      if (cache.key !== state.colour) {
        const f = colourOf(state.colour), v = new Uint32Array(cols.n);
        for (let i = 0; i < cols.n; i++) v[i] = f(i);
        cache = { key: state.colour, values: v };
      }
      return cache.values;
    }

    function colourOf(field) { // point index -> packed ABGR
      const c = cols, pack = (p) => (255 << 24) | (p[2] << 16) | (p[1] << 8) | p[0];
      const cat = PALETTE.map(pack), grey = pack([170, 170, 170]);
      const ramp = [];
      for (let k = 0; k < 64; k++) ramp.push(pack(rampAt(k / 63)));
      if (field === "label") return (i) => (c.label && c.label[i] >= 0 ? cat[c.label[i] % 20] : grey);
      if (field === "source") return (i) => cat[c.source[i] % 20];
      if (field === "conf") return (i) => (c.conf[i] >= 0 ? ramp[Math.round(Math.min(1, c.conf[i]) * 63)] : grey);
      if (field === "correct") {
        const ok = pack([33, 102, 172]), bad = pack([244, 109, 67]);
        return (i) => (c.label && c.label[i] >= 0 ? (c.pred[i] === c.label[i] ? ok : bad) : grey);
      }
      return (i) => (c.pred[i] >= 0 ? cat[c.pred[i] % 20] : grey);
    }

    function rampAt(t) {
      const s = t * (RAMP.length - 1), k = Math.min(RAMP.length - 2, Math.floor(s)), u = s - k;
      return RAMP[k].map((v, j) => Math.round(v + (RAMP[k + 1][j] - v) * u));
    }

    function legend() {
      const box = $("legend"), rows = [];
      const swatch = (rgb, text) => { const r = el("span", "key"); const sw = el("span", "swatch"); sw.style.background = "rgb(" + rgb + ")"; r.append(sw, el("span", null, text)); return r; };
      if (!state.points || !cols) { box.replaceChildren(); return; }
      if (state.colour === "correct") rows.push(swatch([33, 102, 172], "correct"), swatch([244, 109, 67], "wrong"), swatch([170, 170, 170], "no label"));
      else if (state.colour === "conf") rows.push(swatch(RAMP[0], "0"), swatch(RAMP[2], "0.5"), swatch(RAMP[4], "1"));
      else {
        const col = state.colour === "label" ? cols.label : state.colour === "source" ? cols.source : cols.pred;
        const nm = (v) => (state.colour === "label" ? names.labels.get(v) : state.colour === "source" ? names.sources[v] : names.classes.get(v));
        for (const [v, n] of top(col, 8)) rows.push(swatch(PALETTE[v % 20], nm(v) + " (" + n + ")"));
      }
      box.replaceChildren(...rows);
    }

    function top(col, k, within) { // the k most frequent values of col among passing (and selected) points
      const counts = new Map();
      if (!col) return [];
      for (let i = 0; i < col.length; i++) {
        if (!pass[i] || (within && !within[i]) || col[i] < 0) continue;
        counts.set(col[i], (counts.get(col[i]) || 0) + 1);
      }
      return [...counts].sort((a, b) => b[1] - a[1] || a[0] - b[0]).slice(0, k);
    }

    // ---------------------------------------------------------------- the points on the map
    const PointsLayer = L.Layer.extend({
      onAdd(map) {
        this.canvas = L.DomUtil.create("canvas", "atlas-points leaflet-zoom-hide", map.getPane("points"));
        map.on("moveend zoomend resize viewreset", this.redraw, this);
        this.redraw();
      },
      onRemove(map) {
        L.DomUtil.remove(this.canvas);
        map.off("moveend zoomend resize viewreset", this.redraw, this);
        out.drawn = 0;
      },
      redraw() {
        if (!this._map || !cols) return;
        const t0 = performance.now();
        const map = this._map, size = map.getSize(), w = size.x, h = size.y, cv = this.canvas;
        cv.width = w; cv.height = h;
        L.DomUtil.setPosition(cv, map.containerPointToLayerPoint([0, 0]));
        cv.style.opacity = state.opacity;
        const o = map.latLngToContainerPoint(L.latLng(0, 0)), s = pane.T * Math.pow(2, map.getZoom());
        const r = Math.max(2, Math.min(6, Math.round(s / 256))); // point side in pixels
        const ctx = cv.getContext("2d"), img = ctx.createImageData(w, h), px = new Uint32Array(img.data.buffer);
        const cc = colours(), c = cols, X = c.x, Y = c.y, dim = (160 << 24) | (200 << 16) | (200 << 8) | 200;
        const ox = o.x - r / 2, oy = o.y + s - r / 2; // a point's top-left pixel: (ox + x s, oy - y s)
        let drawn = 0;
        const pass1 = (top) => { // the points not selected (dimmed when a selection exists), or the selected ones
          for (let i = 0; i < c.n; i++) {
            if (!pass[i] || (selected !== null && (selected[i] === 1) !== top)) continue;
            const u = Math.floor(ox + X[i] * s), v = Math.floor(oy - Y[i] * s);
            if (u < 0 || v < 0 || u + r > w || v + r > h) continue;
            const col = selected !== null && !top ? dim : cc[i];
            for (let k = v * w + u, dy = 0; dy < r; dy++, k += w) for (let dx = 0; dx < r; dx++) px[k + dx] = col;
            drawn++;
          }
        };
        pass1(false);
        if (selected) pass1(true); // selected points on top
        ctx.putImageData(img, 0, 0);
        out.drawn = drawn;
        out.ms.draw = performance.now() - t0;
        document.body.dataset.pointsDrawn = String(drawn);
      },
    });
    pane.map.createPane("points");
    const layer = new PointsLayer();
    const polyLayer = L.layerGroup().addTo(pane.map);

    // ---------------------------------------------------------------- overlay: emphasis and errors
    core.hooks.overlay.push((p, ctx, lv, rect) => {
      if (p !== pane) return;
      out.errors = [];
      if (!cols || !pass || !lv.loaded) return;
      const f = state.filters, filtered = f.pred || f.label || f.correct || f.conf || f.source;
      if (!filtered && !state.errors) return;
      const r = levelCounts(lv);
      p.visible(lv, (i) => {
        if (filtered) { // the icons of cells with fewer passing samples fade
          ctx.globalAlpha = +(0.85 * (1 - r.pass[i] / Math.max(1, r.total[i]))).toFixed(4);
          ctx.fillStyle = "#fff";
          ctx.fillRect(...rect(i));
        }
        if (state.errors && r.labelled[i]) {
          const rate = r.wrong[i] / r.labelled[i];
          ctx.globalAlpha = 0.1 + 0.45 * rate;
          ctx.fillStyle = "#b2182b";
          ctx.fillRect(...rect(i));
          out.errors.push([lv.loaded.ix[i], lv.loaded.iy[i], rate, r.labelled[i]]);
        }
      });
      ctx.globalAlpha = 1;
    });
    core.hooks.card.push((p, cell) => {
      if (p !== pane || !cols || !pass || !cell) return null;
      const r = levelCounts(cell.lv), i = cell.i;
      let line = r.pass[i] + " of " + r.total[i] + " samples pass the filters";
      if (r.labelled[i]) line += "; error rate " + (r.wrong[i] / r.labelled[i]).toFixed(3) + " over " + r.labelled[i] + " labelled";
      return line;
    });

    // ---------------------------------------------------------------- the hash
    core.hooks.write.push((h) => {
      const f = state.filters;
      if (state.points) h.set("p", "1");
      if (state.colour !== "pred") h.set("pc", state.colour);
      if (state.opacity !== 0.85) h.set("po", String(state.opacity));
      if (state.under) h.set("pu", "1");
      if (f.pred) h.set("fp", f.pred);
      if (f.label) h.set("fl", f.label);
      if (f.correct) h.set("fc", f.correct);
      if (f.conf) h.set("fq", f.conf.join(","));
      if (f.source) h.set("fs", f.source);
      if (state.polygon) h.set("sel", state.polygon.map((v) => v.join(",")).join(" "));
      if (state.errors) h.set("e", "1");
    });
    core.hooks.read.push((h) => {
      const num = (v, d) => (Number.isFinite(+v) && v !== null && v !== "" ? +v : d);
      state.points = h.get("p") === "1";
      state.colour = FIELDS[h.get("pc")] ? h.get("pc") : "pred";
      state.opacity = Math.min(1, Math.max(0.1, num(h.get("po"), 0.85)));
      state.under = h.get("pu") === "1";
      const q = (h.get("fq") || "").split(",").map(Number);
      state.filters = { pred: h.get("fp") || "", label: h.get("fl") || "", source: h.get("fs") || "",
        correct: ["correct", "wrong"].includes(h.get("fc")) ? h.get("fc") : "",
        conf: q.length === 2 && q.every(Number.isFinite) ? q : null };
      state.polygon = parsePolygon(h.get("sel"));
      state.errors = h.get("e") === "1";
      return apply();
    });

    function parsePolygon(text) {
      if (!text) return null;
      const pts = text.trim().split(/\s+/).map((p) => p.split(",").map(Number));
      return pts.length >= 3 && pts.every((p) => p.length === 2 && p.every(Number.isFinite)) ? pts : null;
    }

    // ---------------------------------------------------------------- state -> every view
    function apply() { // the controls show the state; the derived values and every view follow
      const f = state.filters;
      $("pts").checked = state.points;
      $("pcolour").value = state.colour;
      $("popacity").value = String(state.opacity);
      $("punder").checked = state.under;
      $("f-pred").value = f.pred; $("f-label").value = f.label; $("f-source").value = f.source;
      $("f-correct").value = f.correct;
      $("f-lo").value = f.conf ? String(f.conf[0]) : "0";
      $("f-hi").value = f.conf ? String(f.conf[1]) : "1";
      $("errors").checked = state.errors;
      drawPolygon();
      const ready = header().then(() => (needed() ? columns() : null)).then(() => {
        if (cols) derive();
        render();
      });
      core.track(ready);
      return ready;
    }

    function setState(patch) {
      Object.assign(state, patch);
      patchPage = 0;
      return apply().then(() => core.writeHash());
    }

    function setFilter(patch) { return setState({ filters: Object.assign({}, state.filters, patch) }); }

    function render() {
      pane.map.getPane("points").style.zIndex = state.under ? 150 : 450;
      pane.div.classList.toggle("points-under", state.points && state.under);
      if (state.points && cols && !pane.map.hasLayer(layer)) layer.addTo(pane.map);
      else if ((!state.points || !cols) && pane.map.hasLayer(layer)) pane.map.removeLayer(layer);
      else if (state.points && cols) layer.redraw();
      core.redraw();
      legend();
      counts();
      histograms();
      patches();
      confusionList();
      for (const f of changed) f();
      document.body.dataset.explore = cols ? "1" : "0";
    }

    function counts() {
      if (!cols) { $("pcount").textContent = head ? head.n + " samples (loaded when shown or filtered)" : ""; $("sel-count").textContent = ""; return; }
      $("pcount").textContent = nPass + " of " + cols.n + " samples pass the filters";
      $("pcount").dataset.n = String(nPass);
      $("sel-count").textContent = state.polygon ? nSel + " selected" : "no selection: draw one with lasso or box";
      $("sel-count").dataset.n = String(nSel);
    }

    function histograms() {
      const box = $("hists");
      if (!cols || !selected) { box.replaceChildren(); return; }
      const parts = [["predicted class", cols.pred, names.classes], ["label", cols.label, names.labels]];
      const nodes = [];
      for (const [title, col, nm] of parts) {
        if (!col) continue;
        const rows = top(col, 10, selected);
        nodes.push(el("h3", null, title + " of the selection"));
        const list = el("ol", "hist");
        for (const [v, n] of rows) {
          const li = el("li");
          const bar = el("span", "bar");
          bar.style.width = Math.round(120 * n / Math.max(1, rows[0][1])) + "px";
          li.append(bar, el("span", null, (nm.get(v) || "class " + v) + " \u2014 " + n));
          list.appendChild(li);
        }
        nodes.push(list);
      }
      box.replaceChildren(...nodes);
    }

    function selectedRows() {
      const rows = [];
      const within = selected || pass;
      for (let i = 0; i < cols.n; i++) if (within[i] && pass[i]) rows.push(i);
      return rows;
    }

    function patches() { // a page of the selection's samples that have exemplar patches
      const box = $("sel-patches");
      if (!cols || !selected || !head.patches || !run.exemplars) { box.replaceChildren(); return; }
      patchTable().then((p) => {
        const have = [];
        for (const i of selectedRows()) {
          const j = bsearch(p.rowsT, cols.row[i]);
          if (j >= 0) have.push(j);
        }
        const pages = Math.max(1, Math.ceil(have.length / PAGE));
        patchPage = Math.min(patchPage, pages - 1);
        const shown = have.slice(patchPage * PAGE, (patchPage + 1) * PAGE);
        const per = run.exemplars.per, chunks = [...new Set(shown.map((j) => Math.floor(p.slotT[j] / per)))];
        return Promise.all(chunks.map((n) => pane.sources(n * per))).then((nm) => {
          const byChunk = new Map(chunks.map((n, k) => [n, nm[k]]));
          const grid = el("div", "exemplars");
          for (const j of shown) {
            const slot = p.slotT[j], box4 = Array.from(p.boxT.slice(4 * j, 4 * j + 4));
            grid.appendChild(core.exemplarButton(pane, p.eT[j], slot, box4, byChunk.get(Math.floor(slot / per))));
          }
          const nav = el("div", "pager");
          const prev = el("button", null, "previous"), next = el("button", null, "next");
          prev.type = next.type = "button";
          prev.disabled = patchPage === 0; next.disabled = patchPage >= pages - 1;
          prev.addEventListener("click", () => { patchPage--; patches(); });
          next.addEventListener("click", () => { patchPage++; patches(); });
          nav.append(prev, el("span", null, " page " + (patchPage + 1) + " of " + pages + " "), next);
          box.replaceChildren(el("h3", null, have.length + " of " + nSel + " selected samples have a patch (the exemplars); the CSV lists them all"), grid, nav);
        });
      });
    }

    function patchTable() { // the rows that have an exemplar patch, decoded once
      return core.load(base + "patches.js").then((p) => {
        if (!p.rowsT) { p.rowsT = core.typed(p.row, Uint32Array); p.eT = core.typed(p.e, Int32Array); p.slotT = core.typed(p.slot, Int32Array); p.boxT = core.typed(p.box, Float32Array); }
        return p;
      });
    }

    function bsearch(a, v) {
      let lo = 0, hi = a.length - 1;
      while (lo <= hi) { const m = (lo + hi) >> 1; if (a[m] === v) return m; if (a[m] < v) lo = m + 1; else hi = m - 1; }
      return -1;
    }

    function confusionList() {
      const box = $("confusions");
      if (!cols || !cols.label) { box.replaceChildren(); return; }
      const items = out.confusions.map(([l, p, n]) => {
        const b = el("button", "confusion", (names.labels.get(l) || "label " + l) + " \u2192 " + (names.classes.get(p) || "class " + p) + ": " + n);
        b.type = "button";
        b.addEventListener("click", () => setFilter({ label: names.labels.get(l) || "", pred: names.classes.get(p) || "", correct: "" }));
        const li = el("li"); li.appendChild(b); return li;
      });
      $("confusions-title").textContent = items.length ? "Most frequent confusions (label \u2192 prediction)" : "";
      box.replaceChildren(...items);
    }

    // ---------------------------------------------------------------- lasso and box
    let mode = null, drawing = null;
    function setMode(m) {
      mode = m;
      $("sel-lasso").setAttribute("aria-pressed", String(m === "lasso"));
      $("sel-box").setAttribute("aria-pressed", String(m === "box"));
      if (m) pane.map.dragging.disable(); else pane.map.dragging.enable();
      pane.div.classList.toggle("selecting", !!m);
    }
    const xyOf = (ev) => pane.toXY(ev.latlng);
    pane.map.on("mousedown", (ev) => {
      if (!mode) return;
      drawing = { start: xyOf(ev), pts: [xyOf(ev)], line: L.polyline([ev.latlng], { className: "lasso", interactive: false }).addTo(polyLayer) };
    });
    pane.map.on("mousemove", (ev) => {
      if (!drawing) return;
      const p = xyOf(ev);
      if (mode === "box") {
        const [x0, y0] = drawing.start;
        drawing.pts = [[x0, y0], [p[0], y0], [p[0], p[1]], [x0, p[1]]];
      } else drawing.pts.push(p);
      drawing.line.setLatLngs(drawing.pts.map(([x, y]) => pane.toLatLng(x, y)));
    });
    let swallow = false; // the click that ends a drawing is not a click on a cell
    pane.div.addEventListener("click", (ev) => { if (swallow) { swallow = false; ev.stopImmediatePropagation(); } }, true);
    pane.map.on("mouseup", () => {
      if (!drawing) return;
      swallow = true;
      setTimeout(() => { swallow = false; }, 0);
      const pts = drawing.pts.map(([x, y]) => [+x.toFixed(5), +y.toFixed(5)]); // the hash's precision
      polyLayer.removeLayer(drawing.line);
      drawing = null;
      setMode(null);
      const t0 = performance.now();
      if (pts.length >= 3) setState({ polygon: pts }).then(() => { out.ms.select = performance.now() - t0; });
    });

    function drawPolygon() {
      polyLayer.clearLayers();
      if (!state.polygon) return;
      const ll = state.polygon.map(([x, y]) => pane.toLatLng(x, y));
      L.polygon(ll, { className: "selection-outer", fill: false, interactive: false }).addTo(polyLayer);
      L.polygon(ll, { className: "selection-inner", fill: false, interactive: false }).addTo(polyLayer);
    }

    // ---------------------------------------------------------------- export
    function exportCsv() {
      if (!cols) return Promise.resolve();
      const rows = selectedRows(), k = head.k, per = head.details.per;
      const files = [...new Set(rows.map((i) => Math.floor(Math.floor(cols.row[i] / k) / per)))];
      const job = Promise.all(files.map((n) => core.load(base + "detail-" + n + ".js"))).then((ds) => {
        const det = new Map(files.map((n, j) => [n, ds[j]]));
        for (const d of ds) if (!d.topT) { d.topT = core.typed(d.top, Int16Array); d.probT = core.typed(d.prob, Uint16Array); d.posT = core.typed(d.pos, Int16Array); }
        const t = head.details.topk, lines = [];
        const headCols = ["row", "uri", "pos_y", "pos_x", "x", "y"];
        for (const g of head.levels) headCols.push("cell" + g + "_ix", "cell" + g + "_iy");
        for (let j = 1; j <= t; j++) headCols.push("pred" + j, "prob" + j);
        if (cols.label) headCols.push("label");
        lines.push(headCols.join(","));
        for (const i of rows) {
          const r = cols.row[i], img = Math.floor(r / k), d = det.get(Math.floor(img / per)), a = img % per, s = r - Math.floor(img / per) * per * k;
          const x = cols.x[i], y = cols.y[i];
          const v = [r, csv(d.uri[a]), d.posT[2 * s], d.posT[2 * s + 1], x, y];
          for (const g of head.levels) v.push(cellOf(x, g), cellOf(y, g));
          for (let j = 0; j < t; j++) {
            const c = d.topT[a * t + j];
            v.push(c >= 0 ? csv(names.classes.get(c) || String(c)) : "", c >= 0 ? half(d.probT[a * t + j]) : "");
          }
          if (cols.label) v.push(cols.label[i] >= 0 ? csv(names.labels.get(cols.label[i]) || String(cols.label[i])) : "");
          lines.push(v.join(","));
        }
        const blob = new Blob([lines.join("\n") + "\n"], { type: "text/csv" });
        const a = document.createElement("a");
        a.href = URL.createObjectURL(blob);
        a.download = "selection.csv";
        document.body.appendChild(a);
        a.click();
        a.remove();
      });
      core.track(job);
      return job;
    }

    // ---------------------------------------------------------------- for the questions (ask.js)
    const changed = []; // called whenever the views follow the state
    core.explore = {
      columns: columns,
      changed: changed,
      selection() { // the selection as the server is asked about it: its polygon, rows, filters
        if (!cols || !state.polygon || !selected) return null;
        const f = state.filters, rows = [];
        for (let i = 0; i < cols.n; i++) if (selected[i]) rows.push(cols.row[i]);
        return { polygon: state.polygon, rows: rows, filtered: !!(f.pred || f.label || f.correct || f.conf || f.source) };
      },
      point(row) { return cols ? bsearch(cols.row, row) : -1; }, // a sample row's point, -1: none
      xy(i) { return [cols.x[i], cols.y[i]]; },
      patchOf(row) { // where a sample's exemplar patch is, or null (it is not an exemplar)
        return header().then((h) => (h.patches ? patchTable() : null)).then((p) => {
          const j = p ? bsearch(p.rowsT, row) : -1;
          if (j < 0) return null;
          const slot = p.slotT[j], per = run.exemplars.per;
          return pane.sources(slot).then((nm) => ({ e: p.eT[j], slot: slot, box: Array.from(p.boxT.slice(4 * j, 4 * j + 4)), names: nm, per: per }));
        });
      },
      rowOfPatch(e) { // the sample row an exemplar patch was cut from, or null
        return header().then((h) => (h.patches ? patchTable() : null)).then((p) => {
          if (!p) return null;
          if (!p.byE) { p.byE = new Map(); for (let j = 0; j < p.eT.length; j++) p.byE.set(p.eT[j], p.rowsT[j]); }
          return p.byE.has(e) ? p.byE.get(e) : null;
        });
      },
      sourceOf(row) { // the file name of a sample's image
        return header().then((h) => {
          const img = Math.floor(row / h.k), per = h.details.per;
          return core.load(base + "detail-" + Math.floor(img / per) + ".js").then((d) => {
            const uri = String(d.uri[img % per] || "");
            const tail = uri.replace(/^tar:\/\//, "").split("::")[0].replace(/\/+$/, "");
            return tail.slice(tail.lastIndexOf("/") + 1) || uri;
          });
        });
      },
    };

    const cellOf = (v, g) => Math.min(g - 1, Math.max(0, Math.floor(Math.fround(v * g))));

    function csv(text) { // a quoted CSV field; a leading = + - @ cannot start a formula
      const s = /^[=+\-@]/.test(text) ? "'" + text : text;
      return '"' + s.replace(/"/g, '""') + '"';
    }

    // ---------------------------------------------------------------- controls
    $("pts").addEventListener("change", () => setState({ points: $("pts").checked }));
    $("pcolour").addEventListener("change", () => setState({ colour: $("pcolour").value }));
    $("popacity").addEventListener("change", () => setState({ opacity: +$("popacity").value }));
    $("punder").addEventListener("change", () => setState({ under: $("punder").checked }));
    $("errors").addEventListener("change", () => setState({ errors: $("errors").checked }));
    for (const [id, key] of [["f-pred", "pred"], ["f-label", "label"], ["f-source", "source"]]) {
      $(id).addEventListener("change", () => setFilter({ [key]: $(id).value.trim() }));
    }
    $("f-correct").addEventListener("change", () => setFilter({ correct: $("f-correct").value }));
    const conf = () => {
      const lo = +$("f-lo").value, hi = +$("f-hi").value;
      setFilter({ conf: Number.isFinite(lo) && Number.isFinite(hi) && (lo > 0 || hi < 1) ? [lo, hi] : null });
    };
    $("f-lo").addEventListener("change", conf);
    $("f-hi").addEventListener("change", conf);
    $("f-reset").addEventListener("click", () => setState({ filters: { pred: "", label: "", correct: "", conf: null, source: "" } }));
    $("sel-lasso").addEventListener("click", () => setMode(mode === "lasso" ? null : "lasso"));
    $("sel-box").addEventListener("click", () => setMode(mode === "box" ? null : "box"));
    $("sel-clear").addEventListener("click", () => setState({ polygon: null }));
    $("export").addEventListener("click", exportCsv);
    document.addEventListener("keydown", (ev) => { if (ev.key === "Escape" && mode) { setMode(null); if (drawing) { polyLayer.removeLayer(drawing.line); drawing = null; } } });
  };
})();
