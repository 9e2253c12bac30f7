"""A sweep that compares its atlases by itself, through the real ``atlas -m`` command: two
checkpoints of the toy network over one folder of images. Without any extra command their
layouts equal what the manual ``reduce.align_with`` recipe gives (extract both, then lay each out
with the other), the second run is diffed against the first (figures in the index), and the
sweep's comparison page, in headless chromium, links pan and hover across its maps: the cells a
hovered cell's samples went to equal those computed here from the stores, for the aligned pair
and for an unaligned run of the same images."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
import zarr
from safetensors.torch import save_file

from atlas_core.models.tiny import TinyNet
from atlas_core.store import RunLocation
from pipelines.commands.run import run
from tests.conftest import debug_settings, make_images

log = logging.getLogger(__name__)
pytestmark = pytest.mark.ray
ROOT = Path(__file__).resolve().parents[2]
LAYER = "blocks.2"
SIZE = 4
COMMON = ("extract.samples_per_image=2", "grid.sizes=[4]", "grid.min_count=1")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """The sweep's folder and its two jobs' folders (w0, then w1), after ``atlas -m``."""
    base = tmp_path_factory.mktemp("sweepcmp")
    make_images(base / "imgs", 24, size=64, seed=3)
    (base / "ckpts").mkdir()
    for seed in (0, 1):
        save_file(TinyNet(seed=seed).state_dict(), str(base / "ckpts" / f"w{seed}.safetensors"))
    cmd = [
        sys.executable,
        "-c",
        "from pipelines.commands.cli import main; main()",
        "-m",
        "debug=fast",
        "data=folder",
        "data.path=imgs",
        *COMMON,
        # checkpoints by path: each job is still one folder of the sweep (the '/' escaped)
        "model.weights=ckpts/w0.safetensors,ckpts/w1.safetensors",
        "cluster.num_cpus=2",
        f"hydra.sweep.dir={base / 'sweep'}",
    ]
    t0 = time.perf_counter()
    out = subprocess.run(
        cmd,
        cwd=base,
        env={**os.environ, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    log.info("sweep of 2 jobs, aligned, diffed and compared: %.0f s", time.perf_counter() - t0)
    root = base / "sweep"
    records = sorted((root / "sweep-jobs").glob("*.json"))
    jobs = [Path(json.loads(p.read_text())["run_dir"]) for p in records]
    assert len(jobs) == 2 and [j.parent for j in jobs] == [root, root]
    assert jobs[0].name.endswith("model.weights=ckpts%2Fw0.safetensors")
    return base, root, jobs


@pytest.fixture(scope="module")
def manual(sweep, local_ray):
    """The manual recipe on the same images and checkpoints (extract both, then each one's
    reduce aligned with the other), and an unaligned full run of the second checkpoint."""
    base, _, _ = sweep
    data = ("data=folder", f"data.path={base / 'imgs'}", *COMMON)
    dirs = {n: base / "manual" / n for n in ("a", "b")}
    weights = {"a": base / "ckpts" / "w0.safetensors", "b": base / "ckpts" / "w1.safetensors"}
    for n, d in dirs.items():
        s, _ = debug_settings(
            *data, f"model.weights={weights[n]}", f"run_dir={d}", "stages=[extract]"
        )
        run(s, {})
    for n, d in dirs.items():
        other = dirs["b" if n == "a" else "a"]
        s, _ = debug_settings(
            *data,
            f"model.weights={weights[n]}",
            f"run_dir={d}",
            "stages=[reduce]",
            f"reduce.align_with=[{{run_dir:'{other}',layer:{LAYER}}}]",
        )
        run(s, {})
    s, _ = debug_settings(*data, f"model.weights={weights['b']}", f"run_dir={base / 'u1'}")
    run(s, {})
    return dirs, base / "u1"


def _layout(run_dir: Path) -> np.ndarray:
    return zarr.open_group(str(run_dir / "atlas.zarr"), mode="r")[f"layers/{LAYER}/layout"][:]


def _row_cells(run_dir: Path, size: int = SIZE) -> np.ndarray:
    """Each sample row's flat kept cell at ``size`` (-1: none), straight from the store."""
    g = zarr.open_group(str(run_dir / "atlas.zarr"), mode="r")
    xy = g[f"layers/{LAYER}/layout"][:]
    kept = g[f"layers/{LAYER}/grid/{size}/cell"][:]
    ok = ~np.isnan(xy).any(axis=1)
    ij = np.minimum(np.floor(np.nan_to_num(xy) * size), size - 1).astype(np.int64)
    flat = ij[:, 1] * size + ij[:, 0]
    keep = np.isin(flat, kept[:, 1].astype(np.int64) * size + kept[:, 0])
    return np.where(ok & keep, flat, -1)


