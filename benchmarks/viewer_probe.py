"""What a viewer page fetches to open and how soon it is interactive: headless chromium (Debian's,
driven by Playwright; never downloaded) over ``atlas serve``, so every resource has a size."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

OPEN_JS = """() => {
  const nav = performance.getEntriesByType('navigation')[0];
  const res = performance.getEntriesByType('resource');
  const bytes = res.reduce((s, r) => s + (r.encodedBodySize || 0), nav.encodedBodySize || 0);
  return {bytes: bytes, requests: res.length + 1,
          heap_mb: performance.memory ? performance.memory.usedJSHeapSize / 1048576 : null};
}"""


def probe(run_dir: Path, hash_: str = "", zoom_to: int | None = None) -> dict[str, Any] | None:
    """{bytes, requests, seconds (to data-ready with the first view's tiles drawn), heap_mb},
    and with ``zoom_to`` the same after zooming to that zoom; None without chromium."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        return None
    from playwright.sync_api import sync_playwright

    from pipelines.commands.serve import serve_in_thread

    url, server = serve_in_thread(str(run_dir))
    try:
        with sync_playwright() as p:
            b = p.chromium.launch(
                executable_path=chromium,
                args=["--no-sandbox", "--disable-gpu", "--enable-precise-memory-info"],
            )
            page = b.new_page(viewport={"width": 1200, "height": 800})
            page.goto(url + hash_)
            page.wait_for_selector("body[data-ready='1']", timeout=60_000)
            _tiles(page)
            ready = page.evaluate("performance.now()") / 1000
            out = {**page.evaluate(OPEN_JS), "seconds": round(ready, 3)}
            if zoom_to is not None:
                page.evaluate(f"window.ATLAS_MAP.setZoom({zoom_to})")
                page.wait_for_function(f"() => window.ATLAS_MAP.getZoom() === {zoom_to}")
                _tiles(page)
                out["after_zoom"] = page.evaluate(OPEN_JS)
            b.close()
    finally:
        server.shutdown()  # type: ignore[attr-defined]
    out["bytes"] = int(out["bytes"])
    return out


def _tiles(page: Any) -> None:
    page.wait_for_function(
        "() => { const t = [...document.querySelectorAll('.leaflet-tile')];"
        " return t.length > 0 && t.every(x => x.classList.contains('leaflet-tile-loaded')); }",
        timeout=60_000,
    )
    page.wait_for_timeout(200)
