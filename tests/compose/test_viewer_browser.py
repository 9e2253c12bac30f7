"""The viewer in a real headless browser (Debian's chromium): the page runs from disk, with no
server, fills in its title, and shows a cell's count and top classes (via the #cell= link)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from atlas_core.compose import compose_canvas, viewer_html

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--allow-file-access-from-files",
]


def _page(tmp_path: Path) -> Path:
    cells = np.array([[0, 0], [1, 1]])
    icons = np.stack([np.full((8, 8, 3), 40, np.uint8), np.full((8, 8, 3), 200, np.uint8)])
    Image.fromarray(compose_canvas(cells, icons, 2)).save(tmp_path / "atlas.png")
    html = viewer_html(
        image_src="../atlas.png",
        size=2,
        title="tiny <layer>",
        meta="2 cells",
        cells=[
            {"ix": 0, "iy": 0, "count": 12, "top": [["Egyptian cat", 7], ["<b>tabby</b>", 5]]},
            {"ix": 1, "iy": 1, "count": 3, "top": [["espresso", 3]]},
        ],
    )
    (tmp_path / "viewer").mkdir()
    (tmp_path / "viewer" / "index.html").write_text(html)
    return tmp_path / "viewer" / "index.html"


def _dom(url: str, tmp_path: Path) -> str:
    out = subprocess.run(
        [
            CHROMIUM,
            *FLAGS,
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=3000",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return out.stdout


def test_viewer_shows_a_cells_details_from_disk(tmp_path: Path) -> None:
    page = _page(tmp_path)
    dom = _dom(page.as_uri() + "#cell=0,0", tmp_path)
    assert "tiny &lt;layer&gt;" in dom  # the title was set by the script, as text
    assert "cell (0, 0): 12 activations" in dom
    assert "Egyptian cat (7)" in dom and "&lt;b&gt;tabby&lt;/b&gt; (5)" in dom
    assert "<b>tabby</b>" not in dom  # a class name is never markup
    # the highlight covers cell (0, 0): the bottom-left quarter of a 2 x 2 atlas
    assert (
        '<div id="hl" style="left: 0%; top: 50%; height: 50%; width: 50%; display: block;">' in dom
    )
    other = _dom(page.as_uri() + "#cell=1,1", tmp_path)
    assert "cell (1, 1): 3 activations" in other and "espresso (3)" in other


def test_screenshot_is_the_atlas(tmp_path: Path) -> None:
    page = _page(tmp_path)
    shot = tmp_path / "shot.png"
    subprocess.run(
        [
            CHROMIUM,
            *FLAGS,
            f"--user-data-dir={tmp_path / 'p2'}",
            f"--screenshot={shot}",
            "--window-size=600,600",
            page.as_uri() + "#cell=0,0",
        ],
        capture_output=True,
        timeout=120,
        check=False,
    )
    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    # both icon colours are on screen, so the atlas image loaded from ../atlas.png
    assert (np.abs(img - 40).sum(-1) == 0).sum() > 100
    assert (np.abs(img - 200).sum(-1) == 0).sum() > 100
