"""The viewer in a real browser: Debian's headless chromium, driven by Playwright (which is told
where that chromium is and never downloads one), against two small real runs built here (the toy
model, two levels, aligned layouts), opened from disk and over ``atlas serve``.

Class names and a file name carry ``<img src=x onerror=...>`` and ``</script>`` payloads; every
test also checks that the page logged no console error and ran none of them.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from PIL import Image

from pipelines.commands import run as runner
from pipelines.commands.run import run
from tests.conftest import debug_settings, make_images

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
playwright = pytest.importorskip("playwright.sync_api")
pytestmark = [
    pytest.mark.ray,
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed"),
]
EVIL_FILE = "<img src=x onerror=window.__pwned=1>.png"
EVIL_CLASS = "</script><img src=x onerror=window.__pwned=2> class"
LAYER = "blocks.2"


def _names(n: int) -> list[str]:
    return [f"{EVIL_CLASS} {i}" if i % 3 == 0 else f"kind {i}" for i in range(n)]


_MODEL_CARD = runner.model_card


def _hostile_card(s):
    """The run's model card with payloads in its class names."""
    card = _MODEL_CARD(s)
    return dataclasses.replace(card, class_names=tuple(_names(card.num_classes)))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, local_ray):
    """Runs a and b (the toy model with two weightings) over the same images, with one aligned
    layout; b's viewer links a side-by-side page."""
    from safetensors.torch import save_file

    from atlas_core.models.tiny import TinyNet

    base = tmp_path_factory.mktemp("viewer")
    make_images(base / "imgs", 36, size=80)
    Image.fromarray(np.full((80, 80, 3), 90, np.uint8)).save(base / "imgs" / EVIL_FILE)
    weights = base / "b.safetensors"
    save_file(TinyNet(seed=1).state_dict(), str(weights))
    common = (
        "data=folder",
        f"data.path={base / 'imgs'}",
        "grid.sizes=[4,8]",
        "extract.samples_per_image=2",
        "exemplars.k=4",
    )
    extra = {"a": (), "b": (f"model.weights={weights}",)}
    for name in ("a", "b"):
        s, _ = debug_settings(*common, *extra[name], f"run_dir={base / name}", "stages=[extract]")
        run(s, {})
    for name in ("a", "b"):
        other = base / ("b" if name == "a" else "a")
        align = f"reduce.align_with=[{{run_dir:'{other}',layer:{LAYER}}}]"
        s, _ = debug_settings(*common, *extra[name], f"run_dir={base / name}", align)
        with pytest.MonkeyPatch.context() as mp:  # the card the viewer data is written from
            mp.setattr(runner, "model_card", _hostile_card)
            run(s, {})
    return base


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


class Page:
    """A page of the viewer and every console error it logged."""

    def __init__(self, browser, url: str, size: tuple[int, int] = (1100, 760)) -> None:
        self.errors: list[str] = []
        self.page = browser.new_page(viewport={"width": size[0], "height": size[1]})
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else 0)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.goto(url)

    def goto(self, url: str) -> None:
        self.page.goto(url)
        self.page.wait_for_selector("body[data-ready='1']")
        self.settle()

    def settle(self) -> None:
        self.page.wait_for_load_state("load")
        self.page.wait_for_function(  # every tile of the view drawn, every data file in
            "() => { const t = [...document.querySelectorAll('.leaflet-tile')];"
            " return t.length > 0 && t.every(x => x.classList.contains('leaflet-tile-loaded')"
            " && x.complete) && document.body.dataset.busy === '0'; }"
        )
        self.page.wait_for_timeout(300)

    def drawn(self, kind: str, pane: int = 0) -> list:
        """What the map's canvas overlay drew last: hits [[ix, iy]] or heat [[ix, iy, op]]."""
        return self.page.evaluate(f"window.ATLAS_VIEW.panes[{pane}].{kind}")

    def text(self, sel: str) -> str:
        return self.page.inner_text(sel)

    def point(self, x: float, y: float, zoom: int, pane: int = 0) -> tuple[float, float]:
        """Screen position of layout point (x, y) when the view is centred on (0.5, 0.5)."""
        box = self.page.query_selector_all(".map")[pane].bounding_box()
        assert box is not None
        w = 256 * 2**zoom
        return box["x"] + box["width"] / 2 + (x - 0.5) * w, box["y"] + box["height"] / 2 - (
            y - 0.5
        ) * w

    def clean(self) -> None:
        assert self.errors == []
        assert self.page.evaluate("window.__pwned") is None
        assert self.page.query_selector("img[src='x']") is None
        self.page.close()


