"""The explorer in a real browser (Debian's headless chromium through Playwright, never a
downloaded one) on a small real run with labels (the toy model over images in three labelled
folders), opened from disk: every count the page shows equals a brute-force computation over the
store. Class names and a file name carry markup payloads; no test may see a console error or a
payload run."""

from __future__ import annotations

import csv
import io
import shutil

import numpy as np
import pytest
import zarr
from PIL import Image

import pipelines.commands.run as run_module
from pipelines.commands.run import run
from pipelines.core.common import cached_model
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
SIZES = (4, 8)


def _names(n: int) -> list[str]:
    return [f"{EVIL_CLASS} {i}" if i % 3 == 0 else f"kind {i}" for i in range(n)]


@pytest.fixture(scope="module")
def labelled(tmp_path_factory, local_ray):
    """A run of the toy model over 3 folders of images, labelled by folder (data.labels)."""
    base = tmp_path_factory.mktemp("explorer")
    make_images(base / "imgs", 45, size=72)
    Image.fromarray(np.full((72, 72, 3), 90, np.uint8)).save(base / "imgs" / "sub1" / EVIL_FILE)
    s, _ = debug_settings(
        "data=folder",
        f"data.path={base / 'imgs'}",
        "data.labels=folder",
        "grid.sizes=[4,8]",
        "grid.min_count=1",
        "extract.samples_per_image=2",
        "exemplars.k=4",
        f"run_dir={base / 'run'}",
    )
    model = cached_model(s.model.spec, "cpu", role="card")  # the driver's card names classes
    saved, model.class_names = model.class_names, _names(model.num_classes)
    cards = run_module._CARDS  # the process keeps each card: an earlier test's has other names
    kept = dict(cards)
    cards.clear()
    try:
        run(s, {})
    finally:
        model.class_names = saved
        cards.clear()
        cards.update(kept)
    return base / "run"


class Store:
    """What the brute-force counts read: one row per sample that has a layout."""

    def __init__(self, run_dir) -> None:
        g = zarr.open_group(str(run_dir / "atlas.zarr"), mode="r")
        xy = g[f"layers/{LAYER}/layout"][:]
        self.rows = np.flatnonzero(~np.isnan(xy).any(axis=1))
        self.x, self.y = xy[self.rows, 0], xy[self.rows, 1]
        k = int(g.attrs["k"])
        image = self.rows // k
        self.image = image
        self.pred = g["images/top_class"][:][image, 0]
        self.prob = g["images/top_prob"][:][image, 0].astype(np.float64)
        self.label = g["images/label"][:][image]
        self.label_names = list(g["images/label"].attrs["names"])  # the folders' names
        self.uri = g["images/uri"][:][image]
        self.pos = g["samples/pos"][:][self.rows]
        self.levels = {s: g[f"layers/{LAYER}/grid/{s}/cell"][:] for s in SIZES}

    def cell(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        """(ix, iy) of every sample at a level, as the grid stage bins them."""
        ij = np.minimum(np.floor(np.stack([self.x, self.y], 1) * size), size - 1).astype(int)
        return ij[:, 0], ij[:, 1]

    def inside(self, poly: list[tuple[float, float]]) -> np.ndarray:
        """Even-odd point in polygon, in float64, as the page computes it."""
        x, y = self.x.astype(np.float64), self.y.astype(np.float64)
        odd = np.zeros(len(x), bool)
        for p in range(len(poly)):
            (xi, yi), (xj, yj) = poly[p], poly[p - 1]
            with np.errstate(divide="ignore", invalid="ignore"):
                cross = ((yi > y) != (yj > y)) & (x < (xj - xi) * (y - yi) / (yj - yi) + xi)
            odd ^= cross
        return odd


class Page:
    def __init__(self, browser, url: str) -> None:
        self.errors: list[str] = []
        self.page = browser.new_page(viewport={"width": 1300, "height": 900}, accept_downloads=True)
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else 0)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.goto(url)

    def goto(self, url: str) -> None:
        self.page.goto(url)
        self.page.wait_for_selector("body[data-ready='1']")
        self.settle()

    def settle(self) -> None:
        self.page.wait_for_function("() => document.body.dataset.busy === '0'")
        self.page.wait_for_timeout(200)

    def explore(self) -> dict:
        return self.page.evaluate("window.ATLAS_VIEW.explore")

    def n(self, sel: str) -> int:
        return int(self.page.get_attribute(sel, "data-n") or -1)

    def screen(self, x: float, y: float) -> tuple[float, float]:
        """Screen position of layout point (x, y), from the map's own projection."""
        box = self.page.query_selector(".map").bounding_box()
        p = self.page.evaluate(
            f"window.ATLAS_MAP.latLngToContainerPoint([({y} - 1) * 256, {x} * 256])"
        )
        return box["x"] + p["x"], box["y"] + p["y"]

    def hash(self, key: str) -> str | None:
        return self.page.evaluate(f"new URLSearchParams(location.hash.slice(1)).get('{key}')")

    def clean(self) -> None:
        assert self.errors == []
        assert self.page.evaluate("window.__pwned") is None
        assert self.page.query_selector("img[src='x']") is None
        self.page.close()


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


