from __future__ import annotations

import json
import re

import numpy as np

from atlas_core.compose import compose_canvas, viewer_html


def test_each_icon_lands_at_its_cell_with_y_up() -> None:
    cells = np.array([[0, 0], [2, 1], [1, 2]])
    icons = np.stack([np.full((4, 4, 3), v, np.uint8) for v in (10, 20, 30)])
    canvas = compose_canvas(cells, icons, 3, present=np.array([True, True, False]))
    assert canvas.shape == (12, 12, 3)
    assert (canvas[8:12, 0:4] == 10).all()  # (0, 0): bottom-left
    assert (canvas[4:8, 8:12] == 20).all()  # (2, 1): middle row, right
    assert (canvas[0:4, 4:8] == 255).all()  # (1, 2) not present: background
    assert (canvas == 255).sum() == 12 * 12 * 3 - 2 * 16 * 3


def test_viewer_escapes_every_string() -> None:
    evil = '</script><img src=x onerror=alert(1)>&"'
    page = viewer_html(
        image_src='../atlas.png" onload="x',
        size=2,
        title=evil,
        meta=evil,
        cells=[{"ix": 0, "iy": 1, "count": 7, "top": [[evil, 3]]}],
    )
    assert "<img src=x" not in page and "</script><img" not in page
    assert 'onload="x' not in page
    blob = re.search(r'<script type="application/json" id="data">(.*?)</script>', page, re.S)
    assert blob is not None
    data = json.loads(blob.group(1))
    assert data["cells"][0]["top"][0][0] == evil and data["size"] == 2
