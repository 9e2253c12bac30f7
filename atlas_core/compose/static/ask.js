/* Questions to the model, when the page is served by `atlas serve`: locate an image, an icon on
 * demand, the nearest samples.
 *
 * The server is found by fetching /api/health once (same origin; a page opened from disk asks
 * nothing and says that `atlas serve RUN_DIR` brings these). Its answers are transient: none of
 * them goes into the URL hash (the located image is the reader's own file).
 *
 * - Locate: the chosen or dropped file is POSTed as it is to /api/locate?acts=1; each position
 *   of the layer's feature map becomes a numbered dot at its layout (x, y), drawn with the map's
 *   own transform (Pane.toLatLng, the one the points use), linked to a square of a grid over the
 *   part of the image the model saw (the answer's `box`): hovering one lights the other and the
 *   position's cell at the current level. The cells it lands in are listed with their icons and
 *   exemplars (the card's own data, viewer.js's cardFacts).
 * - Icons on demand: POST /api/render with the selection's polygon (or its rows, when filters
 *   narrow it), or with a located position's activation as a `direction` (the locate answer
 *   carries it: acts=1); the PNG comes back as a data: URL (the CSP allows data: images only).
 * - Nearest samples: GET /api/neighbours for a cell's mean (the card), a sample (an exemplar's
 *   source dialog) or a selection; the rows are drawn on the map and listed with their cosine and
 *   their exemplar patch, or their image's file name.
 *
 * Every string (file and class names, the server's messages) is written with textContent.
 */
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const K = 10; // nearest samples asked for
  const MAX_ROWS = 100000; // a render's rows (pipelines/server/backend.py MAX_ROWS)
  const MAX_QUERY_ROWS = 1000; // a neighbours query's rows (pipelines/server/app.py)
  const CELL_ICON = 64;
  const PREVIEW = 300; // px of the located image's longer side
  const FROM_DISK = "Opened from disk: locating an image, icons on demand and nearest samples " +
    "need the model; `atlas serve RUN_DIR` brings them.";

  class Failure extends Error {
    constructor(status, message, retry) { super(message); this.status = status; this.retry = retry; }
  }

  function problem(err) { // one line naming the problem: the server's own words, and its status
    if (!(err instanceof Failure)) return String(err && err.message ? err.message : err);
    let line = err.message;
    if (err.status === 503 && err.retry && !/retry in/.test(line)) line += "; retry in " + err.retry + " s";
    return err.status ? line + " (HTTP " + err.status + ")" : line;
  }

  function ask(path, opts) { // fetch from the run's own API; a refusal becomes a Failure
    const o = Object.assign({ credentials: "same-origin", cache: "no-store" }, opts || {});
    return fetch(path, o).then((r) => {
      if (r.ok) return r;
      return r.text().then((t) => {
        let msg = "";
        try { msg = JSON.parse(t).error; } catch (e) { msg = ""; }
        throw new Failure(r.status, String(msg || r.statusText || "refused"), r.headers.get("retry-after"));
      });
    }, (err) => { throw new Failure(0, "no answer from the server (" + err.message + ")"); });
  }

  function dataUrl(blob) {
    return new Promise((resolve, reject) => {
      const fr = new FileReader();
      fr.addEventListener("load", () => resolve(fr.result));
      fr.addEventListener("error", () => reject(fr.error));
      fr.readAsDataURL(blob);
    });
  }

  window.ATLAS_ASK = function (core) {
    const pane = core.panes[0], el = core.el, ex = core.explore || null;
    // what the views drew last (read by the tests)
    const out = { served: false, positions: [], lit: null, cells: [], icon: null, neighbours: null };
    core.view.ask = out;
    let served = false;

    function offline(note) {
      $("ask-note").textContent = note;
      $("ask-tools").hidden = true;
      $("sel-ask").hidden = true;
      document.body.dataset.ask = "off";
    }

    if (location.protocol !== "http:" && location.protocol !== "https:") return offline(FROM_DISK);
    if (core.panes.length > 1 || !/^\/viewer\//.test(location.pathname)) {
      return offline("The model answers questions on the run's main page (/viewer/index.html).");
    }
    const probe = ask("/api/health").then((r) => r.json()).then((h) => {
      if (h.compute === false) return offline("This server answers no questions (started with --no-compute).");
      served = out.served = true;
      $("ask-note").textContent = "";
      $("ask-tools").hidden = false;
      document.body.dataset.ask = "on";
      selectionChanged();
    }, (err) => offline("The server's API did not answer (" + problem(err) + "); `atlas serve RUN_DIR` brings it."));
    core.track(probe);

    // ---------------------------------------------------------------- locate an image
    let located = null, token = 0, lit = -1, picked = -1;
    const dots = L.layerGroup().addTo(pane.map), cellMark = L.layerGroup().addTo(pane.map);
    let markers = [], squares = [];

    function status(text, kind) {
      const s = $("locate-status");
      s.textContent = text;
      s.className = kind || "";
    }

    function locateFile(file) {
      if (!file || !served) return null;
      const mine = ++token;
      status("locating " + file.name + "\u2026", "busy");
      const type = /^image\//.test(file.type) ? file.type : "application/octet-stream";
      const job = ask("/api/locate?top=5&acts=1", { method: "POST", headers: { "Content-Type": type }, body: file })
        .then((r) => r.json())
        .then((res) => dataUrl(file).then((url) => { if (mine === token) show(file.name, url, res); }))
        .catch((err) => { if (mine === token) status(file.name + ": " + problem(err), "error"); });
      core.track(job);
      return job;
    }

    function clearLocated() {
      located = null; lit = picked = -1;
      dots.clearLayers(); cellMark.clearLayers();
      markers = []; squares = [];
      $("locate-grid").replaceChildren();
      $("located").hidden = true;
      $("locate-icon-out").replaceChildren();
      out.positions = []; out.lit = null; out.cells = [];
    }

    function show(name, url, res) {
      clearLocated();
      located = res;
      status(name + ": " + res.positions.length + " positions (" + res.grid[0] + " \u00d7 " + res.grid[1] +
        ") placed in " + Object.values(res.seconds).reduce((a, b) => a + b, 0).toFixed(2) + " s", "");
      const img = $("locate-img");
      img.addEventListener("load", () => { // the preview fills PREVIEW px on its longer side
        const sc = PREVIEW / Math.max(img.naturalWidth, img.naturalHeight, 1);
        img.style.width = Math.round(img.naturalWidth * sc) + "px";
        img.style.height = Math.round(img.naturalHeight * sc) + "px";
      }, { once: true });
      img.src = url;
      const grid = $("locate-grid"), [h, w] = res.grid, b = res.box || [0, 0, 1, 1];
      grid.style.left = 100 * b[0] + "%"; grid.style.top = 100 * b[1] + "%";
      grid.style.width = 100 * (b[2] - b[0]) + "%"; grid.style.height = 100 * (b[3] - b[1]) + "%";
      grid.style.gridTemplateColumns = "repeat(" + w + ", 1fr)";
      grid.style.gridTemplateRows = "repeat(" + h + ", 1fr)";
      res.positions.forEach((p, i) => {
        const sq = el("button", "pos", String(i + 1));
        sq.type = "button";
        sq.dataset.i = String(i);
        sq.setAttribute("aria-label", "position " + (i + 1) + ": row " + p.row + ", column " + p.col);
        sq.addEventListener("mouseenter", () => light(i));
        sq.addEventListener("focus", () => light(i));
        sq.addEventListener("mouseleave", () => light(-1));
        sq.addEventListener("click", () => pick(i));
        grid.appendChild(sq);
        squares.push(sq);
        const m = L.marker(pane.toLatLng(p.x, p.y), {
          icon: L.divIcon({ className: "locate-dot", html: el("span", null, String(i + 1)), iconSize: [18, 18], iconAnchor: [9, 9] }),
          keyboard: false, title: "position " + (i + 1),
        });
        m.on("mouseover", () => light(i));
        m.on("mouseout", () => light(-1));
        m.on("click", () => pick(i));
        m.addTo(dots);
        markers.push(m);
        out.positions.push({ i: i, row: p.row, col: p.col, x: p.x, y: p.y, cells: p.cells });
      });
      const top = $("locate-top");
      top.replaceChildren(...res.top.map((t) => el("li", null, t.name + " \u2014 " + (+t.prob).toFixed(4))));
      $("located").hidden = false;
      pick(-1);
      return listCells();
    }

    function light(i) { // position i's square, dot and cell lit (-1: none)
      if (i === lit) return;
      if (lit >= 0 && squares[lit]) {
        squares[lit].classList.remove("lit");
        const e = markers[lit].getElement();
        if (e) e.classList.remove("lit");
        markers[lit].setZIndexOffset(0);
      }
      lit = i;
      cellMark.clearLayers();
      out.lit = null;
      if (located) describe(i);
      if (i < 0 || !located) return;
      squares[i].classList.add("lit");
      const e = markers[i].getElement();
      if (e) e.classList.add("lit");
      markers[i].setZIndexOffset(1000);
      const lv = pane.level(), c = located.positions[i].cells[lv.size];
      if (!c) return;
      const b = pane.cellBounds(lv, c[0], c[1]);
      L.rectangle(b, { className: "locate-cell-outer", fill: false, interactive: false }).addTo(cellMark);
      L.rectangle(b, { className: "locate-cell-inner", fill: false, interactive: false }).addTo(cellMark);
      out.lit = { i: i, level: lv.size, ix: c[0], iy: c[1] };
    }

    function pick(i) { // the position whose icon the button asks for
      picked = i;
      for (const sq of squares) sq.setAttribute("aria-pressed", String(+sq.dataset.i === i));
      $("locate-icon").disabled = i < 0;
      describe(i);
    }

    function describe(i) { // the line about the lit position, else the picked one
      if (i < 0) i = picked;
      if (i < 0 || !located) { $("locate-pos").textContent = "Hover or click a position (on the image or its dot on the map)."; return; }
      const p = located.positions[i], lv = pane.level(), c = p.cells[lv.size], topName = located.top.length ? located.top[0].name : "";
      $("locate-pos").textContent = "Position " + (i + 1) + " (row " + p.row + ", column " + p.col + "): cell (" +
        c[0] + ", " + c[1] + ") of " + lv.size + " \u00d7 " + lv.size + "; attribution to " + topName + " " + (+p.attribution).toPrecision(3) +
        (i === picked ? "" : (picked >= 0 ? " (click to pick it; position " + (picked + 1) + " is picked)" : " (click to pick it)"));
    }

    function listCells() { // the cells the positions land in at the current level
      if (!located) return Promise.resolve();
      const lv = pane.level(), g = lv.size, res = located;
      const job = pane.levelData(lv).then((d) => {
        const groups = new Map();
        res.positions.forEach((p, i) => {
          const c = p.cells[g];
          if (!c) return;
          const k = c[1] * g + c[0];
          if (!groups.has(k)) groups.set(k, []);
          groups.get(k).push(i);
        });
        const order = [...groups].sort((a, b) => b[1].length - a[1].length || a[0] - b[0]);
        $("locate-cells-title").textContent = "The cells it lands in at " + g + " \u00d7 " + g + " (" + order.length + ")";
        out.cells = order.map(([k, list]) => [k % g, Math.floor(k / g), list.length, d.index.has(k)]);
        return Promise.all(order.map(([k, list]) => cellEntry(lv, d, k % g, Math.floor(k / g), list)));
      }).then((entries) => { if (located === res && entries) $("locate-cells").replaceChildren(...entries); });
      core.track(job);
      return job;
    }

    function cellEntry(lv, d, ix, iy, list) {
      const box = el("div", "located-cell"), i = d.index.get(iy * lv.size + ix);
      const nums = list.slice(0, 12).map((j) => j + 1).join(", ") + (list.length > 12 ? ", \u2026" : "");
      const head = el("p", null, "cell (" + ix + ", " + iy + "): " + list.length + " position" + (list.length > 1 ? "s" : "") +
        " (" + nums + ")");
      box.addEventListener("mouseenter", () => light(list[0]));
      box.addEventListener("mouseleave", () => light(-1));
      if (i === undefined) {
        box.append(head, el("p", "hint", "not kept at this level (too few samples): no icon"));
        return Promise.resolve(box);
      }
      const cell = { lv: lv, i: i, ix: ix, iy: iy };
      return core.cardFacts(pane, cell).then((f) => {
        const label = d.label[i] >= 0 ? pane.run.classes[d.label[i]] : "";
        const row = el("div", "cell-row");
        const text = el("div");
        text.append(head, el("p", "hint", (label ? label + "; " : "") + d.count[i] + " activations"));
        row.append(core.iconBox(pane, lv, cell, CELL_ICON), text);
        const exs = el("div", "exemplars");
        for (const x of f.ex) {
          const names = f.names.get(Math.floor(x.slot / pane.run.exemplars.per));
          exs.appendChild(core.exemplarButton(pane, x.e, x.slot, x.box, names));
        }
        box.append(row, exs);
        return box;
      });
    }

    let shownLevel = null;
    pane.map.on("zoomend", () => { // the listed cells and the lit cell follow the level
      const lv = pane.level();
      if (lv === shownLevel) return;
      shownLevel = lv;
      if (!located) return;
      const i = lit;
      lit = -1;
      light(i);
      pick(picked);
      listCells();
    });

    $("locate-file").addEventListener("change", () => {
      const f = $("locate-file").files[0];
      locateFile(f);
      $("locate-file").value = ""; // the same file chosen again is a new question
    });
    const drop = $("locate-drop");
    drop.addEventListener("dragover", (ev) => { ev.preventDefault(); drop.classList.add("over"); });
    drop.addEventListener("dragleave", () => drop.classList.remove("over"));
    drop.addEventListener("drop", (ev) => {
      ev.preventDefault();
      drop.classList.remove("over");
      const files = ev.dataTransfer ? ev.dataTransfer.files : null;
      if (files && files.length) locateFile(files[0]);
    });
    $("locate-clear").addEventListener("click", () => { token++; clearLocated(); status("", ""); });
    $("locate-icon").addEventListener("click", () => {
      if (!located || picked < 0) return;
      const p = located.positions[picked];
      if (!p.acts) { $("locate-icon-out").replaceChildren(el("p", "error", "this server sent no activations to render")); return; }
      iconOf({ direction: p.acts }, $("locate-icon-out"), "position " + (picked + 1));
    });

    // ---------------------------------------------------------------- icons on demand
    const iconJobs = new Map();
    function iconOf(selection, box, what) {
      const mine = (iconJobs.get(box) || 0) + 1;
      iconJobs.set(box, mine);
      const wait = el("p", "rendering");
      wait.append(el("span", "spinner"), el("span", null, " rendering the icon of " + what + "\u2026"));
      box.replaceChildren(wait);
      const t0 = performance.now();
      const job = ask("/api/render", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(selection) })
        .then((r) => r.blob()).then(dataUrl).then((url) => {
          if (iconJobs.get(box) !== mine) return;
          const img = el("img", "icon-ondemand");
          img.src = url;
          img.alt = "icon of " + what;
          const secs = ((performance.now() - t0) / 1000).toFixed(1);
          box.replaceChildren(img, el("p", "hint", "icon of " + what + " (the run's render recipe, " + secs + " s)"));
          out.icon = { what: what, src: url };
        })
        .catch((err) => { if (iconJobs.get(box) === mine) box.replaceChildren(el("p", "error", "icon of " + what + ": " + problem(err))); });
      core.track(job);
      return job;
    }

    function selectionChanged() { // the selection panel's buttons follow the selection
      const sel = served && ex ? ex.selection() : null;
      $("sel-ask").hidden = !sel;
      if (!sel) $("sel-icon-out").replaceChildren();
    }
    if (ex) ex.changed.push(selectionChanged);

    $("sel-icon").addEventListener("click", () => {
      const sel = ex && ex.selection();
      if (!sel) return;
      const what = "the selection (" + sel.rows.length + " samples)";
      if (!sel.rows.length) { $("sel-icon-out").replaceChildren(el("p", "error", "the selection is empty")); return; }
      if (sel.filtered && sel.rows.length > MAX_ROWS) {
        $("sel-icon-out").replaceChildren(el("p", "error", "a filtered selection of more than " + MAX_ROWS + " samples: narrow it"));
        return;
      }
      // without filters the polygon is the selection (the server selects the same samples)
      iconOf(sel.filtered ? { rows: sel.rows } : { polygon: sel.polygon }, $("sel-icon-out"), what);
    });
    $("sel-near").addEventListener("click", () => {
      const sel = ex && ex.selection();
      if (!sel || !sel.rows.length) return;
      if (sel.rows.length > MAX_QUERY_ROWS) {
        near(null, "the selection", new Failure(0, "the nearest samples of a selection of at most " + MAX_QUERY_ROWS + " samples: narrow it"));
        return;
      }
      const q = sel.rows.length === 1 ? "row=" + sel.rows[0] : "rows=" + sel.rows.join(",");
      near(q, sel.rows.length === 1 ? "sample " + sel.rows[0] : "the mean of the selection (" + sel.rows.length + " samples)");
    });

    // ---------------------------------------------------------------- nearest samples
    const nearLayer = L.layerGroup().addTo(pane.map);
    let nearToken = 0;
    function near(query, what, failed) {
      const mine = ++nearToken;
      $("near").hidden = false;
      $("near-title").textContent = "Nearest samples to " + what;
      $("near").scrollIntoView({ block: "nearest" });
      nearLayer.clearLayers();
      out.neighbours = null;
      if (failed) { $("near-list").replaceChildren(el("li", "error", problem(failed))); return Promise.resolve(); }
      $("near-list").replaceChildren(el("li", "hint", "searching\u2026"));
      const job = ask("/api/neighbours?" + query + "&k=" + K).then((r) => r.json())
        .then((res) => (ex ? ex.columns().then(() => res) : res))
        .then((res) => Promise.all(res.rows.map(nearItem)).then((items) => {
          if (mine !== nearToken) return;
          items.forEach((li, k) => { li.querySelector(".cos").textContent = (+res.cosine[k]).toFixed(4); });
          $("near-list").replaceChildren(...items);
          out.neighbours = { query: query, rows: res.rows, cosine: res.cosine, drawn: drawNear(res.rows) };
        }))
        .catch((err) => { if (mine === nearToken) $("near-list").replaceChildren(el("li", "error", problem(err))); });
      core.track(job);
      return job;
    }

    function nearItem(row, rank) {
      const li = el("li", "near");
      li.dataset.row = String(row);
      const text = el("span", null, "row " + row + " \u2014 cosine ");
      const cos = el("span", "cos");
      text.appendChild(cos);
      li.appendChild(text);
      if (!ex) return Promise.resolve(li);
      return ex.patchOf(row).then((p) => {
        if (p) li.insertBefore(core.exemplarButton(pane, p.e, p.slot, p.box, p.names), text);
        else return ex.sourceOf(row).then((name) => { li.appendChild(el("span", "hint", " " + name)); });
        return null;
      }).then(() => li, () => li);
    }

    function drawNear(rows) { // the rows' points, ringed; how many were drawn
      let n = 0;
      rows.forEach((row) => {
        const i = ex ? ex.point(row) : -1;
        if (i < 0) return;
        const [x, y] = ex.xy(i);
        L.circleMarker(pane.toLatLng(x, y), { radius: 7, className: "near-ring", fill: false, interactive: false }).addTo(nearLayer);
        n++;
      });
      return n;
    }

    $("near-clear").addEventListener("click", () => {
      nearToken++; nearLayer.clearLayers(); $("near").hidden = true; out.neighbours = null;
    });

    core.hooks.card.push((p, cell) => { // a card: the nearest samples to its cell's mean
      if (!served || p !== pane || !cell) return null;
      const b = el("button", "card-near", "nearest samples to this cell");
      b.type = "button";
      b.addEventListener("click", () => near("level=" + cell.lv.size + "&ix=" + cell.ix + "&iy=" + cell.iy,
        "the mean of cell (" + cell.ix + ", " + cell.iy + ") of " + cell.lv.size + " \u00d7 " + cell.lv.size));
      return b;
    });

    let sourceRow = null;
    core.hooks.source.push((p, e) => { // an exemplar's source: the nearest samples to it
      const b = $("source-near");
      b.hidden = true;
      sourceRow = null;
      if (!served || p !== pane || !ex || e === undefined) return;
      ex.rowOfPatch(e).then((row) => { if (row !== null) { sourceRow = row; b.hidden = false; } });
    });
    $("source-near").addEventListener("click", () => {
      if (sourceRow === null) return;
      core.closeSource();
      near("row=" + sourceRow, "sample " + sourceRow);
    });
  };
})();