def _level(run_dir: Path, size: int) -> dict[str, np.ndarray]:
    g = zarr.open_group(str(run_dir / "atlas.zarr"), mode="r")[f"layers/{LAYER}/grid/{size}"]
    return {n: g[n][:] for n in ("cell", "count", "top_class", "top_count", "exemplar_row")}


def _map_pixels(p: Page) -> np.ndarray:
    import io

    shot = p.page.query_selector(".map").screenshot()
    return np.asarray(Image.open(io.BytesIO(shot)).convert("RGB")).astype(int)


def test_both_levels_draw_icons_from_disk_with_no_console_error(runs, browser) -> None:
    p = Page(browser, (runs / "a" / "viewer" / "index.html").as_uri() + "#z=0")
    assert p.text("#level").startswith("Level 1 of 2: 4 \u00d7 4")
    first = _map_pixels(p)
    p.goto((runs / "a" / "viewer" / "index.html").as_uri() + "#z=1&x=0.5&y=0.5")
    assert p.text("#level").startswith("Level 2 of 2: 8 \u00d7 8")
    last = _map_pixels(p)
    for shot in (first, last):  # icons: many pixels far from the white background
        assert (np.abs(shot - 255).sum(-1) > 90).mean() > 0.02
    assert np.abs(first - last).mean() > 5
    srcs = p.page.eval_on_selector_all(".leaflet-tile", "ts => ts.map(t => t.src)")
    assert srcs and all("/tiles/8/1/" in s for s in srcs)
    p.clean()


def test_hovering_a_cell_shows_its_count_and_top_class(runs, browser) -> None:
    lv = _level(runs / "a", 4)
    i = int(np.argmax(lv["count"]))
    (ix, iy), n = lv["cell"][i], int(lv["count"][i])
    top = _names(10)[int(lv["top_class"][i, 0])]
    p = Page(browser, (runs / "a" / "viewer" / "index.html").as_uri() + "#z=0&x=0.5&y=0.5")
    p.page.mouse.move(*p.point((ix + 0.5) / 4, (iy + 0.5) / 4, 0))
    card = p.text("#card")
    assert f"Cell ({ix}, {iy}) of 4 \u00d7 4" in card and f"{n} activations" in card
    assert f"{top} \u2014 {int(lv['top_count'][i, 0])}" in card  # the payload, as text
    p.clean()


def test_zooming_in_changes_the_level(runs, browser) -> None:
    p = Page(browser, (runs / "a" / "viewer" / "index.html").as_uri() + "#z=0")
    assert "Level 1 of 2" in p.text("#level")
    box = p.page.query_selector(".map").bounding_box()
    p.page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    p.page.mouse.wheel(0, -400)
    p.page.wait_for_function(
        "() => document.getElementById('level').textContent.includes('2 of 2')"
    )
    p.settle()
    assert "l=8" in p.page.evaluate("location.hash")
    p.page.click("#levels button[data-size='4']")
    p.page.wait_for_function(
        "() => document.getElementById('level').textContent.includes('1 of 2')"
    )
    p.clean()


def test_search_highlights_the_cells_that_hold_a_class(runs, browser) -> None:
    lv = _level(runs / "a", 8)
    names = _names(10)
    cls = int(lv["top_class"][int(np.argmax(lv["count"])), 0])
    want = int((lv["top_class"] == cls).any(axis=1).sum())
    p = Page(browser, (runs / "a" / "viewer" / "index.html").as_uri() + "#z=1")
    p.page.fill("#search", names[cls])
    p.page.wait_for_function("() => document.getElementById('found').textContent !== ''")
    assert p.text("#found").startswith(f"{want} cells at 8 \u00d7 8")
    p.settle()
    cells = {tuple(c) for c in lv["cell"][(lv["top_class"] == cls).any(axis=1)].tolist()}
    assert {tuple(c) for c in p.drawn("hits")} == cells  # zoom 1: the whole level in view
    q = p.page.evaluate("new URLSearchParams(location.hash.slice(1)).get('q')")
    assert q == names[cls]  # the search is part of the shared view
    p.page.fill("#search", "")
    p.page.wait_for_function("() => document.getElementById('found').textContent === ''")
    p.settle()
    assert p.drawn("hits") == []
    p.clean()


