/* What the pages' scripts share (viewer.js, diff.js, sweep.js), as window.ATLAS_COMMON: a loader
 * of data files (scripts that hand their payload to ATLAS_PUT), base64 -> typed arrays, element
 * building, a canvas overlay layer for Leaflet and the tile layers of a run's levels. Loaded after
 * Leaflet and before the page's own script; nothing here runs until a page calls it.
 */
(function () {
  "use strict";

  // track(promise): body[data-busy] counts the promises it was given that have not settled
  function busy() {
    let n = 0;
    return function track(promise) {
      n += 1;
      document.body.dataset.busy = String(n);
      const done = () => { n -= 1; document.body.dataset.busy = String(n); };
      promise.then(done, done);
    };
  }

  // load(rel): the payload of the data file at rel (relative to the page), each file loaded once
  // by a script tag; installs window.ATLAS_PUT, which the files call. track(promise), if given,
  // sees every load.
  function loader(track) {
    const loaded = new Map();
    const waiting = new Map();
    window.ATLAS_PUT = function (src, payload) {
      loaded.set(src, payload);
      const w = waiting.get(src);
      if (w) { waiting.delete(src); w.resolve(payload); }
    };
    return function load(rel) {
      const url = new URL(rel, location.href).href;
      if (loaded.has(url)) return Promise.resolve(loaded.get(url));
      if (waiting.has(url)) return waiting.get(url).promise;
      const w = {};
      w.promise = new Promise((resolve, reject) => { w.resolve = resolve; w.reject = reject; });
      waiting.set(url, w);
      const s = document.createElement("script");
      s.src = url;
      s.addEventListener("error", () => { waiting.delete(url); w.reject(new Error("could not load " + rel)); });
      document.head.appendChild(s);
      if (track) track(w.promise);
      return w.promise;
    };
  }

  function typed(b64, T) { // a little-endian typed array written as base64
    if (Uint8Array.fromBase64) return new T(Uint8Array.fromBase64(b64).buffer); // 4x atob's loop
    const bin = atob(b64);
    const u8 = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) u8[i] = bin.charCodeAt(i);
    return new T(u8.buffer);
  }

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  const num = (v, d) => (v === null || v === undefined ? "n/a" : (+v).toFixed(d));

  // a Leaflet layer: one canvas of class cls over the map, cleared and handed to the layer's
  // draw(ctx, toPx, size) (toPx: latLng -> container pixels) whenever the map moves
  function overlay(cls) {
    return L.Layer.extend({
      onAdd(map) {
        this.canvas = L.DomUtil.create("canvas", cls + " leaflet-zoom-hide");
        map.getPanes().overlayPane.appendChild(this.canvas);
        map.on("moveend zoomend resize viewreset", this.redraw, this);
        this.redraw();
      },
      onRemove(map) {
        L.DomUtil.remove(this.canvas);
        map.off("moveend zoomend resize viewreset", this.redraw, this);
      },
      redraw() {
        if (!this._map) return;
        const map = this._map, size = map.getSize(), c = this.canvas;
        c.width = size.x; c.height = size.y;
        L.DomUtil.setPosition(c, map.containerPointToLayerPoint([0, 0]));
        const ctx = c.getContext("2d");
        ctx.clearRect(0, 0, size.x, size.y);
        if (this.draw) this.draw(ctx, (ll) => map.latLngToContainerPoint(ll), size);
      },
    });
  }

  // a tile layer per level of the run (levels sorted coarse to fine) under root (its viewer/),
  // each shown at its own zooms; the finest one also up to zoom top
  function tiles(map, root, run, levels, bounds, top) {
    levels.forEach((lv, i) => {
      const last = i === levels.length - 1;
      L.tileLayer(root + "tiles/" + lv.size + "/{z}/{x}/{y}." + run.tile_ext, {
        tileSize: run.tile_px, minZoom: lv.zmin, maxZoom: last ? top : lv.zmax,
        minNativeZoom: lv.zmin, maxNativeZoom: lv.zmax, noWrap: true, bounds: bounds, keepBuffer: 1,
      }).addTo(map);
    });
  }

  window.ATLAS_COMMON = { busy, loader, typed, el, num, overlay, tiles };
})();
