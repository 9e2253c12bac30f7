"""The page's questions to the model in a real browser (Debian's headless chromium through
Playwright, never a downloaded one), on a small real run (the toy model over a labelled folder,
two levels) served on loopback by ``atlas serve``'s app with the atlas API's backend.

Every answer the page shows is checked against the API itself (``Atlas.open(run)``): the
located positions (count, place, cells at every level), the cell lit when a position is hovered,
the icons on demand (the same direction as the API's, found in the run's icon cache), the
nearest samples; hostile uploads show the server's message; opened from disk the questions are
off and nothing is fetched. No test may see a console error (the browser's own network line for
an upload the test expects to be refused is the one exception, and only with that status)."""

from __future__ import annotations

import base64
import io
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from PIL import Image

from atlas_core.compose.viewer import CSP, source_name
from atlas_core.explore import Atlas
from tests.conftest import debug_settings, make_images

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
playwright = pytest.importorskip("playwright.sync_api")
pytestmark = [
    pytest.mark.ray,
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed"),
]
LAYER = "blocks.2"
UPLOAD_BYTES = 200_000  # the test server's upload limit (a larger file is refused with 413)
SLOW_MS = 240_000  # a render or a first locate on a busy 2-core machine


@pytest.fixture(scope="module")
def run(tmp_path_factory, local_ray) -> Path:
    """A finished run over 60 images in three labelled folders (tests/explore's recipe)."""
    from pipelines.commands.run import run as run_atlas

    base = tmp_path_factory.mktemp("ask")
    make_images(base / "imgs", 60, size=80)
    s, resolved = debug_settings(
        "data=folder",
        f"data.path={base / 'imgs'}",
        "data.labels=folder",
        "grid.sizes=[4,8]",
        "extract.samples_per_image=2",
        f"run_dir={base / 'run'}",
    )
    run_atlas(s, resolved)
    return base / "run"


@pytest.fixture(scope="module")
def atlas(run) -> Atlas:
    return Atlas.open(str(run))


@pytest.fixture(scope="module")
def server(run):
    from pipelines.server.atlas_backend import AtlasBackend
    from pipelines.server.runner import start
    from pipelines.server.settings import ServerSettings

    s = ServerSettings.from_env(
        str(run), port=0, token=None, upload_bytes=UPLOAD_BYTES, job_timeout_s=SLOW_MS / 1000
    )
    running = start(s, AtlasBackend(str(run)))
    yield running
    running.shutdown()


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


def _image(run: Path, i: int = 1) -> Path:
    return sorted((run.parent / "imgs").rglob("*.png"))[i]


