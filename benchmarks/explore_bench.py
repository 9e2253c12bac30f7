"""The explorer at 100k and 1M samples, in headless chromium (Debian's, through Playwright).

Data path: a synthetic run store (``make_store``: N images, one sample each, a clustered 2-D
layout, top-5 predictions with probabilities, labels, URIs in 1,000 folders, two grid levels of
random icons) is composed by the real compose stage, which reads the per-sample arrays from the
store in blocks and writes the points through :class:`atlas_core.compose.points.PointsWriter`;
the page is then served by ``atlas serve`` over loopback (so every fetched byte is counted).
Only the extraction, layout and icons are synthetic; from the store on, it is the product's path.

Measured per size: the page's open time and bytes (goal < 3 s, < 3 MB), turning the points on
until every point is drawn (< 3 s), a lasso drawn with the mouse over most of the layout answered
(< 1 s; the selection is computed over every point, so at 100k it is a lasso over 100,000
points), and the JS heap after all of it (< 400 MB). Writes benchmarks/results/explore.json.

    python -m benchmarks.explore_bench [--sizes 100000,1000000]
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import Timer, settings, write
from benchmarks.viewer_probe import OPEN_JS, _tiles

log = logging.getLogger("benchmarks.explore")
LAYER = "blocks.2"
SIZES = (20, 80)
GOALS = {"open_s": 3.0, "open_mb": 3.0, "points_s": 3.0, "lasso_s": 1.0, "heap_mb": 400.0}
LASSO = [(0.1, 0.1), (0.9, 0.12), (0.85, 0.85), (0.5, 0.95), (0.12, 0.8)]  # most of the layout


def make_store(run_dir: Path, n: int, seed: int = 0) -> None:
    """A run store of ``n`` images (k = 1) holding what compose reads: layout, predictions,
    labels, URIs, and levels ``SIZES`` with their cells, counts, top classes and icons."""
    from atlas_core.data.plan import plan_shards
    from atlas_core.data.sources import InputManifest
    from atlas_core.grid import cell_index
    from atlas_core.store import GridArrays, RunStore
    from atlas_core.store.run_store import StoreLayout

    rng = np.random.default_rng(seed)
    uris = np.array([f"/data/f{i % 1000:04d}/img{i}.jpg" for i in range(n)], dtype=object)
    labels = rng.integers(0, 100, n).astype(np.int32)
    man = InputManifest(
        uris, np.full((n, 4), -1, np.int32), None, labels, tuple(f"c{i}" for i in range(100))
    )
    plan = plan_shards(n, chunk_images=65_536)
    shape = StoreLayout(k=1, seed=seed, layers={LAYER: (4, 8, 8)}, topk=5, n_classes=100)
    store = RunStore.create(
        str(run_dir / "atlas.zarr"), man, plan, np.zeros((n, 2), np.int16), shape
    )
    centres = rng.uniform(0.1, 0.9, (100, 2))
    xy = np.clip(centres[labels] + rng.normal(0, 0.05, (n, 2)), 0, 1).astype(np.float32)
    top = np.stack(
        [np.where(rng.random(n) < 0.7, labels, rng.integers(0, 100, n))]
        + [rng.integers(0, 100, n) for _ in range(4)],
        1,
    ).astype(np.int32)
    store.images.write("top_class", 0, top)
    store.images.write("top_prob", 0, rng.random((n, 5)).astype(np.float16))
    store.images.write("status", 0, np.ones(n, np.uint8))
    node = store.layout_node(LAYER)
    node.create(["layout"], shape.dims(n, plan))
    node.write("layout", 0, xy)
    for g in SIZES:
        flat = cell_index(xy, g)
        count = np.bincount(flat, minlength=g * g)
        kept = np.flatnonzero(count > 0)
        m = len(kept)
        level = store.level(LAYER, g)
        cells = np.stack([kept % g, kept // g], 1).astype(np.int32)
        tc = rng.integers(0, 100, (m, 5)).astype(np.int32)
        level.write_grid(
            GridArrays(
                g,
                cells,
                np.zeros((m, 4), np.float32),
                count[kept].astype(np.int32),
                tc,
                np.ones((m, 5), np.int32),
            ),
            {},
        )
        level.create(
            ["icons", "icon_objective", "icon_cosine"], {"M": m, "px": 8, "group": 16, "item": 256}
        )
        for a in range(0, m, 256):
            b = min(m, a + 256)
            level.write("icons", a, rng.integers(0, 256, (b - a, 8, 8, 3), dtype=np.uint8))
            level.write("icon_cosine", a, np.zeros(b - a, np.float32))
            level.write("icon_objective", a, np.zeros(b - a, np.float32))


def compose(run_dir: Path) -> float:
    """The real compose stage over the store (tiles, the viewer, the points); its seconds."""
    import ray

    from pipelines.core.stage import StageRun
    from pipelines.core.views import MAIN
    from pipelines.stages import compose as stage

    s = settings(
        "debug=fast",
        f"run_dir={run_dir}",
        f"grid.sizes=[{SIZES[0]},{SIZES[1]}]",
        "render.icon_px=8",
        "cluster.num_cpus=2",
    )
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True)
    with Timer() as t:
        stage.run(StageRun("compose", s, MAIN, "bench"))
    (run_dir / "viewer" / "data" / "links.js").write_text("window.ATLAS_LINKS = [];\n")
    return t.seconds


def measure(run_dir: Path, chromium: str) -> dict[str, Any]:
    """Open, points on, a lasso, the heap: in one page over ``atlas serve``."""
    from playwright.sync_api import sync_playwright

    from pipelines.commands.serve import serve_in_thread

    url, server = serve_in_thread(str(run_dir))
    out: dict[str, Any] = {}
    try:
        with sync_playwright() as p:
            b = p.chromium.launch(
                executable_path=chromium,
                args=["--no-sandbox", "--enable-precise-memory-info", "--js-flags=--expose-gc"],
            )
            page = b.new_page(viewport={"width": 1200, "height": 800})
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else 0)
            page.goto(url + "#z=0")
            page.wait_for_selector("body[data-ready='1']", timeout=60_000)
            _tiles(page)
            opened = page.evaluate(OPEN_JS)
            out["open_s"] = page.evaluate("performance.now()") / 1000
            out["open_mb"] = opened["bytes"] / 1e6
            t0 = time.perf_counter()
            page.check("#pts")
            page.wait_for_function(
                "() => document.body.dataset.pointsDrawn !== undefined"
                " && document.body.dataset.busy === '0'",
                timeout=120_000,
            )
            out["points_s"] = time.perf_counter() - t0
            ex = page.evaluate("window.ATLAS_VIEW.explore")
            out["points_drawn"], out["points_ms"] = ex["drawn"], ex["ms"]
            out["points_mb"] = (page.evaluate(OPEN_JS)["bytes"] - opened["bytes"]) / 1e6
            out.update(_lasso(page))
            page.evaluate("window.gc && window.gc()")
            out["heap_mb"] = page.evaluate(OPEN_JS)["heap_mb"]
            out["errors"] = errors[:3]
            b.close()
    finally:
        server.shutdown()  # type: ignore[attr-defined]
    return out


def _lasso(page: Any) -> dict[str, Any]:
    """Draw ``LASSO`` with the mouse; seconds from the button's release to the count shown."""
    box = page.query_selector(".map").bounding_box()

    def screen(x: float, y: float) -> tuple[float, float]:
        q = page.evaluate(f"window.ATLAS_MAP.latLngToContainerPoint([({y} - 1) * 256, {x} * 256])")
        return box["x"] + q["x"], box["y"] + q["y"]

    page.click("#sel-lasso")
    page.mouse.move(*screen(*LASSO[0]))
    page.mouse.down()
    for x, y in [*LASSO[1:], LASSO[0]]:
        page.mouse.move(*screen(x, y), steps=3)
    t0 = time.perf_counter()
    page.mouse.up()
    page.wait_for_function(
        "() => document.getElementById('sel-count').dataset.n !== undefined"
        " && document.body.dataset.busy === '0'",
        timeout=60_000,
    )
    ex = page.evaluate("window.ATLAS_VIEW.explore")
    return {
        "lasso_page_ms": ex["ms"].get("select"),
        "lasso_s": time.perf_counter() - t0,
        "lasso_selected": ex["selected"],
        "lasso_ms": ex["ms"],
    }


