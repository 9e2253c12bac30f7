"""Class activation atlases, a two-class comparison and failure-mode patches on a tiny real run
(the toy model, attribution for every class), checked against brute-force loops; then the class
pages and the heatmap in headless chromium."""

from __future__ import annotations

import json
import logging
import shutil
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import zarr
from PIL import Image

from atlas_core.classes import noise_patch, paste, resized
from atlas_core.data.decode import decode
from atlas_core.grid import cell_index
from pipelines.commands.run import run
from pipelines.core.common import cached_model
from tests.conftest import debug_settings, make_images

pytestmark = pytest.mark.ray
log = logging.getLogger(__name__)
L = "blocks.2"


@pytest.fixture(scope="module")
def views(tmp_path_factory, local_ray):
    base = tmp_path_factory.mktemp("classes")
    make_images(base / "imgs", 60, size=80)
    common = [
        "data=folder",
        f"data.path={base / 'imgs'}",
        f"run_dir={base / 'run'}",
        "extract.attr_classes=-1",
        "extract.samples_per_image=2",
        "grid.sizes=[4]",
    ]
    s, _ = debug_settings(*common, "stages=[extract]")
    run(s, {})
    g = zarr.open_group(str(base / "run" / "atlas.zarr"), mode="r")
    attr = g[f"layers/{L}/attr"][:].astype(np.float32)
    top_attr = Counter(np.nanargmax(np.where(np.isnan(attr), -np.inf, attr), axis=1).tolist())
    c = top_attr.most_common(1)[0][0]
    preds = Counter(g["images/top_class"][:, 0].tolist()).most_common(2)
    a, b = preds[0][0], preds[1][0]
    extra = [
        f"classes.atlases=[{c}]",
        f"classes.pairs=[[{a},{b}]]",
        "classes.grid=4",
        "classes.min_count=1",
        "patches.sizes=[16,24]",
        "patches.corners=[tl,br]",
        "patches.icons=2",
        "patches.batch_size=8",
    ]
    s, _ = debug_settings(*common, *extra)
    manifest = run(s, {})
    return {"s": s, "base": base, "manifest": manifest, "c": c, "a": a, "b": b, "attr": attr}


def _view(views, kind: str) -> tuple[str, dict]:
    """(slug, manifest record) of the run's view of this kind (class or compare)."""
    return next((k, v) for k, v in views["manifest"]["views"].items() if v["kind"] == kind)


def _group(views, slug: str):
    """The view's group of the run's store (a plain zarr reader reads it)."""
    return zarr.open_group(str(views["base"] / "run" / "atlas.zarr"), mode="r")[f"views/{slug}"]


def _layout(views, slug: str) -> np.ndarray:
    return _group(views, slug)[f"layers/{L}/layout"][:]


def test_a_class_atlas_keeps_exactly_the_rows_a_loop_keeps(views) -> None:
    attr, c = views["attr"], views["c"]
    want = set()
    scored = []
    for r in range(len(attr)):
        if np.isnan(attr[r]).any():
            continue
        if int(np.argmax(attr[r])) == c:
            want.add(r)
        if attr[r, c] > 0:
            scored.append((-float(attr[r, c]), r))
    want |= {r for _, r in sorted(scored)[:2000]}
    slug, view = _view(views, "class")
    layout = _layout(views, slug)
    assert sorted(np.flatnonzero(~np.isnan(layout).any(axis=1)).tolist()) == sorted(want)
    rows = view["stages"]["reduce"]["counts"]["rows"]
    assert rows == len(want) and layout[~np.isnan(layout)].min() >= 0
    page = views["base"] / "run" / "views" / slug / "viewer" / "index.html"
    assert page.is_file() and (page.parent / "tiles" / "4").is_dir()
    log.info(
        "class atlas of class %d: %d samples, cells %s",
        c,
        rows,
        view["stages"]["grid"]["counts"]["cells_kept"],
    )


def test_a_comparison_places_x_by_the_attribution_difference(views) -> None:
    attr, a, b = views["attr"], views["a"], views["b"]
    slug, _ = _view(views, "compare")
    layout = _layout(views, slug)
    rows = np.flatnonzero(~np.isnan(layout).any(axis=1))
    d = attr[rows, b].astype(np.float64) - attr[rows, a]
    scale = np.percentile(np.abs(d), 99)
    np.testing.assert_allclose(layout[rows, 0], (np.clip(d / scale, -1, 1) + 1) / 2, atol=1e-5)
    assert 0 <= layout[rows, 1].min() and layout[rows, 1].max() <= 1
    assert _group(views, slug)[f"layers/{L}/grid/4/heat_class"][:].tolist() == [a, b]