class Page:
    """A page of the viewer, every console error it logged and every request it made."""

    def __init__(self, browser, url: str) -> None:
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page = browser.new_page(viewport={"width": 1300, "height": 900})
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else 0)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.goto(url)
        self.page.wait_for_selector("body[data-ready='1']")
        self.settle()

    def settle(self) -> None:
        self.page.wait_for_function("() => document.body.dataset.busy === '0'", timeout=SLOW_MS)
        self.page.wait_for_timeout(150)

    def ask(self) -> dict:
        return self.page.evaluate("window.ATLAS_VIEW.ask")

    def drop(self, name: str, data: bytes, kind: str = "image/png") -> None:
        """A file dropped onto the drop zone (a synthetic drop event with a real File)."""
        self.page.evaluate(
            """([b64, name, kind]) => {
                const bin = atob(b64), u8 = new Uint8Array(bin.length);
                for (let i = 0; i < bin.length; i++) u8[i] = bin.charCodeAt(i);
                const dt = new DataTransfer();
                dt.items.add(new File([u8], name, { type: kind }));
                const zone = document.getElementById("locate-drop");
                for (const t of ["dragover", "drop"]) {
                    zone.dispatchEvent(new DragEvent(t, { dataTransfer: dt, bubbles: true,
                        cancelable: true }));
                }
            }""",
            [base64.b64encode(data).decode(), name, kind],
        )

    def choose(self, name: str, data: bytes, kind: str = "image/png") -> None:
        """A file chosen with the file input."""
        self.page.set_input_files(
            "#locate-file", files=[{"name": name, "mimeType": kind, "buffer": data}]
        )

    def located(self) -> dict:
        self.page.wait_for_function(
            "() => window.ATLAS_VIEW.ask.positions.length > 0", timeout=SLOW_MS
        )
        self.settle()
        return self.ask()

    def screen(self, x: float, y: float) -> tuple[float, float]:
        """Screen position of layout point (x, y), from the map's own projection."""
        box = self.page.query_selector(".map").bounding_box()
        p = self.page.evaluate(
            f"window.ATLAS_MAP.latLngToContainerPoint([({y} - 1) * 256, {x} * 256])"
        )
        return box["x"] + p["x"], box["y"] + p["y"]

    def centre(self, selector: str) -> tuple[float, float]:
        b = self.page.query_selector(selector).bounding_box()
        return b["x"] + b["width"] / 2, b["y"] + b["height"] / 2

    def level(self) -> int:
        return int(re.search(r"(\d+) \u00d7", self.page.inner_text("#level")).group(1))

    def clean(self, refused: int | None = None) -> None:
        """No console error; with ``refused``, chromium's own line for that one status is
        allowed (it logs every 4xx response of a fetch; the page itself logged nothing)."""
        allowed = f"the server responded with a status of {refused}"
        assert [e for e in self.errors if not (refused and allowed in e)] == []
        self.page.close()


def _icon_of(src: str) -> np.ndarray:
    """The pixels of an icon the page shows (a data: URL of a PNG)."""
    head, data = src.split(",", 1)
    assert head == "data:image/png;base64"
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))