def test_the_sweep_aligns_its_layouts_as_the_manual_recipe_does(sweep, manual) -> None:
    _, _, jobs = sweep
    dirs, unaligned = manual
    s0, s1 = (_layout(j) for j in jobs)
    a, b = _layout(dirs["a"]), _layout(dirs["b"])
    assert np.isfinite(s0).all() and s0.shape == (48, 2)
    assert np.array_equal(s0, a, equal_nan=True) and np.array_equal(s1, b, equal_nan=True)
    assert np.array_equal(s0, s1, equal_nan=True)  # one layout for the aligned runs
    assert not np.allclose(_layout(unaligned), s1)  # and it is not either run's own fit
    for j in jobs:
        m = json.loads((j / "manifest.json").read_text())
        assert m["status"] == "done" and m["stages"]["render"]["status"] == "done"
        assert len(m["stages"]["reduce"]["details"]["joint_layers"]) == 2
        assert (j / "viewer" / "index.html").is_file()


def test_the_second_run_is_diffed_against_the_first_and_the_index_says_so(sweep) -> None:
    _, root, jobs = sweep
    index = json.loads((root / "index.json").read_text())
    rows = {r["run"]: r for r in index["runs"]}
    assert len(rows) == 2 and index["failed"] == 0
    first, second = (rows[j.name] for j in jobs)
    diff = json.loads((jobs[1] / "diffs" / jobs[0].name / "diff.json").read_text())
    assert second["against"] == jobs[0].name
    assert second["neighbourhood_preservation"] == diff["neighbourhood_preservation"]
    assert second["flip_rate"] == diff["flip_rate"]
    assert 0 <= diff["neighbourhood_preservation"] < 1  # two checkpoints: neighbours change
    assert (jobs[1] / second["diff"]).is_file() and "against" not in first
    page = (root / "index.html").read_text()
    assert 'href="compare.html"' in page and f"diff vs {jobs[0].name}" in page
    # the links are URLs: the folders' escaped '/' ('%2F') is itself escaped once more
    links = re.findall(r'href="([^"]+)"', page)
    viewers = [unquote(h) for h in links if h.endswith("/viewer/index.html")]
    assert sorted(viewers) == sorted(f"{j.name}/viewer/index.html" for j in jobs)
    assert all((root / v).is_file() for v in viewers)
    assert (root / unquote(next(h for h in links if h.endswith("diff.html")))).is_file()
    assert (root / "compare.html").is_file()
    log.info(
        "sweep diff of the two checkpoints: neighbourhood preservation %.3f, flip rate %.3f",
        diff["neighbourhood_preservation"],
        diff["flip_rate"],
    )


# ------------------------------------------------------------------ the page in a browser
@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed")
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