def points_files(run_dir: Path) -> dict[str, float]:
    """Bytes of the points files on disk, and of the columns they carry (before base64)."""
    folder = run_dir / "viewer" / "data" / "points"
    files = sorted(folder.glob("points-*.js"))
    size = sum(f.stat().st_size for f in files)
    raw = sum(
        len(__import__("base64").b64decode(v))
        for f in files
        for v in _payload(f).values()
        if isinstance(v, str)
    )
    return {
        "points_files": len(files),
        "points_file_mb": size / 1e6,
        "columns_mb": raw / 1e6,
        "base64_overhead": size / raw - 1 if raw else 0.0,
    }


def _payload(path: Path) -> dict[str, Any]:
    import json

    text = path.read_text()
    return json.loads(text[text.index(", ") + 2 : text.rindex(");")])


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--keep", default="", help="keep each run under this folder (<n>/)")
    args = ap.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("Debian's chromium is needed (apt-get install chromium)")
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        with tempfile.TemporaryDirectory(prefix="explore-bench-") as tmp:
            run_dir = Path(args.keep) / str(n) if args.keep else Path(tmp) / "run"
            row = {"n": n, **_one(run_dir, n, chromium)}
        log.info("%s", row)
        rows.append(row)
    _table(rows)
    write(
        "explore",
        {
            "goals": GOALS,
            "lasso": LASSO,
            "rows": rows,
            "growth": _growth(rows) if len(rows) > 1 else None,
        },
    )