def test_payloads_in_names_are_shown_as_text_and_run_nothing(runs, browser) -> None:
    """The cell whose exemplar is the evil-named file: its card and the source view."""
    g = zarr.open_group(str(runs / "a" / "atlas.zarr"), mode="r")
    uris = g["images/uri"][:]
    evil = int(np.flatnonzero([u.endswith(EVIL_FILE) for u in uris])[0])
    lv = _level(runs / "a", 4)
    rows = lv["exemplar_row"]
    hit = np.argwhere((rows >= 0) & (rows // 2 == evil))
    assert len(hit), "the evil file is an exemplar of some cell"
    i = int(hit[0][0])
    ix, iy = lv["cell"][i]
    p = Page(browser, (runs / "a" / "viewer" / "index.html").as_uri() + f"#l=4&c={ix},{iy}")
    assert f"Cell ({ix}, {iy})" in p.text("#card")
    p.page.wait_for_selector("#card .exemplar")
    buttons = p.page.query_selector_all("#card .exemplar")
    target = [b for b in buttons if b.get_attribute("title") == EVIL_FILE]
    assert target and len(buttons) == int((rows[i] >= 0).sum())
    target[0].click()
    p.page.wait_for_selector("#source:not([hidden])")
    assert p.text("#source-name") == EVIL_FILE
    p.page.wait_for_function("() => document.getElementById('source-img').complete")
    mark = p.page.query_selector("#source-mark").bounding_box()
    frame = p.page.query_selector("#source-img").bounding_box()
    assert mark["width"] > 2 and frame["x"] - 4 <= mark["x"] <= frame["x"] + frame["width"]
    p.page.keyboard.press("Escape")
    assert p.page.is_hidden("#source")
    assert EVIL_CLASS in p.page.inner_text("body")  # class names are text, not markup
    p.clean()


def test_the_url_hash_restores_level_centre_zoom_and_cell(runs, browser) -> None:
    lv = _level(runs / "a", 8)
    ix, iy = (int(v) for v in lv["cell"][0])
    url = (runs / "a" / "viewer" / "index.html").as_uri()
    p = Page(browser, url + f"#l=8&z=2&x=0.3000&y=0.6000&c={ix},{iy}")
    first = (p.text("#level"), p.text("#card"), p.page.evaluate("location.hash"))
    p.page.reload()
    p.page.wait_for_selector("body[data-ready='1']")
    assert (p.text("#level"), p.text("#card"), p.page.evaluate("location.hash")) == first
    assert "zoom 2" in first[0] and f"Cell ({ix}, {iy}) of 8" in first[1]
    assert "x=0.3000" in first[2] and "y=0.6000" in first[2]
    p.clean()


def test_labels_never_overlap_and_all_show_at_the_deepest_zoom(runs, browser) -> None:
    url = (runs / "a" / "viewer" / "index.html").as_uri()
    p = Page(browser, url + "#z=0")
    deepest = int(p.page.evaluate("document.body.dataset.maxZoom"))
    strides, shown = [], []
    for z in range(deepest + 1):
        p.goto(url + f"#z={z}&x=0.5&y=0.5")
        boxes = p.page.eval_on_selector_all(
            ".atlas-label", "ls => ls.map(l => l.getBoundingClientRect().toJSON())"
        )
        for a in range(len(boxes)):
            for b in range(a + 1, len(boxes)):
                A, B = boxes[a], boxes[b]
                apart = (
                    A["right"] <= B["left"] + 0.5
                    or B["right"] <= A["left"] + 0.5
                    or A["bottom"] <= B["top"] + 0.5
                    or B["bottom"] <= A["top"] + 0.5
                )
                assert apart, (z, A, B)
        strides.append(int(p.page.evaluate("document.body.dataset.labelStride")))
        shown.append(len(boxes))
    assert shown[0] > 0 and strides == sorted(strides, reverse=True)
    assert strides[-1] == 1 and strides[0] > 1  # all cells labelled at the deepest zoom only
    p.clean()


def test_the_keyboard_reaches_the_map_and_shows_the_centre_cell(runs, browser) -> None:
    ix, iy = _central(_level(runs / "a", 8)["cell"].tolist(), 8)
    x, y = (ix + 0.5) / 8, (iy + 0.5) / 8
    url = (runs / "a" / "viewer" / "index.html").as_uri()
    p = Page(browser, url, size=(560, 520))
    z = int(p.page.evaluate("document.body.dataset.maxZoom"))
    p.goto(url + f"#z={z}&x={x}&y={y}")  # the deepest zoom: the map is larger than the page
    assert p.page.evaluate("location.hash").startswith(f"#l=8&z={z}&x={x:.4f}&y={y:.4f}")
    for _ in range(12):
        p.page.keyboard.press("Tab")
        if p.page.evaluate("document.activeElement.classList.contains('leaflet-container')"):
            break
    else:
        pytest.fail("Tab never reached the map")
    p.page.keyboard.press("Enter")
    assert f"Cell ({ix}, {iy}) of 8" in p.text("#card")
    assert f"c={ix}%2C{iy}" in p.page.evaluate("location.hash")
    p.page.keyboard.press("Minus")  # - zooms out, from the keyboard
    p.page.wait_for_function(
        f"() => document.getElementById('level').textContent.includes('zoom {z - 1}')"
    )
    p.clean()


def test_aligned_runs_open_side_by_side_with_linked_views(runs, browser) -> None:
    page = runs / "b" / "viewer" / "compare-0.html"
    assert page.is_file()
    index = (runs / "b" / "viewer" / "index.html").as_uri()
    p = Page(browser, index)
    assert p.page.query_selector("#links a").get_attribute("href") == "compare-0.html"
    p.page.close()
    p = Page(browser, page.as_uri() + "#z=0")
    maps = p.page.query_selector_all(".map")
    assert len(maps) == 2
    p.page.click("#levels button[data-size='8']")
    p.page.wait_for_function(
        "() => document.getElementById('level').textContent.includes('2 of 2')"
    )
    p.settle()
    for pane in p.page.query_selector_all(".pane"):
        srcs = pane.eval_on_selector_all(".leaflet-tile", "ts => ts.map(t => t.src)")
        assert srcs and all("/tiles/8/1/" in s for s in srcs)
    a = json.loads(_data(runs / "a"))
    b = json.loads(_data(runs / "b"))
    assert a["levels"][0]["cells"] > 0 and b["levels"][0]["cells"] > 0
    la, lb = _level(runs / "a", 8), _level(runs / "b", 8)
    both = {tuple(c) for c in la["cell"].tolist()} & {tuple(c) for c in lb["cell"].tolist()}
    ix, iy = _central(sorted(both), 8)
    p.page.mouse.move(*p.point((ix + 0.5) / 8, (iy + 0.5) / 8, 1, pane=0))
    sections = p.page.query_selector_all("#card section.cell")
    assert len(sections) == 2
    assert all(f"Cell ({ix}, {iy}) of 8" in s.inner_text() for s in sections)
    p.clean()


def _central(cells: list, size: int) -> tuple[int, int]:
    """The cell nearest the map's centre (where any viewport can show it)."""
    ix, iy = min(cells, key=lambda c: (c[0] + 0.5 - size / 2) ** 2 + (c[1] + 0.5 - size / 2) ** 2)
    return int(ix), int(iy)


def _data(run_dir: Path) -> str:
    text = (run_dir / "viewer" / "data" / "atlas.js").read_text()
    return text[text.index("run: ") + 5 : text.rindex("});")]


def test_atlas_serve_gives_the_same_page_over_loopback(runs, browser) -> None:
    from pipelines.commands.serve import serve_in_thread

    url, server = serve_in_thread(str(runs / "a"))
    try:
        assert url.startswith("http://127.0.0.1:")
        p = Page(browser, url + "#z=1")
        assert "Level 2 of 2" in p.text("#level") and p.page.query_selector(".leaflet-tile")
        p.clean()
    finally:
        server.shutdown()  # type: ignore[attr-defined]
