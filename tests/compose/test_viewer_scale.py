"""The viewer at R3's deepest level: a 320 x 320 level with tens of thousands of kept cells
(a synthetic store, composed by the real compose stage), in headless chromium over ``atlas
serve``. It opens fetching a few hundred kB (the coarse level only), is interactive in seconds
with a small JS heap, and at the 320 level draws search matches for the viewport only, with the
search count, the card and the heap still right."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
import zarr

from benchmarks.common import synthetic_run
from benchmarks.viewer_probe import OPEN_JS
from tests.conftest import debug_settings

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
playwright = pytest.importorskip("playwright.sync_api")
pytestmark = [
    pytest.mark.ray,
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed"),
]
log = logging.getLogger(__name__)
LAYER = "blocks.2"


@pytest.fixture(scope="module")
def big(tmp_path_factory, local_ray):
    from pipelines.stages import compose
    from tests.conftest import stage_run

    run_dir = tmp_path_factory.mktemp("big") / "run"
    synthetic_run(run_dir, {20: 0.6, 320: 0.45}, 8)
    s, _ = debug_settings(f"run_dir={run_dir}", "grid.sizes=[20,320]", "render.icon_px=8")
    compose.run(stage_run(s, "compose"))
    (run_dir / "viewer" / "data" / "links.js").write_text("window.ATLAS_LINKS = [];\n")
    return run_dir


def test_a_320_level_opens_light_and_draws_only_the_viewport(big) -> None:
    from pipelines.commands.serve import serve_in_thread

    g = zarr.open_group(str(big / "atlas.zarr"), mode="r")[f"layers/{LAYER}/grid/320"]
    cells, top = g["cell"][:], g["top_class"][:]
    assert len(cells) > 40_000
    url, server = serve_in_thread(str(big))
    try:
        with playwright.sync_playwright() as p:
            b = p.chromium.launch(
                executable_path=CHROMIUM,
                args=["--no-sandbox", "--disable-gpu", "--enable-precise-memory-info"],
            )
            page = b.new_page(viewport={"width": 1200, "height": 800})
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else 0)
            page.goto(url + "#z=0")
            page.wait_for_selector("body[data-ready='1']", timeout=60_000)
            opened = {
                **page.evaluate(OPEN_JS),
                "seconds": page.evaluate("performance.now()") / 1000,
            }
            assert opened["bytes"] < 3_000_000 and opened["heap_mb"] < 60, opened
            assert opened["seconds"] < 20, opened  # interactive in seconds (3 s on a desktop)
            fetched = page.evaluate("performance.getEntriesByType('resource').map(r => r.name)")
            assert not any("level-320" in f for f in fetched)  # the deep level is not loaded yet
            # the 320 level, zoomed in on its centre; search the commonest top class
            page.evaluate("window.ATLAS_MAP.setView(window.ATLAS_MAP.getCenter(), 5)")
            page.wait_for_function(
                "() => document.getElementById('level').textContent.includes('320')", timeout=60_000
            )
            page.fill("#search", "class 3")
            page.wait_for_function(
                "() => document.getElementById('found').textContent !== ''"
                " && document.body.dataset.busy === '0'",
                timeout=60_000,
            )
            want = int((top == 3).any(axis=1).sum())
            assert page.inner_text("#found").startswith(f"{want} cells at 320")
            drawn = page.evaluate("window.ATLAS_VIEW.panes[0].hits")
            assert 0 < len(drawn) < want / 10  # only the cells in view are drawn
            bounds = page.evaluate("""() => { const b = window.ATLAS_MAP.getBounds().pad(0.1);
                return [b.getWest() / 256, b.getEast() / 256, b.getSouth() / 256 + 1,
                        b.getNorth() / 256 + 1]; }""")
            for ix, iy in drawn:
                assert bounds[0] - 1 / 320 <= ix / 320 <= bounds[1]
                assert bounds[2] - 1 / 320 <= iy / 320 <= bounds[3]
            ix, iy = min(drawn, key=lambda c: (c[0] - 160) ** 2 + (c[1] - 160) ** 2)  # in view
            box = page.query_selector(".map").bounding_box()
            pt = page.evaluate(
                f"window.ATLAS_MAP.latLngToContainerPoint("
                f"[({iy} + 0.5) / 320 * 256 - 256, ({ix} + 0.5) / 320 * 256])"
            )
            page.mouse.move(box["x"] + pt["x"], box["y"] + pt["y"])
            page.wait_for_function(
                "() => document.body.dataset.busy === '0' && !document"
                ".getElementById('card').textContent.includes('loading')"
            )
            card = page.inner_text("#card")
            after = page.evaluate(OPEN_JS)
            b.close()
    finally:
        server.shutdown()  # type: ignore[attr-defined]
    i = int(np.flatnonzero((cells[:, 0] == ix) & (cells[:, 1] == iy))[0])
    assert f"Cell ({ix}, {iy}) of 320 \u00d7 320" in card
    assert f"{int(g['count'][i])} activations" in card
    assert after["heap_mb"] < 150 and errors == [], (after, errors)
    log.info(
        "viewer with a 320 level (%d cells): opens fetching %.0f kB in %d requests, ready "
        "in %.2f s, heap %.1f MB; at the 320 level: %d of %d matches drawn (the viewport), "
        "%.0f kB fetched in all, heap %.1f MB",
        len(cells),
        opened["bytes"] / 1e3,
        opened["requests"],
        opened["seconds"],
        opened["heap_mb"],
        len(drawn),
        want,
        after["bytes"] / 1e3,
        after["heap_mb"],
    )