def _url(run_dir) -> str:
    return (run_dir / "viewer" / "index.html").as_uri()


def test_every_sample_is_drawn_as_a_point(labelled, browser) -> None:
    st = Store(labelled)
    p = Page(browser, _url(labelled) + "#z=1&x=0.5&y=0.5")
    assert p.explore()["loaded"] is False  # points load when they are shown, not to open
    p.page.check("#pts")
    p.page.wait_for_function("() => document.body.dataset.pointsDrawn !== undefined")
    p.settle()
    assert p.explore()["drawn"] == len(st.rows) == p.n("#pcount")
    assert p.page.inner_text("#pcount").startswith(f"{len(st.rows)} of {len(st.rows)} samples")
    assert p.hash("p") == "1"
    shot = np.asarray(Image.open(io.BytesIO(p.page.query_selector(".map").screenshot())))
    p.page.uncheck("#pts")
    p.settle()
    bare = np.asarray(Image.open(io.BytesIO(p.page.query_selector(".map").screenshot())))
    assert (np.abs(shot.astype(int) - bare).sum(-1) > 30).sum() > len(st.rows)  # pixels changed
    p.clean()


def test_filters_change_every_count_to_the_brute_force_one(labelled, browser) -> None:
    st = Store(labelled)
    names = _names(10)
    p = Page(browser, _url(labelled) + "#z=1&x=0.5&y=0.5&p=1")
    p.page.select_option("#f-correct", "wrong")
    p.settle()
    wrong = (st.label >= 0) & (st.pred != st.label)
    assert p.n("#pcount") == int(wrong.sum()) == p.explore()["drawn"]
    cls = int(np.bincount(st.pred[wrong]).argmax())
    p.page.fill("#f-pred", names[cls])
    p.page.dispatch_event("#f-pred", "change")
    p.settle()
    assert p.n("#pcount") == int((wrong & (st.pred == cls)).sum())
    assert p.hash("fp") == names[cls] and p.hash("fc") == "wrong"
    p.page.click("#f-reset")
    p.page.fill("#f-lo", "0.15")
    p.page.dispatch_event("#f-lo", "change")
    p.page.fill("#f-hi", "0.5")
    p.page.dispatch_event("#f-hi", "change")
    p.settle()
    assert p.n("#pcount") == int(((st.prob >= 0.15) & (st.prob <= 0.5)).sum())
    keep = (st.prob >= 0.15) & (st.prob <= 0.5) & wrong  # confusions among the passing samples
    pairs, counts = np.unique(
        np.stack([st.label[keep], st.pred[keep]], 1), axis=0, return_counts=True
    )
    want = sorted(
        zip(pairs[:, 0].tolist(), pairs[:, 1].tolist(), counts.tolist(), strict=True),
        key=lambda t: (-t[2], t[0], t[1]),
    )[:15]
    assert [tuple(c) for c in p.explore()["confusions"]] == want
    p.page.click("#f-reset")
    p.settle()
    first = p.page.query_selector("#confusions button")
    label, pred, n = p.explore()["confusions"][0]
    assert first.inner_text().endswith(f": {n}")
    first.click()  # selects that confusion's samples: the filters label = l, predicted = p
    p.settle()
    assert p.n("#pcount") == n == int(((st.label == label) & (st.pred == pred)).sum())
    assert p.hash("fl") == st.label_names[label] and p.hash("fp") == names[pred]
    p.clean()


def _lasso(p: Page, poly: list[tuple[float, float]]) -> None:
    p.page.click("#sel-lasso")
    p.page.mouse.move(*p.screen(*poly[0]))
    p.page.mouse.down()
    for x, y in [*poly[1:], poly[0]]:
        p.page.mouse.move(*p.screen(x, y), steps=4)
    p.page.mouse.up()
    p.settle()


