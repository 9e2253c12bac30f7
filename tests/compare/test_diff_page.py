"""The diff's page in a real browser (Debian's headless chromium driven by Playwright, opened from
disk): both maps with the runs' tiles and heat over their cells, a click on a change outlines
A's cell and B's destination cells with the fractions the diff stored, and lists its samples'
exemplar patches; a run folder named like markup stays text; runs without a viewer still draw
their cells. Every page must log no console error."""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pytest
import zarr

from pipelines.commands import diff as command

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
playwright = pytest.importorskip("playwright.sync_api")
pytestmark = [
    pytest.mark.ray,
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed"),
]
EVIL = "<img src=x onerror=window.__pwned=1>"
LAYER = "blocks.2"


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def with_viewers(tiny_pair) -> tuple[Path, Path, Path]:
    """The diff of run A (behind a folder named like markup) and run B, in B's diffs folder."""
    evil = tiny_pair.base / EVIL
    evil.symlink_to(tiny_pair.early, target_is_directory=True)
    assert command.main([str(evil), str(tiny_pair.late), "--k", "5"]) == 0
    return tiny_pair.late / "diffs" / EVIL, tiny_pair.early, tiny_pair.late


class Page:
    def __init__(self, browser, path: Path, hash_: str = "") -> None:
        self.errors: list[str] = []
        self.page = browser.new_page(viewport={"width": 1300, "height": 760})
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else 0)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.goto(path.as_uri() + hash_)
        self.page.wait_for_selector("body[data-ready='1']")
        self.settle()

    def settle(self) -> None:
        self.page.wait_for_load_state("load")
        self.page.wait_for_function("() => document.body.dataset.busy === '0'")
        self.page.wait_for_function(
            "() => [...document.querySelectorAll('.leaflet-tile')].every("
            "t => t.classList.contains('leaflet-tile-loaded') && t.complete)"
        )
        self.page.wait_for_timeout(200)

    def view(self) -> dict:
        return self.page.evaluate("window.DIFF_VIEW")


def _stored_change(out: Path, size: int, j: int) -> tuple[list, list]:
    """A's cell of the j-th largest change and its destinations [ix, iy, fraction], as stored."""
    lv = zarr.open_group(str(out / "diff.zarr"), mode="r")[f"levels/{size}"]
    r = int(lv["largest"][j])
    cell = lv["a/cell"][r].tolist()
    flows = [
        [int(c % size), int(c // size), float(f)]
        for c, f in zip(lv["a/flow_cell"][r], lv["a/flow_frac"][r], strict=True)
        if c >= 0
    ]
    return [[*cell, 1]], flows


def _exemplars_in(run_a: Path, run_b: Path, size: int, cell: list[int]) -> int:
    """How many samples of A's cell are an exemplar in run A or run B (patch made)."""
    rows: set[int] = set()
    for run in (run_a, run_b):
        ex = zarr.open_group(str(run / "atlas.zarr"), mode="r")[f"layers/{LAYER}/exemplars"]
        rows |= set(ex["row"][:][ex["ok"][:] == 1].tolist())
    xy = zarr.open_group(str(run_a / "atlas.zarr"), mode="r")[f"layers/{LAYER}/layout"][:]
    ix = np.minimum(np.floor(xy * size), size - 1).astype(int)
    mine = np.flatnonzero((ix[:, 0] == cell[0]) & (ix[:, 1] == cell[1]))
    return min(12, len(rows & set(mine.tolist())))


def test_a_click_on_a_change_outlines_its_cells_in_both_maps(browser, with_viewers) -> None:
    out, run_a, run_b = with_viewers
    p = Page(browser, out / "diff.html")
    page = p.page
    assert page.locator("#map-a .leaflet-tile-loaded").count() > 0
    assert page.locator("#map-b .leaflet-tile-loaded").count() > 0
    v = p.view()
    assert v["level"] == 4 and v["a"]["heat"] > 0 and v["b"]["heat"] > 0
    page.click("#levels button[data-size='8']")
    p.settle()
    assert page.locator("#changes .change").count() > 0
    page.click("#changes li:nth-child(1) .change")
    p.settle()
    v = p.view()
    cell, flows = _stored_change(out, 8, 0)
    assert v["level"] == 8 and v["change"] == 0
    assert [m[:2] for m in v["a"]["marks"]] == [c[:2] for c in cell]
    assert [m[:2] for m in v["b"]["marks"]] == [f[:2] for f in flows]
    assert np.allclose([m[2] for m in v["b"]["marks"]], [f[2] for f in flows], atol=1e-4)
    assert page.get_attribute("#changes li:nth-child(1) .change", "aria-pressed") == "true"
    # the change's patches: its samples that are exemplars, each from a sheet on disk
    want = _exemplars_in(run_a, run_b, 8, cell[0][:2])
    patches = page.locator("#detail .patch")
    assert want > 0 and patches.count() == want
    for i in range(patches.count()):
        style = patches.nth(i).evaluate("e => e.style.backgroundImage")
        url = style.split('"')[1]
        assert Path(unquote(urlparse(url).path)).is_file()
    assert "#l=8&c=0" in page.url  # the state is in the hash: a reload shows the same
    p.page.reload()
    p.page.wait_for_selector("body[data-ready='1']")
    assert p.view()["change"] == 0 and p.view()["b"]["marks"]
    assert p.errors == []


def test_names_are_text_and_heat_choices_redraw(browser, with_viewers) -> None:
    out, _, _ = with_viewers
    p = Page(browser, out / "diff.html", "#l=8")
    page = p.page
    assert EVIL in page.inner_text("#title") and EVIL in page.inner_text("#title-a")
    assert page.evaluate("window.__pwned") is None
    assert page.locator("img[src='x']").count() == 0
    lv = zarr.open_group(str(out / "diff.zarr"), mode="r")["levels/8"]
    defined = {s: int(np.isfinite(lv[f"{s}/preservation"][:]).sum()) for s in "ab"}
    assert p.view()["a"]["heat"] == defined["a"] and p.view()["b"]["heat"] == defined["b"]
    page.select_option("#heat", "none")
    assert p.view()["a"]["heat"] == 0 and p.view()["b"]["heat"] == 0
    page.select_option("#heat", "flip_rate")
    assert p.view()["a"]["heat"] == int(np.isfinite(lv["a/flip_rate"][:]).sum()) > 0
    page.check("#oneside")
    assert "o=1" in page.url and "h=flip_rate" in page.url
    assert p.errors == []


def test_runs_without_a_viewer_draw_their_cells(browser, tiny_pair, tmp_path) -> None:
    """Runs whose compose stage did not run: the page copies Leaflet and draws the cells."""
    runs = []
    for name, src in (("a", tiny_pair.early), ("b", tiny_pair.late)):
        (tmp_path / name).mkdir()
        shutil.copytree(src / "atlas.zarr", tmp_path / name / "atlas.zarr")
        shutil.copy(src / "manifest.json", tmp_path / name / "manifest.json")
        runs.append(str(tmp_path / name))
    assert command.main(runs) == 0
    out = tmp_path / "b" / "diffs" / "a"
    assert (out / "lib" / "leaflet" / "leaflet.js").is_file()
    p = Page(browser, out / "diff.html", "#l=8&c=1")
    v = p.view()
    assert p.page.locator(".leaflet-tile").count() == 0
    cell, flows = _stored_change(out, 8, 1)
    assert [m[:2] for m in v["a"]["marks"]] == [c[:2] for c in cell]
    assert [m[:2] for m in v["b"]["marks"]] == [f[:2] for f in flows]
    assert "no viewer" in p.page.inner_text("#title-b")
    assert p.errors == []