def test_the_heatmap_is_each_cells_mean_attribution(views) -> None:
    g = zarr.open_group(str(views["base"] / "run" / "atlas.zarr"), mode="r")
    lv = g[f"layers/{L}/grid/4"]
    heat, heat_class, kept = lv["heat"][:], lv["heat_class"][:], lv["cell"][:]
    cells = cell_index(g[f"layers/{L}/layout"][:], 4)
    attr = views["attr"]
    assert len(heat_class) > 0
    for i, (ix, iy) in enumerate(kept):
        rows = [r for r in np.flatnonzero(cells == iy * 4 + ix) if not np.isnan(attr[r]).any()]
        for j, c in enumerate(heat_class):
            assert heat[i, j] == pytest.approx(float(np.mean(attr[rows, c])), abs=1e-4)


def test_the_patch_report_counts_what_a_direct_loop_counts(views) -> None:
    s, a, b, base = views["s"], views["a"], views["b"], views["base"]
    slug, view = _view(views, "compare")
    report = view["stages"]["patches"]["details"]["report"]
    assert report["view"] == slug and "patches" not in views["manifest"]["stages"]
    stored = _group(views, slug)["patches"].attrs.asdict()
    assert stored["table"] == report["table"] and stored["images"] == report["images"]
    model = cached_model(s.model.spec, "cpu", role="test")
    g = zarr.open_group(str(base / "run" / "atlas.zarr"), mode="r")
    ok = (g["images/status"][:] == 1) & (g["images/top_class"][:, 0] == a)
    arrays = np.stack(
        [model.preprocess.to_array(decode(str(u)).image) for u in g["images/uri"][:][ok]]
    )

    def predict(x: np.ndarray) -> int:
        import torch

        with torch.no_grad():
            return int(model.module(model.preprocess.batch(x)).argmax(1)[0])

    arrays = arrays[[predict(arrays[i : i + 1]) == a for i in range(len(arrays))]]
    assert report["images"] == len(arrays) > 0
    vg = _group(views, slug)
    cells = [tuple(c) for c in vg[f"layers/{L}/grid/4/cell"][:].tolist()]
    icons = vg[f"layers/{L}/grid/4/icons"][:]
    patches = [icons[cells.index(tuple(p["cell"]))] for p in report["patches"]]
    seeds = {r["size"]: None for r in report["table"]}
    for r in report["table"]:
        side, corner = r["size"], r["corner"]
        seed = int(np.random.SeedSequence([s.seed, a, b, side]).generate_state(1)[0])
        seeds[side] = seed
        p = resized(patches[r["patch"]], side)
        flips = sum(
            predict(paste(arrays[i : i + 1], p, corner, 8)) == b for i in range(len(arrays))
        )
        control = sum(
            predict(paste(arrays[i : i + 1], noise_patch(side, seed), corner, 8)) == b
            for i in range(len(arrays))
        )
        assert (r["flips"], r["control_flips"]) == (flips, control)
    page = base / "run" / "views" / slug / "patches" / "index.html"
    assert page.is_file() and "<script" not in page.read_text()
    log.info(
        "patches %s -> %s: %d images, flip rate %.3f vs control %.3f (best %.3f vs %.3f)",
        report["a_name"],
        report["b_name"],
        report["images"],
        report["flip_rate"],
        report["control_rate"],
        report["best"]["flip_rate"],
        report["best"]["control_rate"],
    )


def _links(page_dir: Path) -> list[dict]:
    text = (page_dir / "data" / "links.js").read_text()
    return json.loads(text[text.index("=") + 1 :].strip().rstrip(";"))


def test_views_are_linked_and_a_rerun_resumes_them(views) -> None:
    base, s = views["base"], views["s"]
    hrefs = [x["href"] for x in _links(base / "run" / "viewer")]
    assert any(h.startswith("../views/atlas-") for h in hrefs)
    assert any(h.startswith("../views/compare-") and h.endswith("viewer/index.html") for h in hrefs)
    assert any(h.endswith("/patches/index.html") for h in hrefs)
    for h in hrefs:
        assert (base / "run" / "viewer" / h).resolve().is_file()
    slug = hrefs[0].split("/")[2]
    back = _links(base / "run" / "views" / slug / "viewer")
    assert (base / "run" / "views" / slug / "viewer" / back[0]["href"]).resolve() == (
        base / "run" / "viewer" / "index.html"
    )
    # a view interrupted in its compose stage: only that stage of that view runs again
    shutil.rmtree(base / "run" / "views" / slug / "viewer")
    (base / "run" / "markers" / "views" / slug / "stage-compose.json").unlink()
    again = run(s, {})
    ran = {(k, st): r["status"] for k, v in again["views"].items() for st, r in v["stages"].items()}
    ran |= {("", st): r["status"] for st, r in again["stages"].items()}
    done = sorted(k for k, status in ran.items() if status == "done")
    assert done == [(slug, "compose")], done
    assert (base / "run" / "views" / slug / "viewer" / "index.html").is_file()


