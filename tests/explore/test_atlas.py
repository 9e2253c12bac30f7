"""The atlas API over a real small run (the toy model, a labelled folder of images, two levels):
every answer against an independent computation over the store (brute-force selection,
cosine search, error rates, confusions), ``locate`` against a plain forward pass placed by the
stored landmarks, exports read back, and an icon on demand from the run's recipe and cache."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
import torch
import zarr
from PIL import Image

from atlas_core.errors import ConfigError
from atlas_core.explore import Atlas, parse_polygon
from atlas_core.models import load_model
from atlas_core.models.layers import capture
from atlas_core.reduce import NeighborIndex, apply_bounds, place
from tests.conftest import debug_settings, make_images

pytestmark = pytest.mark.ray
LAYER = "blocks.2"


@pytest.fixture(scope="module")
def run(tmp_path_factory, local_ray):
    """A finished run over 60 images in three labelled folders (labels 0, 1, 2)."""
    from pipelines.commands.run import run as run_atlas

    base = tmp_path_factory.mktemp("explore")
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
def atlas(run):
    return Atlas.open(str(run))


def _store(run) -> zarr.Group:
    return zarr.open_group(str(run / "atlas.zarr"), mode="r")


def test_the_samples_table_is_the_store_row_for_row(run, atlas) -> None:
    g = _store(run)
    t = atlas.samples()
    xy = g[f"layers/{LAYER}/layout"][:]
    image = g["samples/image"][:]
    assert t.num_rows == len(xy) == 120 and atlas.levels == [4, 8]
    np.testing.assert_array_equal(t.column("x").to_numpy(zero_copy_only=False), xy[:, 0])
    top = g["images/top_class"][:][image, 0]
    ok = ~np.isnan(xy).any(1)
    np.testing.assert_array_equal(t.column("pred").to_numpy()[ok], top[ok])
    label = g["images/label"][:][image]
    np.testing.assert_array_equal(t.column("label").to_numpy(), label)
    for size in (4, 8):  # the grid stage's own binning
        ix = np.minimum(np.floor(xy[ok, 0] * size), size - 1)
        assert (t.column(f"ix_{size}").to_numpy()[ok] == ix).all()
    uris = g["images/uri"][:]
    assert t.column("uri").to_pylist()[5] == str(uris[image[5]])


def test_a_polygon_and_filters_select_what_a_loop_selects(run, atlas) -> None:
    g = _store(run)
    xy = g[f"layers/{LAYER}/layout"][:]
    pred = g["images/top_class"][:][g["samples/image"][:], 0]
    poly = parse_polygon("0.1,0.1 0.9,0.2 0.6,0.9 0.2,0.7")

    def inside(px: float, py: float) -> bool:  # ray casting, one point at a time
        hit = False
        for (x0, y0), (x1, y1) in zip(poly, np.roll(poly, -1, 0), strict=True):
            if (y0 > py) != (y1 > py) and px < x0 + (py - y0) * (x1 - x0) / (y1 - y0):
                hit = not hit
        return hit

    want = [i for i, (x, y) in enumerate(xy) if np.isfinite(x) and inside(x, y)]
    assert atlas.select(poly).tolist() == want and 0 < len(want) < len(xy)
    p0 = int(pred[want[0]])
    assert atlas.select(poly, where=[f"pred={p0}"]).tolist() == [i for i in want if pred[i] == p0]
    with pytest.raises(ConfigError, match="where"):
        atlas.select(poly, where=["colour=red"])


def test_an_export_holds_the_rows_asked_for(tmp_path, atlas) -> None:
    rows = atlas.select(parse_polygon("0,0 1,0 1,1 0,1"))
    data = atlas.export(rows[:7], tmp_path / "sel.csv", "csv")
    read = list(csv.DictReader(io.StringIO(data.decode())))
    assert [int(r["row"]) for r in read] == rows[:7].tolist()
    assert {"uri", "pos_y", "pos_x", "x", "y", "ix_4", "iy_8", "pred", "prob", "label"} <= set(
        read[0]
    )
    import pyarrow.parquet as pq

    atlas.export(rows, tmp_path / "sel.parquet", "parquet")
    back = pq.read_table(tmp_path / "sel.parquet")
    assert back.column("row").to_pylist() == rows.tolist()


def test_neighbours_equal_a_brute_force_cosine_search(run, atlas) -> None:
    acts = _store(run)[f"layers/{LAYER}/acts"][:].astype(np.float32)
    ok = np.isfinite(acts).all(1)
    unit = acts / np.linalg.norm(acts, axis=1, keepdims=True)
    row = int(np.flatnonzero(ok)[3])
    cos = unit @ unit[row]
    cos[~ok] = -np.inf
    cos[row] = -np.inf
    want = np.lexsort((np.arange(len(cos)), -cos))[:5]
    got, got_cos = atlas.neighbours(row=row, k=5)
    assert got.tolist() == want.tolist()
    np.testing.assert_allclose(got_cos, cos[want], rtol=1e-5)
    cell = atlas.cells(8)
    ix, iy = int(cell.column("ix")[0].as_py()), int(cell.column("iy")[0].as_py())
    mean = atlas.direction(cell=(8, ix, iy))
    rows, _ = atlas.neighbours(cell=(8, ix, iy), k=3)
    want = np.argsort(-np.where(ok, unit @ (mean / np.linalg.norm(mean)), -np.inf))[:3]
    assert sorted(rows.tolist()) == sorted(want.tolist())


def test_error_rates_and_confusions_equal_a_loop(run, atlas) -> None:
    t = atlas.samples().to_pandas()
    t = t[t.ok]
    for size in (4, 8):
        cells = atlas.cells(size).to_pandas()
        for _, c in cells.iterrows():
            mine = t[(t[f"ix_{size}"] == c.ix) & (t[f"iy_{size}"] == c.iy)]
            mine = mine[mine.label >= 0]
            want = (mine.label != mine.pred).mean() if len(mine) else np.nan
            assert np.isclose(c.error_rate, want, equal_nan=True)
    wrong = t[t.label != t.pred]
    pairs = wrong.groupby(["label", "pred"]).size().sort_values(ascending=False)
    got = atlas.confusions(top=50)
    assert sum(c["count"] for c in got) == len(wrong)
    assert {(c["label"], c["pred"]): c["count"] for c in got} == {
        (int(a), int(b)): int(n) for (a, b), n in pairs.items()
    }


def test_locate_places_every_position_as_the_reduce_stage_would(run, atlas) -> None:
    """An independent computation: a forward pass, the layer's map, every position placed by
    the stored landmarks' nearest neighbours and normalized by the stored bounds."""
    g = _store(run)
    image = Image.open(sorted((run.parent / "imgs").rglob("*.png"))[0]).convert("RGB")
    (located,) = atlas.locate([image])
    model = load_model(atlas.card.spec)
    x = model.preprocess.batch(model.preprocess.to_array(image)[None])
    with torch.no_grad(), capture(model.module, [LAYER]) as out:
        logits = model.module(x)
    fmap = out[LAYER][0].numpy()
    c, h, w = fmap.shape
    acts = fmap.reshape(c, h * w).T
    node = g[f"layers/{LAYER}"]
    rows = node["landmark_rows"][:]
    attrs = dict(node["layout"].attrs)
    index = NeighborIndex.build(
        node["acts"][:][rows].astype(np.float32), attrs["placement"]["metric"]
    )
    idx, dist = index.query(acts, attrs["placement"]["place_neighbors"], device="cpu")
    want = apply_bounds(place(idx, dist, node["layout_raw"][:][rows]), np.asarray(attrs["bounds"]))
    got = np.array([[p.x, p.y] for p in located.positions])
    assert located.grid == (h, w) and len(located.positions) == h * w
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert located.top[0][0] == int(logits.argmax())
    p = located.positions[5]
    assert p.cells[8] == (min(int(p.x * 8), 7), min(int(p.y * 8), 7))
    assert set(located.seconds) == {"decode", "forward", "placement"}