class Page:
    def __init__(self, browser, url: str) -> None:
        self.errors: list[str] = []
        self.page = browser.new_page(viewport={"width": 1300, "height": 900})
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else 0)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.goto(url)
        self.page.wait_for_selector("body[data-ready='1']")
        self.page.wait_for_timeout(200)

    def hover(self, i: int, cell: int) -> dict:
        x, y = ((cell % SIZE) + 0.5) / SIZE, ((cell // SIZE) + 0.5) / SIZE
        p = self.page.evaluate(f"window.SWEEP_VIEW.point({i}, {x}, {y})")
        self.page.mouse.move(p["x"], p["y"])
        self.page.wait_for_timeout(50)
        return self.page.evaluate(
            "({hover: window.SWEEP_VIEW.hover, marks: window.SWEEP_VIEW.marks})"
        )


def _expected(cells: list[np.ndarray], i: int, cell: int) -> list[list[list[int]]]:
    """Per map, the cells the samples of map i's ``cell`` went to, with their counts."""
    rows = np.flatnonzero(cells[i] == cell)
    out = []
    for j, c in enumerate(cells):
        if j == i:
            out.append([])
            continue
        to, n = np.unique(c[rows][c[rows] >= 0], return_counts=True)
        out.append([[int(t % SIZE), int(t // SIZE), int(k)] for t, k in zip(to, n, strict=True)])
    return out


def _check_hovers(page: Page, cells: list[np.ndarray], i: int) -> int:
    busy = np.bincount(cells[i][cells[i] >= 0], minlength=SIZE * SIZE)
    tried = 0
    for cell in np.argsort(-busy)[:3]:
        if busy[cell] == 0:
            continue
        seen = page.hover(i, int(cell))
        assert seen["hover"]["cell"] == [int(cell % SIZE), int(cell // SIZE)]
        assert seen["hover"]["samples"] == busy[cell]
        assert seen["marks"] == _expected(cells, i, int(cell))
        tried += 1
    return tried


def test_hover_and_pan_are_linked_across_the_sweeps_maps(sweep, manual, browser) -> None:
    from atlas_core.compose.sweep_page import PageRun, write_sweep_page

    base, root, jobs = sweep
    page = Page(browser, (root / "compare.html").as_uri())
    assert page.page.locator(".pane").count() == 2
    assert page.page.locator("#map-0 .leaflet-tile").count() > 0  # the runs' own tiles
    figures = page.page.inner_text(".pane >> nth=1")
    assert "trustworthiness" in figures and "flip rate vs" in figures
    cells = [_row_cells(j) for j in jobs]
    assert _check_hovers(page, cells, 0) > 0 and _check_hovers(page, cells, 1) > 0
    page.page.screenshot(path=str(base / "sweep-compare.png"))
    # pan one map: the other follows to the same place and zoom
    before = page.page.evaluate("window.SWEEP_VIEW.center(1)")
    box = page.page.locator("#map-0").bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.page.mouse.move(cx, cy)
    page.page.mouse.down()
    page.page.mouse.move(cx - 80, cy + 40, steps=8)
    page.page.mouse.up()
    page.page.wait_for_timeout(100)
    c0 = page.page.evaluate("window.SWEEP_VIEW.center(0)")
    c1 = page.page.evaluate("window.SWEEP_VIEW.center(1)")
    px = 1 / 256  # one screen pixel at zoom 0: a dragged map's centre sits on whole pixels
    assert np.allclose(c0, c1, atol=px) and not np.allclose(c1, before, atol=10 * px)
    assert page.errors == []

    # an unaligned run of the same images: its samples scatter, and the page says where
    unaligned = manual[1]
    mixed = RunLocation.of(str(base / "mixed"))
    write_sweep_page(
        mixed, [PageRun(jobs[0].name, str(jobs[0])), PageRun("u1", str(unaligned))], first="w0"
    )
    page2 = Page(browser, (base / "mixed" / "compare.html").as_uri())
    cells = [_row_cells(jobs[0]), _row_cells(unaligned)]
    assert _check_hovers(page2, cells, 0) > 0 and _check_hovers(page2, cells, 1) > 0
    assert page2.errors == []
    page.page.close()
    page2.page.close()