def test_changing_a_compose_setting_reruns_compose_only(views, tmp_path) -> None:
    """compose.background of a finished run with a class view, a comparison and its patch
    report: every view's compose runs again, nothing else (not the views' layouts, icons or
    exemplars, nor the patch report's forward passes)."""
    base = tmp_path / "copy"
    shutil.copytree(views["base"] / "run", base)
    s = views["s"].with_(run_dir=str(base), compose=replace(views["s"].compose, background="black"))
    again = run(s, {})
    ran = {
        (k, st)
        for k, v in again["views"].items()
        for st, r in v["stages"].items()
        if r["status"] == "done"
    }
    ran |= {("", st) for st, r in again["stages"].items() if r["status"] == "done"}
    assert ran == {("", "compose"), *((k, "compose") for k in again["views"])}, ran
    tile = Image.open(next((base / "viewer" / "tiles").rglob("*.jpg")))
    assert min(tile.convert("L").getextrema()) < 20  # drawn on black now


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def page():
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"]
        )
        pg = browser.new_page(viewport={"width": 1100, "height": 760})
        errors: list[str] = []
        pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else 0)
        pg.on("pageerror", lambda e: errors.append(str(e)))
        yield pg, errors
        browser.close()


def _open(pg, url: str) -> None:
    pg.goto(url)
    pg.wait_for_selector("body[data-ready='1']")
    pg.wait_for_function(
        "() => { const t = [...document.querySelectorAll('.leaflet-tile')];"
        " return t.length > 0 && t.every(x => x.classList.contains('leaflet-tile-loaded'))"
        " && document.body.dataset.busy === '0'; }"
    )


def test_class_pages_and_the_heatmap_in_a_browser(views, page) -> None:
    pg, errors = page
    base = views["base"] / "run"
    atlas, _ = _view(views, "class")
    slug, compare = _view(views, "compare")
    _open(pg, (base / "views" / atlas / "viewer" / "index.html").as_uri())
    assert "Level 1 of 1: 4" in pg.inner_text("#level")
    cells = _group(views, slug)[f"layers/{L}/grid/4/cell"][:].tolist()
    ix, iy = cells[len(cells) // 2]
    _open(pg, (base / "views" / slug / "viewer" / "index.html").as_uri() + "#z=1")
    a_name, b_name = compare["names"]
    assert pg.inner_text(".axis .left").endswith(a_name)
    assert pg.inner_text(".axis .right").startswith(b_name)
    box = pg.query_selector(".map").bounding_box()  # zoom 1: the 512 px map, centred
    pg.mouse.move(
        box["x"] + box["width"] / 2 + ((ix + 0.5) / 4 - 0.5) * 512,
        box["y"] + box["height"] / 2 - ((iy + 0.5) / 4 - 0.5) * 512,
    )
    pg.wait_for_function(
        "() => document.body.dataset.busy === '0'"
        " && !document.getElementById('card').textContent.includes('loading')"
    )
    card = pg.inner_text("#card")  # a kept cell's card shows both attributions
    assert f"Cell ({ix}, {iy}) of 4" in card
    assert f"attribution to {a_name}" in card and f"attribution to {b_name}" in card
    # the main page: a class heatmap from the search, over the level's kept cells
    g = zarr.open_group(str(base / "atlas.zarr"), mode="r")[f"layers/{L}/grid/4"]
    heat, heat_class = g["heat"][:], g["heat_class"][:].tolist()
    c = heat_class[int(np.argmax(heat.max(axis=0)))]
    _open(pg, (base / "viewer" / "index.html").as_uri() + "#z=1")
    pg.fill("#search", f"class {c}")
    pg.wait_for_function("() => !document.getElementById('heat').disabled")
    pg.check("#heat")
    pg.wait_for_function("() => window.ATLAS_VIEW.panes[0].heat.length > 0")
    got = sorted(float(x[2]) for x in pg.evaluate("window.ATLAS_VIEW.panes[0].heat"))
    v = heat[:, heat_class.index(c)].astype(np.float64)
    want = sorted(round(0.9 * (1 - min(1, max(0, x / v.max()))), 4) for x in v)
    assert got == pytest.approx(want, abs=1e-3) and min(got) == 0
    assert "h=1" in pg.evaluate("location.hash")
    assert errors == []