def test_an_icon_on_demand_uses_the_runs_recipe_and_cache(run, atlas) -> None:
    d = atlas.direction(rows=atlas.select(parse_polygon("0,0 1,0 1,1 0,1"))[:10])
    icon = atlas.render(d)
    assert icon.shape == (32, 32, 3) and icon.dtype == np.uint8
    files = sorted((run / "icon-cache").rglob("*.npz"))
    again = atlas.render(d)  # from the cache: the same bytes, no new entry
    assert np.array_equal(icon, again) and sorted((run / "icon-cache").rglob("*.npz")) == files


def test_the_command_line_and_the_server_answer_as_the_api(run, atlas, tmp_path) -> None:
    """``atlas locate``/``neighbours``/``export`` and the server's endpoints are thin over the
    API: the same answers, from the command line and over HTTP on loopback."""
    import json
    import subprocess
    import sys
    import urllib.request

    from pipelines.server.atlas_backend import AtlasBackend
    from pipelines.server.runner import start
    from pipelines.server.settings import ServerSettings

    png = sorted((run.parent / "imgs").rglob("*.png"))[1]
    api = atlas.locate([str(png)])[0].to_json()

    def cli(*args: str) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "pipelines", *args], capture_output=True, text=True, timeout=300
        )
        assert out.returncode == 0, out.stderr
        return out.stdout

    (got,) = json.loads(cli("locate", str(run), str(png), "--json"))
    assert got["positions"] == api["positions"] and got["top"] == api["top"]
    near = json.loads(cli("neighbours", str(run), "--row", "4", "--k", "3", "--json"))
    assert near["rows"] == atlas.neighbours(row=4, k=3)[0].tolist()
    cli(
        "export",
        str(run),
        "--polygon",
        "0,0 0.5,0 0.5,1",
        "--where",
        "conf>=0",
        "-o",
        str(tmp_path / "half.csv"),
    )
    want = atlas.select(parse_polygon("0,0 0.5,0 0.5,1"), where=["conf>=0"])
    rows = [int(r["row"]) for r in csv.DictReader(open(tmp_path / "half.csv"))]
    assert rows == want.tolist()
    server = start(ServerSettings.from_env(str(run), port=0), AtlasBackend(str(run)))
    try:
        req = urllib.request.Request(
            f"{server.url}/api/locate",
            data=png.read_bytes(),
            method="POST",
            headers={"Content-Type": "image/png"},
        )
        with urllib.request.urlopen(req, timeout=120) as r:
            over_http = json.load(r)
        assert over_http["positions"] == api["positions"]
        with urllib.request.urlopen(f"{server.url}/api/neighbours?row=4&k=3", timeout=60) as r:
            assert json.load(r)["rows"] == near["rows"]
    finally:
        server.shutdown()


