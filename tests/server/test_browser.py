"""The page in a real browser (Debian's chromium, driven by Playwright) from a server with a
token: the login link sets the cookie and leaves the address bar without the token, the page
opens with every file it fetches answered 200 (scripts, styles, tiles, data), the cookie is
HttpOnly; a browser without the cookie gets 401. No console error: the header CSP and the
page's own agree."""

from __future__ import annotations

import shutil

import pytest

from pipelines.server.runner import start
from pipelines.server.settings import ServerSettings

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
playwright = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")
TOKEN = "browser-test-token-0123456789"


def test_the_page_opens_with_the_login_link(run_dir) -> None:
    running = start(ServerSettings(str(run_dir), port=0, token=TOKEN))
    try:
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"]
            )
            context = browser.new_context()
            page = context.new_page()
            seen: list[tuple[int, str]] = []
            errors: list[str] = []
            page.on("response", lambda r: seen.append((r.status, r.url)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else 0)
            page.goto(f"{running.url}/viewer/index.html?token={TOKEN}#z=0")
            page.wait_for_selector("body[data-ready='1']", timeout=30_000)
            page.wait_for_function(
                "() => [...document.querySelectorAll('.leaflet-tile')]"
                ".some(t => t.classList.contains('leaflet-tile-loaded'))"
            )
            assert TOKEN not in page.url  # the login redirect dropped it
            assert page.url.split("#")[0] == f"{running.url}/viewer/index.html"
            assert page.inner_text("#title") == "tiny blocks.2"
            fetched = [u for s, u in seen if s == 200]
            assert [(s, u) for s, u in seen if s not in (200, 303)] == []
            for part in ("data/atlas.js", "data/level-4.js", "viewer.js", "leaflet.css"):
                assert any(u.endswith(part) for u in fetched), part
            assert any("/tiles/4/0/0/0.jpg" in u for u in fetched)
            (cookie,) = context.cookies()
            assert (
                cookie["httpOnly"] and cookie["sameSite"] == "Lax" and TOKEN not in cookie["value"]
            )
            assert errors == []
            stranger = browser.new_context().new_page()
            assert stranger.goto(f"{running.url}/viewer/index.html").status == 401  # type: ignore[union-attr]
            browser.close()
    finally:
        running.shutdown()