def test_a_lasso_drawn_with_the_mouse_selects_and_exports_the_samples_inside(
    labelled, browser
) -> None:
    st = Store(labelled)
    p = Page(browser, _url(labelled) + "#z=1&x=0.5&y=0.5&p=1")
    _lasso(p, [(0.15, 0.2), (0.8, 0.15), (0.9, 0.7), (0.5, 0.9), (0.2, 0.6)])
    poly = [tuple(float(v) for v in pt.split(",")) for pt in p.hash("sel").split(" ")]
    assert len(poly) > 10  # the mouse's path, not the five corners
    inside = st.inside(poly)
    assert 0 < inside.sum() < len(st.rows)
    assert p.n("#sel-count") == int(inside.sum()) == p.explore()["selected"]
    with p.page.expect_download() as dl:
        p.page.click("#export")
    table = list(csv.DictReader(io.StringIO(open(dl.value.path()).read())))
    assert [int(r["row"]) for r in table] == st.rows[inside].tolist()
    names = _names(10)
    for r, i in zip(table, np.flatnonzero(inside), strict=True):
        assert r["uri"] == st.uri[i] and float(r["x"]) == float(st.x[i])
        assert (int(r["pos_y"]), int(r["pos_x"])) == tuple(st.pos[i])
        for s in SIZES:
            ix, iy = st.cell(s)
            assert (int(r[f"cell{s}_ix"]), int(r[f"cell{s}_iy"])) == (ix[i], iy[i])
        assert r["pred1"] == names[st.pred[i]] and float(r["prob1"]) == st.prob[i]
        assert r["label"] == st.label_names[st.label[i]]
    # the panel: histograms of the selection, and patches of its exemplars
    assert "predicted class of the selection" in p.page.inner_text("#hists")
    assert EVIL_CLASS in p.page.inner_text("#explore")  # names are text, not markup
    p.clean()


def test_the_url_hash_restores_filters_and_the_polygon(labelled, browser) -> None:
    st = Store(labelled)
    p = Page(browser, _url(labelled) + "#z=1&x=0.5&y=0.5&p=1")
    p.page.select_option("#f-correct", "correct")
    p.settle()
    p.page.click("#sel-box")
    a, b = p.screen(0.1, 0.9), p.screen(0.7, 0.3)
    p.page.mouse.move(*a)
    p.page.mouse.down()
    p.page.mouse.move(*b, steps=5)
    p.page.mouse.up()
    p.settle()
    poly = [tuple(float(v) for v in pt.split(",")) for pt in p.hash("sel").split(" ")]
    assert len(poly) == 4
    correct = (st.label >= 0) & (st.pred == st.label)
    want = int((st.inside(poly) & correct).sum())
    before = (p.n("#sel-count"), p.n("#pcount"), p.page.evaluate("location.hash"))
    assert before[:2] == (want, int(correct.sum()))
    url = _url(labelled) + before[2]
    p.page.close()
    q = Page(browser, url)
    assert (q.n("#sel-count"), q.n("#pcount"), q.page.evaluate("location.hash")) == before
    assert q.page.input_value("#f-correct") == "correct" and q.page.is_checked("#pts")
    q.clean()


def test_the_error_rate_per_cell_is_the_brute_force_one(labelled, browser) -> None:
    st = Store(labelled)
    for size, z in ((4, 0), (8, 1)):
        p = Page(browser, _url(labelled) + f"#l={size}&z={z}&x=0.5&y=0.5&e=1")
        ix, iy = st.cell(size)
        shown = {(a, b): (rate, n) for a, b, rate, n in p.explore()["errors"]}
        assert shown, "no error cell drawn"
        kept = {tuple(c) for c in st.levels[size].tolist()}
        assert set(shown) <= kept
        for (a, b), (rate, n) in shown.items():
            here = (ix == a) & (iy == b) & (st.label >= 0)
            assert n == int(here.sum())
            assert rate == float((st.pred[here] != st.label[here]).sum() / here.sum())
        p.clean()


def test_a_run_without_labels_has_points_and_filters_but_no_error_map(
    labelled, browser, tmp_path
) -> None:
    """The same run with ``images/label`` removed and compose run again."""
    from pipelines.stages import compose
    from tests.conftest import stage_run

    bare = tmp_path / "run"
    shutil.copytree(labelled, bare)
    del zarr.open_group(str(bare / "atlas.zarr"), mode="r+")["images/label"]
    s, _ = debug_settings(f"run_dir={bare}", "grid.sizes=[4,8]", "extract.samples_per_image=2")
    compose.run(stage_run(s, "compose"))
    (bare / "viewer" / "data" / "links.js").write_text("window.ATLAS_LINKS = [];\n")
    st = Store(labelled)
    p = Page(browser, _url(bare) + "#z=1&x=0.5&y=0.5&p=1&pc=correct&e=1")
    assert p.explore()["drawn"] == len(st.rows) == p.n("#pcount")
    assert p.page.is_disabled("#f-label") and p.page.is_disabled("#errors")
    assert "no labels" in p.page.inner_text("#errors-note")
    assert p.explore()["errors"] == [] and p.explore()["confusions"] == []
    cls = int(np.bincount(st.pred).argmax())
    p.page.fill("#f-pred", _names(10)[cls])  # the names the store's card recorded
    p.page.dispatch_event("#f-pred", "change")
    p.settle()
    assert p.n("#pcount") == int((st.pred == cls).sum())
    with p.page.expect_download() as dl:
        p.page.click("#export")  # no selection: the filter's samples
    table = list(csv.DictReader(io.StringIO(open(dl.value.path()).read())))
    assert [int(r["row"]) for r in table] == st.rows[st.pred == cls].tolist()
    assert "label" not in table[0]
    p.clean()
