/* The page side of benchmarks/explore_libs.py: draw n points with one library, report the times.
 *
 * ?lib=<name>&n=<points>. The data file data-<n>.js holds x, y (float32) and a class (uint8) per
 * point as base64. RESULT: decode_ms (base64 to typed arrays), draw_ms (from the typed arrays to
 * every point on the canvas, the library's first frame: shaders compiled, buffers made),
 * recolour_ms (every point given a new colour, as a filter does, to the next frame that shows
 * it), heap_mb after a forced GC, the WebGL renderer.
 */
(function () {
  "use strict";
  const made = HTMLCanvasElement.prototype.getContext;
  HTMLCanvasElement.prototype.getContext = function (type, opts) {
    // every WebGL context keeps its buffer, so a read after the frame sees what was drawn
    const gl = type === "webgl" || type === "webgl2";
    if (gl) opts = Object.assign({}, opts, { preserveDrawingBuffer: true });
    const ctx = made.call(this, type, opts);
    if (ctx && gl) this.__gl = ctx;
    return ctx;
  };
  const q = new URLSearchParams(location.search), lib = q.get("lib"), n = +q.get("n");
  const box = document.getElementById("box"), W = 900, H = 700;

  function typed(b64, T) {
    const bin = atob(b64), u8 = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) u8[i] = bin.charCodeAt(i);
    return new T(u8.buffer);
  }

  function load(src) {
    return new Promise((ok, bad) => {
      const s = document.createElement("script");
      s.src = src; s.onload = ok; s.onerror = bad;
      document.head.appendChild(s);
    });
  }

  function painted(test) { // pixels of the library's canvases that pass test(r, g, b, a)
    let most = 0;
    for (const c of box.querySelectorAll("canvas")) {
      const gl = c.__gl;
      if (!c.width) continue;
      let px;
      if (gl) {
        px = new Uint8Array(c.width * c.height * 4);
        gl.readPixels(0, 0, c.width, c.height, gl.RGBA, gl.UNSIGNED_BYTE, px);
      } else { // a WebGPU (or 2D) canvas: its last frame, through a 2D copy
        const copy = document.createElement("canvas");
        copy.width = c.width; copy.height = c.height;
        const ctx = copy.getContext("2d");
        ctx.drawImage(c, 0, 0);
        px = ctx.getImageData(0, 0, c.width, c.height).data;
      }
      let k = 0;
      for (let i = 0; i < px.length; i += 4) if (test(px[i], px[i + 1], px[i + 2], px[i + 3])) k++;
      most = Math.max(most, k);
    }
    return most;
  }

  function until(t0, test, need) { // resolves when `need` pixels pass the test
    return new Promise((ok) => {
      const tick = () => {
        const k = painted(test), ms = performance.now() - t0;
        if (k >= need) ok({ ms: ms, painted: k });
        else if (ms > 180000) ok({ ms: null, painted: k });
        else requestAnimationFrame(tick);
      };
      requestAnimationFrame(tick);
    });
  }

  const PALETTE = [];
  for (let c = 0; c < 256; c++) PALETTE.push([(c * 97) % 256, (c * 57 + 80) % 256, (c * 23 + 160) % 200]);
  const RED = [255, 0, 0];
  const isRed = (r, g, b, a) => a > 0 && r === 255 && g === 0 && b === 0;

  const DRAW = { // each returns recolour(), which paints every point red
    "leaflet-glify": (x, y, c) => {
      // glify draws nothing on the atlas's CRS.Simple map (its issue #29): a Web-Mercator map,
      // the layout in a box of latitudes and longitudes, and no tiles
      const map = L.map(box, { minZoom: 0, maxZoom: 12, zoomSnap: 0, fadeAnimation: false });
      map.fitBounds([[-40, -80], [40, 80]]);
      const data = new Array(x.length);
      for (let i = 0; i < x.length; i++) data[i] = [(y[i] - 0.5) * 80, (x[i] - 0.5) * 160];
      const rgb = (p) => ({ r: p[0] / 255, g: p[1] / 255, b: p[2] / 255, a: 1 });
      let layer = L.glify.points({ map: map, data: data, size: 3, color: (i) => rgb(PALETTE[c[i]]) });
      return () => { layer.remove(); layer = L.glify.points({ map: map, data: data, size: 3, color: () => rgb(RED) }); };
    },
    "deck.gl": (x, y, c) => {
      const xy = new Float32Array(2 * x.length), rgba = new Uint8Array(4 * x.length);
      for (let i = 0; i < x.length; i++) {
        xy[2 * i] = x[i] * 256; xy[2 * i + 1] = (1 - y[i]) * 256;
        const p = PALETTE[c[i]];
        rgba[4 * i] = p[0]; rgba[4 * i + 1] = p[1]; rgba[4 * i + 2] = p[2]; rgba[4 * i + 3] = 255;
      }
      const tiles = new deck.TileLayer({
        id: "tiles", data: "tiles/{z}/{x}/{y}.jpg", tileSize: 256, minZoom: 0, maxZoom: 2,
        extent: [0, 0, 256, 256],
        renderSubLayers: (p) => {
          const b = p.tile.bbox;
          return new deck.BitmapLayer(p, { data: null, image: p.data, bounds: [b.left, b.bottom, b.right, b.top] });
        },
      });
      const points = (colours) => new deck.ScatterplotLayer({
        id: "pts", radiusUnits: "pixels", getRadius: 1.5,
        data: { length: x.length, attributes: { getPosition: { value: xy, size: 2 },
          getFillColor: { value: colours, size: 4, normalized: true } } },
      });
      const d = new deck.Deck({
        parent: box, width: W, height: H, views: new deck.OrthographicView({ flipY: true }),
        initialViewState: { target: [128, 128, 0], zoom: Math.log2(H / 256) }, controller: true,
        layers: [tiles, points(rgba)],
      });
      return () => {
        const red = new Uint8Array(4 * x.length);
        for (let i = 0; i < x.length; i++) { red[4 * i] = 255; red[4 * i + 3] = 255; }
        d.setProps({ layers: [tiles, points(red)] });
      };
    },
    "canvas2d": (x, y, c) => { // no library: the points written into an ImageData on a canvas
      const map = L.map(box, { crs: L.CRS.Simple, minZoom: -2, maxZoom: 8, zoomSnap: 0, fadeAnimation: false });
      map.fitBounds([[-256, 0], [0, 256]]);
      L.tileLayer("tiles/{z}/{x}/{y}.jpg", { tileSize: 256, minZoom: -2, maxNativeZoom: 2, minNativeZoom: 0,
        noWrap: true, bounds: [[-256, 0], [0, 256]] }).addTo(map);
      const canvas = L.DomUtil.create("canvas", "leaflet-zoom-hide", map.getPanes().overlayPane);
      const colours = new Uint32Array(256);
      const pack = (p) => (255 << 24) | (p[2] << 16) | (p[1] << 8) | p[0];
      const draw = (cols) => {
        const size = map.getSize(), w = size.x, h = size.y;
        canvas.width = w; canvas.height = h;
        L.DomUtil.setPosition(canvas, map.containerPointToLayerPoint([0, 0]));
        const o = map.latLngToContainerPoint([0, 0]), s = 256 * Math.pow(2, map.getZoom());
        const ctx = canvas.getContext("2d"), img = ctx.createImageData(w, h);
        const px = new Uint32Array(img.data.buffer);
        for (let i = 0; i < x.length; i++) {
          const u = (o.x + x[i] * s) | 0, v = (o.y + (1 - y[i]) * s) | 0;
          if (u < 1 || v < 1 || u >= w - 1 || v >= h - 1) continue;
          const k = v * w + u, col = cols[c[i]];
          px[k] = col; px[k + 1] = col; px[k + w] = col; px[k + w + 1] = col; // 2 x 2 pixels
        }
        ctx.putImageData(img, 0, 0);
      };
      for (let k = 0; k < 256; k++) colours[k] = pack(PALETTE[k]);
      draw(colours);
      return () => { draw(colours.map(() => pack(RED))); };
    },
    "embedding-atlas": (x, y, c) => {
      const colours = PALETTE.slice(0, 100).map((p) => "rgb(" + p + ")");
      const v = new EA.EmbeddingView(box, {
        data: { x: x, y: y, category: c }, width: W, height: H, categoryColors: colours,
        config: { mode: "points", downsampleMaxPoints: null, autoLabelEnabled: false },
      });
      return () => v.update({ categoryColors: colours.map(() => "rgb(255,0,0)") });
    },
  };

  async function run() {
    await load("data-" + n + ".js");
    const t0 = performance.now();
    const x = typed(window.PTS.x, Float32Array), y = typed(window.PTS.y, Float32Array);
    const c = typed(window.PTS.c, Uint8Array);
    window.PTS = null;
    const t1 = performance.now();
    const recolour = DRAW[lib](x, y, c);
    const need = Math.min(n, W * H) / 20;
    const first = await until(t1, (r, g, b, a) => a > 0 && !(r === g && g === b), need);
    const t2 = performance.now();
    recolour();
    const again = await until(t2, isRed, need);
    await new Promise((ok) => setTimeout(ok, 500));
    if (window.gc) window.gc();
    const gl = [...box.querySelectorAll("canvas")].map((cv) => cv.__gl).find(Boolean);
    let renderer = null;
    if (gl) {
      const e = gl.getExtension("WEBGL_debug_renderer_info");
      renderer = e ? gl.getParameter(e.UNMASKED_RENDERER_WEBGL) : null;
    }
    window.RESULT = {
      decode_ms: t1 - t0, draw_ms: first.ms, painted: first.painted, recolour_ms: again.ms,
      renderer: renderer, webgl2: typeof WebGL2RenderingContext !== "undefined" && gl instanceof WebGL2RenderingContext,
      heap_mb: performance.memory.usedJSHeapSize / 1048576,
    };
  }
  run().catch((e) => { window.RESULT = { error: String((e && e.stack) || e) }; });
})();