def test_a_dropped_image_lands_where_the_api_places_it_and_hovers_link(
    run, atlas, server, browser
) -> None:
    png = _image(run)
    (want,) = atlas.locate([Image.open(png).convert("RGB")])
    p = Page(browser, f"{server.url}/viewer/index.html#z=1&x=0.5&y=0.5")
    assert p.page.get_attribute("body", "data-ask") == "on" and p.page.is_visible("#locate-file")
    p.drop(png.name, png.read_bytes())
    got = p.located()["positions"]
    assert len(got) == len(want.positions) == want.grid[0] * want.grid[1]
    assert p.page.locator(".locate-dot").count() == len(got)
    assert p.page.locator("#locate-grid .pos").count() == len(got)
    for g, w in zip(got, want.positions, strict=True):
        assert (g["row"], g["col"]) == (w.row, w.col)
        assert abs(g["x"] - w.x) < 1e-6 and abs(g["y"] - w.y) < 1e-6
        assert {int(k): tuple(v) for k, v in g["cells"].items()} == w.cells
    shown = [t.split(" \u2014 ")[0] for t in p.page.locator("#locate-top li").all_inner_texts()]
    assert shown == [name for _, name, _ in want.top]
    # every dot sits where the map's transform puts its position
    for i in (0, len(got) // 2, len(got) - 1):
        dot = p.centre(f".locate-dot >> nth={i}")
        at = p.screen(want.positions[i].x, want.positions[i].y)
        assert abs(dot[0] - at[0]) < 1.5 and abs(dot[1] - at[1]) < 1.5
    # the cells it lands in, at the current level: the API's, with how many positions each
    size = p.level()
    cells: dict[tuple[int, int], int] = {}
    for w in want.positions:
        cells[w.cells[size]] = cells.get(w.cells[size], 0) + 1
    assert {(a, b): n for a, b, n, _ in p.ask()["cells"]} == cells
    kept = {
        tuple(c)
        for c in zarr.open_group(str(run / "atlas.zarr"), mode="r")[
            f"layers/{LAYER}/grid/{size}/cell"
        ][:].tolist()
    }
    assert {(a, b) for a, b, _, k in p.ask()["cells"] if k} == set(cells) & kept
    assert p.page.locator(".located-cell .icon").count() == len(set(cells) & kept)

    # a square on the image lights its dot and the API's cell of that position
    i = len(got) // 3
    p.page.hover(f"#locate-grid .pos >> nth={i}")
    lit = p.ask()["lit"]
    assert lit == {
        "i": i,
        "level": size,
        "ix": want.positions[i].cells[size][0],
        "iy": want.positions[i].cells[size][1],
    }
    assert p.page.locator(".locate-dot.lit").all_inner_texts() == [str(i + 1)]
    ix, iy = want.positions[i].cells[size]
    box = p.page.query_selector(".locate-cell-inner").bounding_box()
    x0, y1 = p.screen(ix / size, iy / size)
    x1, y0 = p.screen((ix + 1) / size, (iy + 1) / size)
    assert abs(box["x"] - x0) < 3 and abs(box["y"] - y0) < 3
    assert abs(box["x"] + box["width"] - x1) < 3 and abs(box["y"] + box["height"] - y1) < 3

    # a dot on the map (one no other dot covers) lights its square on the image
    j = p.page.evaluate(
        """(skip) => [...document.querySelectorAll(".locate-dot")].findIndex((d, k) => {
            const b = d.getBoundingClientRect();
            return k !== skip && d.contains(document.elementFromPoint(b.x + b.width / 2,
                b.y + b.height / 2));
        })""",
        i,
    )
    assert j >= 0
    p.page.mouse.move(*p.centre(f".locate-dot >> nth={j}"))
    assert p.page.eval_on_selector_all(
        "#locate-grid .pos.lit", "e => e.map(x => +x.dataset.i)"
    ) == [j]
    assert p.ask()["lit"]["i"] == j
    assert (p.ask()["lit"]["ix"], p.ask()["lit"]["iy"]) == want.positions[j].cells[size]

    # at the other level the list and the lit cell follow
    p.page.click("#levels button >> nth=0")
    p.page.wait_for_function("() => /^Level 1 /.test(document.getElementById('level').textContent)")
    p.settle()
    assert p.level() == 4
    cells4 = {tuple(w.cells[4]) for w in want.positions}
    assert {(a, b) for a, b, _, _ in p.ask()["cells"]} == cells4
    p.page.hover(f"#locate-grid .pos >> nth={i}")
    assert (p.ask()["lit"]["level"], p.ask()["lit"]["ix"], p.ask()["lit"]["iy"]) == (
        4,
        *want.positions[i].cells[4],
    )
    p.clean()


@pytest.mark.parametrize(
    ("name", "make", "status", "words"),
    [
        ("notes.png", lambda png: b"a text file, renamed .png\n" * 10, 415, "not an image"),
        ("cut.png", lambda png: png[: len(png) // 2], 422, "truncated"),
        ("huge.png", lambda png: png + bytes(UPLOAD_BYTES), 413, "over the limit"),
    ],
)
def test_a_hostile_upload_shows_the_servers_message(
    run, server, browser, name, make, status, words
) -> None:
    p = Page(browser, f"{server.url}/viewer/index.html#z=1")
    p.choose(name, make(_image(run).read_bytes()))
    p.page.wait_for_selector("#locate-status.error", timeout=SLOW_MS)
    line = p.page.inner_text("#locate-status")
    assert line.startswith(f"{name}: ") and words in line and f"(HTTP {status})" in line
    assert "\n" not in line.strip() and p.ask()["positions"] == []
    assert p.page.is_hidden("#located")
    p.clean(refused=status)


def test_icons_on_demand_of_a_selection_and_of_a_located_position(
    run, atlas, server, browser
) -> None:
    """The icon the page shows is the API's icon of the same direction: the server rendered it
    into the run's icon cache, and the API finds it there only if the directions are equal."""
    poly = [(0.05, 0.05), (0.95, 0.05), (0.95, 0.95), (0.05, 0.95)]
    sel = " ".join(f"{x},{y}" for x, y in poly)
    p = Page(browser, f"{server.url}/viewer/index.html#z=1&x=0.5&y=0.5&sel={sel}")
    assert p.page.is_visible("#sel-icon")
    p.page.click("#sel-icon")
    assert "rendering" in p.page.inner_text("#sel-icon-out")  # renders take seconds on a CPU
    p.page.wait_for_selector("#sel-icon-out img", timeout=SLOW_MS)
    rows = atlas.select(np.asarray(poly))
    assert f"({len(rows)} samples)" in p.page.inner_text("#sel-icon-out")
    cache = sorted((run / "icon-cache").rglob("*.npz"))
    want = atlas.render(atlas.direction(rows=rows))
    assert np.array_equal(_icon_of(p.ask()["icon"]["src"]), want)
    assert sorted((run / "icon-cache").rglob("*.npz")) == cache  # found, not rendered again

    png = _image(run, 2)
    (located,) = atlas.locate([Image.open(png).convert("RGB")])
    p.choose(png.name, png.read_bytes())
    p.located()
    assert p.page.is_disabled("#locate-icon")
    i = 7
    p.page.click(f"#locate-grid .pos >> nth={i}")
    assert p.page.inner_text("#locate-pos").startswith(f"Position {i + 1} (row ")
    p.page.click("#locate-icon")
    p.page.wait_for_selector("#locate-icon-out img", timeout=SLOW_MS)
    assert p.ask()["icon"]["what"] == f"position {i + 1}"
    cache = sorted((run / "icon-cache").rglob("*.npz"))
    want = atlas.render(located.acts[i])  # the position's own activation, float32 exactly
    assert np.array_equal(_icon_of(p.ask()["icon"]["src"]), want)
    assert sorted((run / "icon-cache").rglob("*.npz")) == cache
    p.clean()


def test_a_wide_images_grid_covers_the_square_the_model_saw(run, atlas, server, browser) -> None:
    """The toy model resizes the shorter side and keeps the centre square: on a 3:2 image the
    grid covers the middle two thirds of its width and all of its height. The located
    activations are the layer's own (a plain forward pass)."""
    import torch

    from atlas_core.models import load_model
    from atlas_core.models.layers import capture

    wide = Image.open(_image(run, 3)).convert("RGB").resize((120, 80))
    buf = io.BytesIO()
    wide.save(buf, "PNG")
    p = Page(browser, f"{server.url}/viewer/index.html#z=1")
    p.choose("wide.png", buf.getvalue())
    p.located()
    img = p.page.query_selector("#locate-img").bounding_box()
    grid = p.page.query_selector("#locate-grid").bounding_box()
    assert abs(img["width"] / img["height"] - 1.5) < 0.02
    assert abs(grid["x"] - (img["x"] + img["width"] / 6)) < 1.5
    assert abs(grid["width"] - img["width"] * 2 / 3) < 1.5
    assert abs(grid["y"] - img["y"]) < 1.5 and abs(grid["height"] - img["height"]) < 1.5
    (located,) = atlas.locate([wide])
    model = load_model(atlas.card.spec)
    x = model.preprocess.batch(model.preprocess.to_array(wide)[None])
    with torch.no_grad(), capture(model.module, [LAYER]) as out:
        model.module(x)
    fmap = out[LAYER][0].numpy()
    np.testing.assert_allclose(located.acts, fmap.reshape(len(fmap), -1).T, atol=1e-5)
    p.clean()


def _exemplar_rows(run: Path) -> set[int]:
    g = zarr.open_group(str(run / "atlas.zarr"), mode="r")
    rows = np.concatenate([g[f"layers/{LAYER}/grid/{s}/exemplar_row"][:].ravel() for s in (4, 8)])
    return set(rows[rows >= 0].tolist())


def test_nearest_samples_of_a_cell_and_of_a_sample_are_the_apis(
    run, atlas, server, browser
) -> None:
    p = Page(browser, f"{server.url}/viewer/index.html#l=8&z=1&x=0.5&y=0.5")
    cells = atlas.cells(8).to_pandas().sort_values("count", ascending=False)
    ix, iy = int(cells.ix.iloc[0]), int(cells.iy.iloc[0])
    p.page.mouse.click(*p.screen((ix + 0.5) / 8, (iy + 0.5) / 8))
    p.settle()
    p.page.click(".card-near")
    p.settle()
    want, cos = atlas.neighbours(cell=(8, ix, iy), k=10)
    near = p.ask()["neighbours"]
    assert near["rows"] == want.tolist() and near["drawn"] == len(want)
    np.testing.assert_allclose(near["cosine"], cos, atol=1e-6)
    assert p.page.locator("path.near-ring").count() == len(want)
    assert f"cell ({ix}, {iy}) of 8" in p.page.inner_text("#near-title")
    items = p.page.locator("#near-list li")
    exemplars = _exemplar_rows(run)
    uris = atlas.samples(want).column("uri").to_pylist()
    for k, row in enumerate(want.tolist()):
        li = items.nth(k)
        assert li.get_attribute("data-row") == str(row)
        shown = re.search(r"row (\d+) \u2014 cosine ([\d.]+)", li.inner_text())
        assert shown is not None
        assert int(shown.group(1)) == row and abs(float(shown.group(2)) - cos[k]) < 6e-5
        has_patch = li.locator(".exemplar").count() == 1
        assert has_patch == (row in exemplars)
        if not has_patch:
            assert li.inner_text().endswith(source_name(uris[k]))
    # a sample (an exemplar opened from the list): its nearest samples, never itself
    k = next(k for k, r in enumerate(want.tolist()) if r in exemplars)
    items.nth(k).locator(".exemplar").click()
    p.page.wait_for_selector("#source-near:not([hidden])")
    p.page.click("#source-near")
    p.settle()
    again, _ = atlas.neighbours(row=int(want[k]), k=10)
    assert p.ask()["neighbours"]["rows"] == again.tolist() and int(want[k]) not in again
    assert p.page.inner_text("#near-title").endswith(f"sample {int(want[k])}")
    p.clean()


def test_opened_from_disk_or_without_compute_the_questions_are_off(run, browser) -> None:
    from pipelines.server.runner import start
    from pipelines.server.settings import ServerSettings

    p = Page(browser, (run / "viewer" / "index.html").as_uri() + "#z=1&x=0.5&y=0.5")
    assert p.page.get_attribute("body", "data-ask") == "off"
    assert p.page.is_hidden("#ask-tools") and p.page.is_hidden("#locate-file")
    assert "atlas serve RUN_DIR" in p.page.inner_text("#ask-note")
    box = p.page.query_selector(".map").bounding_box()
    p.page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    p.settle()
    assert p.page.locator(".card-near").count() == 0
    assert [u for u in p.requests if not u.startswith(("file://", "data:"))] == []  # no fetch
    p.clean()
    running = start(ServerSettings.from_env(str(run), port=0, token=None))  # --no-compute
    try:
        q = Page(browser, f"{running.url}/viewer/index.html#z=1")
        assert q.page.get_attribute("body", "data-ask") == "off"
        assert "--no-compute" in q.page.inner_text("#ask-note")
        assert [u for u in q.requests if "/api/" in u] == [f"{running.url}/api/health"]
        q.clean()
    finally:
        running.shutdown()


def test_the_page_may_ask_its_own_origin_and_nothing_else(run, server) -> None:
    import urllib.request

    assert "connect-src 'self'" in CSP and "http" not in CSP and "unsafe" not in CSP
    page = (run / "viewer" / "index.html").read_text()
    assert f'content="{CSP}"' in page
    with urllib.request.urlopen(f"{server.url}/viewer/index.html", timeout=30) as r:
        assert r.headers["content-security-policy"].startswith(CSP)
