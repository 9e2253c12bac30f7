"""Which library draws the explorer's points: Leaflet + leaflet.glify, deck.gl, embedding-atlas.

For each candidate, in Debian's headless chromium (Playwright, never a downloaded browser) over a
loopback HTTP server: the bytes of the library the page must fetch, the time from typed columns
in memory (x, y as Float32Array, a class per point) to every point on the canvas, the JS heap
after drawing (after a forced GC), and the WebGL renderer chromium used. The points are the same
synthetic layout for every library (Gaussian clusters in [0, 1]^2, 100 classes).

The libraries come from the npm registry through npm itself (pinned versions; npm checks each
tarball against the registry's sha512) into ``--cache`` (default ``/tmp/explore-libs``), and
embedding-atlas's ``EmbeddingView`` is bundled with esbuild (the package ships ES modules that
import its peer dependencies). "Drawn" means: the canvas's pixels (read back with readPixels;
every WebGL context is made with preserveDrawingBuffer so the read sees the last frame) hold at
least ``min(n, pixels) / 20`` painted pixels, polled every animation frame.

    python -m benchmarks.explore_libs [--sizes 100000,1000000] [--cache DIR]

writes ``benchmarks/results/explore_libs.json`` and logs the table.
"""

from __future__ import annotations

import argparse
import base64
import functools
import http.server
import json
import logging
import os
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import RESULTS, write

log = logging.getLogger("benchmarks.explore_libs")
PINS = {  # npm package -> version (npm verifies each tarball's sha512 against the registry)
    "leaflet": "1.9.4",
    "leaflet.glify": "3.3.1",
    "deck.gl": "9.4.0",
    "embedding-atlas": "0.26.0",
    "@uwdata/mosaic-core": "0.32.1",  # embedding-atlas's peer dependencies (bundled, unused)
    "@uwdata/mosaic-sql": "0.32.1",
    "esbuild": "0.28.2",
}
# @uwdata/flechette 2.7.0 (through mosaic-core) needs @uwdata/wk-geojson, which the registry
# does not have: the last release without it is pinned
OVERRIDES = {"@uwdata/flechette": "2.6.0"}
LIBS = {  # the library files each page loads (relative to the cache's node_modules)
    "leaflet-glify": [
        "leaflet/dist/leaflet.js",
        "leaflet/dist/leaflet.css",
        "leaflet.glify/dist/glify-browser.js",
    ],
    "deck.gl": ["deck.gl/dist.min.js"],
    "embedding-atlas": ["../ea-bundle.js"],
    "canvas2d": ["leaflet/dist/leaflet.js", "leaflet/dist/leaflet.css"],  # no library: by hand
}
# --enable-unsafe-webgpu: WebGPU on SwiftShader (embedding-atlas draws with WebGPU only); WebGL2
# runs on SwiftShader (ANGLE over Vulkan) without a flag
FLAGS = [
    "--no-sandbox",
    "--enable-precise-memory-info",
    "--js-flags=--expose-gc",
    "--enable-unsafe-webgpu",
]

HARNESS = Path(__file__).with_suffix(".js")  # the page's script

PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>points: {lib}</title>
{links}</head><body style="margin:0">
<div id="box" style="width:900px;height:700px;position:relative"></div>
{scripts}<script src="harness.js"></script></body></html>"""


def install(cache: Path) -> Path:
    """npm install of the pinned packages into ``cache`` (once) and the embedding-atlas bundle;
    returns the node_modules folder."""
    npm = shutil.which("npm")
    mods = cache / "node_modules"
    if not (cache / "ea-bundle.js").is_file():
        if npm is None:
            raise SystemExit("npm is needed to fetch the pinned libraries (apt-get install npm)")
        cache.mkdir(parents=True, exist_ok=True)
        spec = {"private": True, "dependencies": PINS, "overrides": OVERRIDES}
        (cache / "package.json").write_text(json.dumps(spec, indent=1))
        subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--legacy-peer-deps"], cwd=cache, check=True
        )
        entry = cache / "ea-entry.js"
        component = mods / "embedding-atlas" / "dist" / "component.js"
        entry.write_text(
            f'import {{ EmbeddingView }} from "{component}";\nwindow.EA = {{ EmbeddingView }};\n'
        )
        subprocess.run(
            [
                str(mods / ".bin" / "esbuild"),
                str(entry),
                "--bundle",
                "--minify",
                "--format=iife",
                f"--outfile={cache / 'ea-bundle.js'}",
            ],
            check=True,
        )
    return mods


def points(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x, y) float32 in [0, 1] from 100 Gaussian clusters, and each point's cluster (uint8)."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0.1, 0.9, (100, 2))
    c = rng.integers(0, 100, n)
    xy = np.clip(centres[c] + rng.normal(0, 0.04, (n, 2)), 0, 1).astype(np.float32)
    return xy[:, 0].copy(), xy[:, 1].copy(), c.astype(np.uint8)


def site(root: Path, mods: Path, sizes: list[int]) -> None:
    """The pages, the harness, the libraries, a few tiles and one data file per size."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(HARNESS, root / "harness.js")
    rng = np.random.default_rng(1)
    for z in range(3):
        for tx in range(2**z):
            for ty in range(2**z):
                out = root / "tiles" / str(z) / str(tx) / f"{ty}.jpg"
                out.parent.mkdir(parents=True, exist_ok=True)
                small = np.repeat(rng.integers(150, 256, (8, 8, 1), dtype=np.uint8), 3, axis=2)
                Image.fromarray(small).resize((256, 256)).save(out, quality=85)
    for lib, files in LIBS.items():
        for f in files:
            dst = root / "lib" / Path(f).name
            dst.parent.mkdir(exist_ok=True)
            shutil.copyfile((mods / f).resolve(), dst)
        names = [Path(f).name for f in files]
        links = "".join(
            f'<link rel="stylesheet" href="lib/{n}">' for n in names if n.endswith("css")
        )
        scripts = "".join(f'<script src="lib/{n}"></script>' for n in names if n.endswith("js"))
        (root / f"{lib}.html").write_text(PAGE.format(lib=lib, links=links, scripts=scripts))
    for n in sizes:
        x, y, c = points(n)
        cols = {
            k: base64.b64encode(v.tobytes()).decode() for k, v in (("x", x), ("y", y), ("c", c))
        }
        (root / f"data-{n}.js").write_text(f"window.PTS = {json.dumps(cols)};\n")


def serve(root: Path) -> tuple[str, http.server.ThreadingHTTPServer]:
    handler = functools.partial(_Quiet, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}/", server


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


def measure(browser: Any, url: str, lib: str, n: int) -> dict[str, Any]:
    """One page: the library's bytes, the draw time, the heap; console errors if any."""
    page = browser.new_page(viewport={"width": 900, "height": 700})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else 0)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{url}{lib}.html?lib={lib}&n={n}", wait_until="commit")
    try:
        page.wait_for_function("() => window.RESULT", timeout=400_000, polling=1000)
    except Exception as exc:  # a library that never finishes is a result too
        page.close()
        return {"error": f"no result: {exc}"[:300], "errors": errors[:3]}
    out = page.evaluate("window.RESULT")
    out["lib_bytes"] = page.evaluate(
        "performance.getEntriesByType('resource').filter(r => r.name.includes('/lib/'))"
        ".reduce((s, r) => s + r.encodedBodySize, 0)"
    )
    if n == 100_000:
        shot = Path("/tmp") / f"explore-lib-{lib}.png"
        page.screenshot(path=str(shot))
        out["screenshot"] = str(shot)
    out["errors"] = errors[:3]
    page.close()
    return out


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--cache", default="/tmp/explore-libs")
    ap.add_argument("--libs", default=",".join(LIBS))
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("Debian's chromium is needed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    cache = Path(args.cache)
    mods = install(cache)
    root = cache / "site"
    site(root, mods, sizes)
    url, server = serve(root)
    rows = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=FLAGS)
            for lib in args.libs.split(","):
                for n in sizes:
                    r = {"lib": lib, "n": n, **measure(browser, url, lib, n)}
                    log.info("%s", json.dumps(r))
                    rows.append(r)
            browser.close()
    finally:
        server.shutdown()
    done = {(r["lib"], r["n"]) for r in rows}  # rows of libraries not measured now are kept
    old = RESULTS / "explore_libs.json"
    if old.is_file():
        rows = [
            r for r in json.loads(old.read_text())["rows"] if (r["lib"], r["n"]) not in done
        ] + rows
    _table(rows)
    write(
        "explore_libs",
        {
            "flags": FLAGS,
            "pins": PINS,
            "overrides": OVERRIDES,
            "rows": rows,
            "load_average": os.getloadavg(),
        },
    )


def _table(rows: list[dict[str, Any]]) -> None:
    log.info(
        "%-16s %9s %10s %10s %10s %9s",
        "library",
        "points",
        "lib kB",
        "decode ms",
        "draw ms",
        "heap MB",
    )
    for r in rows:
        draw = r.get("draw_ms")
        log.info(
            "%-16s %9d %10.0f %10.0f %10s %9.1f",
            r["lib"],
            r["n"],
            r.get("lib_bytes", 0) / 1e3,
            r.get("decode_ms") or 0,
            "n/a" if draw is None else f"{draw:.0f}",
            r.get("heap_mb") or 0,
        )


if __name__ == "__main__":
    main()