def _one(run_dir: Path, n: int, chromium: str) -> dict[str, Any]:
    """Build, compose and measure one size."""
    if run_dir.exists():
        shutil.rmtree(run_dir)
    with Timer() as t:
        make_store(run_dir, n)
    compose_s = compose(run_dir)
    return {
        "store_s": t.seconds,
        "compose_s": compose_s,
        **points_files(run_dir),
        **measure(run_dir, chromium),
        "load": os.getloadavg()[0],
    }


def _growth(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Each figure's ratio from the smallest size to the largest, and the size ratio."""
    a, b = rows[0], rows[-1]
    keys = ("open_s", "open_mb", "points_s", "lasso_s", "heap_mb", "points_file_mb")
    return {"size": b["n"] / a["n"], **{k: b[k] / a[k] for k in keys if a.get(k)}}


def _table(rows: list[dict[str, Any]]) -> None:
    cols = [
        ("samples", "n", "{:,}"),
        ("open s", "open_s", "{:.2f}"),
        ("open MB", "open_mb", "{:.2f}"),
        ("points s", "points_s", "{:.2f}"),
        ("lasso s", "lasso_s", "{:.2f}"),
        ("selected", "lasso_selected", "{:,}"),
        ("heap MB", "heap_mb", "{:.0f}"),
        ("points MB", "points_file_mb", "{:.1f}"),
    ]
    log.info(" | ".join(f"{c[0]:>10}" for c in cols))
    for r in rows:
        log.info(" | ".join(f"{c[2].format(r[c[1]]):>10}" for c in cols))
    log.info(
        " | ".join(
            f"{'goal':>10}" if i == 0 else f"{GOALS.get(c[1], ''):>10}" for i, c in enumerate(cols)
        )
    )


if __name__ == "__main__":
    main()