def test_the_notebook_runs_against_a_run(run) -> None:
    """docs/notebooks/explore.ipynb, executed by a kernel against this module's run."""
    import os
    from pathlib import Path

    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    path = Path(__file__).resolve().parents[2] / "docs" / "notebooks" / "explore.ipynb"
    nb = nbformat.read(path, as_version=4)
    env = {"ATLAS_RUN": str(run)}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        nbclient.NotebookClient(nb, timeout=600, kernel_name="python3").execute(
            cwd=str(path.parent)
        )
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(str(o.get("text", "")) for o in outputs)
    assert "samples selected" in text and "top classes:" in text


def test_the_stored_neighbours_are_a_brute_force_knn(run, atlas) -> None:
    """The neighbours stage's every-sample kNN (the index's exact path at this size) against
    a brute-force cosine ranking, and the API's search through the stored index."""
    g = _store(run)
    acts = g[f"layers/{LAYER}/acts"][:].astype(np.float32)
    ok = np.isfinite(acts).all(1)
    unit = np.where(ok[:, None], acts / np.linalg.norm(acts, axis=1, keepdims=True), 0)
    stored = g[f"layers/{LAYER}/neighbours/rows"][:]
    k = stored.shape[1]
    for row in np.flatnonzero(ok)[:25]:
        cos = unit @ unit[row]
        cos[~ok] = -np.inf
        cos[row] = -np.inf
        want = np.lexsort((np.arange(len(cos)), -cos))[:k]
        assert stored[row].tolist() == want.tolist(), row
    assert (stored[~ok] == -1).all()
    assert atlas.index() is not None
    assert (
        atlas.neighbours(row=int(np.flatnonzero(ok)[0]), k=k)[0].tolist()
        == stored[np.flatnonzero(ok)[0]].tolist()
    )
