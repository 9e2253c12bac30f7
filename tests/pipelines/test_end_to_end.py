"""A tiny run through local Ray in a temporary directory: every output a user opens, the resume,
and a corrupt file in the folder counted instead of stopping the run."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import zarr
from PIL import Image

from pipelines.commands.run import run
from tests.conftest import debug_settings, make_images

pytestmark = pytest.mark.ray

log = logging.getLogger(__name__)


_settings = debug_settings


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory, local_ray):
    base = tmp_path_factory.mktemp("e2e")
    make_images(base / "imgs", 70, size=80)
    (base / "imgs" / "sub0" / "broken.jpg").write_bytes(b"<html>saved error page</html>")
    (base / "imgs" / "sub1" / "empty.png").write_bytes(b"")
    # the same bytes twice: the later copy (in sorted order) is classified as a duplicate
    (base / "imgs" / "sub2" / "zz_copy.png").write_bytes(
        (base / "imgs" / "sub1" / "img0001.png").read_bytes()
    )
    s, resolved = _settings(
        "data=folder",
        f"data.path={base / 'imgs'}",
        f"run_dir={base / 'run'}",
        "extract.samples_per_image=2",
    )
    manifest = run(s, resolved)
    return s, manifest, base / "run"


def test_the_run_writes_every_output(folder_run) -> None:
    _s, manifest, run_dir = folder_run
    assert (run_dir / "atlas.png").is_file() and (run_dir / "atlas-4.png").is_file()
    assert (run_dir / "viewer" / "index.html").is_file()
    on_disk = json.loads((run_dir / "manifest.json").read_text())
    assert on_disk["stages"].keys() == manifest["stages"].keys()
    ex = on_disk["stages"]["extract"]["counts"]
    log.info(
        "rows expected %d = ok %d + failed %d + lost %d",
        ex["images_expected"],
        ex["images_ok"],
        ex["images_failed"],
        ex["images_lost"],
    )
    assert ex["images_expected"] == 73 and ex["images_ok"] == 70 and ex["images_lost"] == 0
    assert ex["failed_by_reason"] == {"unidentified": 1, "truncated": 1, "duplicate": 1}
    assert ex["samples"] == 140
    assert on_disk["versions"]["torch"] and on_disk["seeds"]["seed"] == 0
    assert on_disk["config"]["model"]["name"] == "tiny"
    for stage in ("extract", "reduce", "grid", "render", "exemplars", "compose"):
        assert on_disk["stages"][stage]["status"] == "done"
        assert on_disk["stages"][stage]["seconds"] > 0


def test_the_store_is_consistent(folder_run) -> None:
    s, manifest, run_dir = folder_run
    g = zarr.open_group(str(run_dir / "atlas.zarr"), mode="r")
    status = g["images/status"][:]
    # every count of the manifest, recounted from the stored statuses and the folder itself
    files = [p for p in Path(s.data.path).rglob("*") if p.is_file()]
    codes = {v: k.lower() for k, v in g.attrs["status_codes"].items()}
    stored = Counter(codes[int(v)] for v in status)
    ex = manifest["stages"]["extract"]["counts"]
    assert ex["images_expected"] == len(files) == len(status)
    assert ex["images_ok"] == stored.pop("ok") and ex["images_lost"] == stored.pop("pending", 0)
    assert ex["failed_by_reason"] == dict(stored) and ex["images_failed"] == sum(stored.values())
    uris = g["images/uri"][:]
    bad = [i for i, u in enumerate(uris) if u.endswith(("broken.jpg", "empty.png", "zz_copy.png"))]
    assert sorted(np.flatnonzero(status != 1).tolist()) == sorted(bad)
    acts = g["layers/blocks.2/acts"][:]
    rows_bad = np.array([[2 * i, 2 * i + 1] for i in bad]).ravel()
    assert np.isnan(acts[rows_bad]).all() and not np.isnan(np.delete(acts, rows_bad, 0)).any()
    layout = g["layers/blocks.2/layout"][:]
    assert np.isnan(layout[rows_bad]).all()
    ok = np.delete(layout, rows_bad, 0)
    assert ok.min() >= 0 and ok.max() <= 1
    grid = g["layers/blocks.2/grid/4"]
    assert grid["count"][:].sum() == 140  # min_count 1: every sample is in a kept cell
    assert not np.isnan(grid["icon_objective"][:]).any()
    icons = grid["icons"][:]
    assert icons.shape == (len(grid["cell"][:]), 32, 32, 3) and icons.std() > 5


def test_the_atlas_image_shows_each_icon_at_its_cell(folder_run) -> None:
    """Each icon centred in its cell at 32 px x min(1, sqrt(count / mean count)), nothing
    elsewhere; the viewer's data file has one record per kept cell."""
    _s, _manifest, run_dir = folder_run
    img = np.asarray(Image.open(run_dir / "atlas.png"))
    g = zarr.open_group(str(run_dir / "atlas.zarr"), mode="r")["layers/blocks.2/grid/4"]
    cells, icons, count = g["cell"][:], g["icons"][:], g["count"][:]
    assert img.shape == (128, 128, 3)
    drawn = np.zeros((128, 128), bool)
    for (ix, iy), icon, n in zip(cells, icons, count, strict=True):
        side = round(32 * min(1.0, (n / count.mean()) ** 0.5))
        r, c = (3 - iy) * 32 + (32 - side) // 2, ix * 32 + (32 - side) // 2
        want = Image.fromarray(icon)
        if side < 32:
            want = want.resize((side, side), Image.Resampling.BOX)
        assert np.array_equal(img[r : r + side, c : c + side], np.asarray(want))
        drawn[r : r + side, c : c + side] = True
    assert (img[~drawn] == 255).all() and drawn.sum() < 128 * 128
    data = (run_dir / "viewer" / "data" / "atlas.js").read_text()
    run_data = json.loads(data[data.index("run: ") + 5 : data.rindex("});")])
    entry = next(lv for lv in run_data["levels"] if lv["size"] == 4)
    level = _put_payload(run_dir / "viewer" / "data" / "level-4.js")
    got = np.stack(
        [_typed(level["ix"], "<u2"), _typed(level["iy"], "<u2"), _typed(level["count"], "<u4")],
        axis=1,
    )
    assert entry["cells"] == len(cells) and got.tolist() == [
        [*c, int(n)] for c, n in zip(cells.tolist(), count, strict=True)
    ]
    assert (run_dir / "viewer" / "lib" / "leaflet" / "leaflet.js").is_file()


def _put_payload(path: Path) -> dict:
    """The payload of a viewer data file (``window.ATLAS_PUT(src, {...});``)."""
    text = path.read_text()
    return json.loads(text[text.index(", ") + 2 : text.rindex(");")])


def _typed(b64: str, dtype: str) -> np.ndarray:
    import base64

    return np.frombuffer(base64.b64decode(b64), dtype=dtype)


def _sheet_cell(run_dir: Path, kind: str, i: int, px: int, per: int) -> np.ndarray:
    """Cell i of the exemplars stage's sheets (patches or sources), as int."""
    from atlas_core.exemplars.sheets import cell

    sheet = Image.open(run_dir / "exemplars" / "blocks.2" / f"{kind}-{i // per}.jpg")
    return cell(sheet, i % per, px).astype(int)


def test_a_second_run_skips_and_a_changed_setting_redoes_only_what_follows(folder_run) -> None:
    s, _manifest, run_dir = folder_run
    again = run(s, {})
    assert all(v["status"] == "skipped (complete)" for v in again["stages"].values())
    s2, _ = _settings(
        "data=folder",
        f"data.path={s.data.path}",
        f"run_dir={run_dir}",
        "extract.samples_per_image=2",
        "render.steps=2",
    )
    third = run(s2, {})
    status = {k: v["status"] for k, v in third["stages"].items()}
    assert status == {  # exactly the stages that depend on render's settings
        "extract": "skipped (complete)",
        "reduce": "skipped (complete)",
        "grid": "skipped (complete)",
        "exemplars": "skipped (complete)",  # it reads the grid, not the icons
        "neighbours": "skipped (complete)",  # it reads the activations only
        "render": "done",
        "plausibility": "done",  # it judges the icons
        "compose": "done",
    }


def test_sampled_fit_with_parallel_transform_is_reproducible(folder_run, tmp_path) -> None:
    s, _, _ = folder_run
    layouts = []
    for name in ("a", "b"):
        s2, _ = _settings(
            "data=folder",
            f"data.path={s.data.path}",
            f"run_dir={tmp_path / name}",
            "extract.samples_per_image=2",
            "reduce.fit_rows=60",
            "stages=[extract,reduce]",
        )
        manifest = run(s2, {})
        rd = manifest["stages"]["reduce"]
        assert rd["counts"]["fit_rows"] == 60 and rd["details"]["sampled_fit"] is True
        assert 0 < rd["details"]["trustworthiness_k10"] <= 1
        assert 0 < rd["details"]["knn_recall_k10"] <= 1
        g = zarr.open_group(str(tmp_path / name / "atlas.zarr"), mode="r")
        layouts.append(g["layers/blocks.2/layout"][:])
    a, b = layouts
    holes = np.isnan(a).any(axis=1)
    assert holes.sum() == 6  # two failed images and one duplicate, two samples each
    assert np.nanmin(a) >= 0 and np.nanmax(a) <= 1
    assert np.array_equal(a, b, equal_nan=True)


def test_two_models_on_the_same_images_get_one_aligned_layout(folder_run, tmp_path) -> None:
    """Run A (the toy model) and run B (the toy model with other weights: another model) on the
    same images; each run's reduce lists the other in reduce.align_with and both end with the
    same layout, fitted on the joint features (sampled fit + Ray transform)."""
    from safetensors.torch import save_file

    from atlas_core.errors import ConfigError
    from atlas_core.models.tiny import TinyNet

    s, _, _ = folder_run
    weights = tmp_path / "other.safetensors"
    save_file(TinyNet(seed=1).state_dict(), str(weights))
    common = ("data=folder", f"data.path={s.data.path}", "extract.samples_per_image=2")
    runs = {"a": (), "b": (f"model.weights={weights}",)}
    for name, extra in runs.items():
        s_x, _ = _settings(*common, *extra, f"run_dir={tmp_path / name}", "stages=[extract]")
        run(s_x, {})
    layouts, manifests = {}, {}
    for name, extra in runs.items():
        other = tmp_path / ("b" if name == "a" else "a")
        s_r, _ = _settings(
            *common,
            *extra,
            f"run_dir={tmp_path / name}",
            "stages=[reduce]",
            "reduce.fit_rows=60",
            f"reduce.align_with=[{{run_dir:'{other}',layer:blocks.2}}]",
        )
        manifests[name] = run(s_r, {})["stages"]["reduce"]
        g = zarr.open_group(str(tmp_path / name / "atlas.zarr"), mode="r")
        layouts[name] = g["layers/blocks.2/layout"][:]
    a, b = layouts["a"], layouts["b"]
    acts_a = zarr.open_group(str(tmp_path / "a" / "atlas.zarr"))["layers/blocks.2/acts"][:]
    acts_b = zarr.open_group(str(tmp_path / "b" / "atlas.zarr"))["layers/blocks.2/acts"][:]
    ok = ~np.isnan(a).any(axis=1)
    assert (~ok).sum() == 6 and ok.sum() == 140  # 2 failed + 1 duplicate image, 2 samples each
    assert not np.allclose(acts_a[ok], acts_b[ok], atol=1e-2)  # two different models
    assert np.array_equal(a, b, equal_nan=True)
    for m in manifests.values():
        assert m["details"]["sampled_fit"] and len(m["details"]["joint_layers"]) == 2
        assert m["details"]["trustworthiness_k10"] > 0.5

    # a run over other images cannot be aligned: stopped before any work, with the reason
    make_images(tmp_path / "few", 12, size=80)
    s_c, _ = _settings(
        "data=folder",
        f"data.path={tmp_path / 'few'}",
        f"run_dir={tmp_path / 'c'}",
        "stages=[extract]",
    )
    run(s_c, {})
    s_bad, _ = _settings(
        *common,
        f"run_dir={tmp_path / 'a'}",
        "stages=[reduce]",
        f"reduce.align_with=[{{run_dir:'{tmp_path / 'c'}',layer:blocks.2}}]",
    )
    with pytest.raises(ConfigError, match="align_with"):
        run(s_bad, {})


def test_joint_layers_of_one_run_share_one_layout(folder_run, tmp_path) -> None:
    """Both layers get the joint layout, and the fit saw both layers' features: the joint layout
    differs from a fit on either layer alone (same rows, same seed, same settings)."""
    s, _, _ = folder_run
    common = (
        "data=folder",
        f"data.path={s.data.path}",
        "extract.samples_per_image=2",
        "extract.layers=[blocks.1,blocks.2]",
        "reduce.fit_rows=60",
        "stages=[extract,reduce]",
    )
    joint, _ = _settings(*common, f"run_dir={tmp_path / 'joint'}", "reduce.joint_layers=[blocks.1]")
    rd = run(joint, {})["stages"]["reduce"]
    assert (
        rd["details"]["joint_layers"] == ["blocks.2", "blocks.1"] and rd["details"]["sampled_fit"]
    )
    g = zarr.open_group(str(tmp_path / "joint" / "atlas.zarr"), mode="r")
    a, b = g["layers/blocks.2/layout"][:], g["layers/blocks.1/layout"][:]
    assert np.array_equal(a, b, equal_nan=True) and (~np.isnan(a).any(axis=1)).sum() == 140
    assert g["layers/blocks.1/layout"].attrs["joint_layers"] == ["blocks.2", "blocks.1"]
    alone = {}
    for layer in ("blocks.2", "blocks.1"):
        one, _ = _settings(*common, f"run_dir={tmp_path / layer}", f"layer={layer}")
        run(one, {})
        alone[layer] = zarr.open_group(str(tmp_path / layer / "atlas.zarr"), mode="r")[
            f"layers/{layer}/layout"
        ][:]
        assert np.array_equal(np.isnan(alone[layer]), np.isnan(a))  # the same rows
    ok = ~np.isnan(a).any(axis=1)
    gaps = {k: float(np.abs(v[ok] - a[ok]).mean()) for k, v in alone.items()}
    log.info("joint layout vs single-layer fits: mean |difference| %s", gaps)
    assert min(gaps.values()) > 0.01, gaps


def test_one_run_of_several_layers_extracts_once(folder_run, tmp_path) -> None:
    """``layers=[blocks.1,blocks.2]``: one atlas per layer in <run_dir>/<layer>, both from one
    extraction (the second layer's extract stage reuses it), compared in <run_dir>/index.html;
    then changing ``layer`` of a finished run to another extracted layer redoes no extraction."""
    from pipelines.commands.sweep import run_one

    s, _, _ = folder_run
    base = ("data=folder", f"data.path={s.data.path}", "extract.samples_per_image=2")
    multi, resolved = _settings(
        *base, f"run_dir={tmp_path / 'multi'}", "layers=[blocks.1,blocks.2]"
    )
    _, index = run_one(multi, resolved)
    assert [r["run"] for r in index["runs"]] == ["blocks.1", "blocks.2"]
    assert all(r["status"] == "done" and r["icons"] > 0 for r in index["runs"])
    assert len(list((tmp_path / "multi" / "extractions").iterdir())) == 1
    m2 = json.loads((tmp_path / "multi" / "blocks.2" / "manifest.json").read_text())
    assert m2["stages"]["extract"]["details"]["extraction"].endswith(
        json.loads((tmp_path / "multi" / "blocks.1" / "manifest.json").read_text())["stages"][
            "extract"
        ]["fingerprint"]
    )
    assert (tmp_path / "multi" / "index.html").read_text().count("<img ") == 2
    # a finished single run switched to another extracted layer
    upto = "stages=[extract,reduce]"  # what the switch concerns; the later stages follow reduce
    one = (*base, f"run_dir={tmp_path / 'switch'}", "extract.layers=[blocks.1,blocks.2]", upto)
    run(*_settings(*one, "layer=blocks.2"))
    # without extract.layers: {blocks.1} is a subset of what the run extracted
    again = run(*_settings(*base, f"run_dir={tmp_path / 'switch'}", "layer=blocks.1", upto))
    assert again["stages"]["extract"]["status"] == "skipped (complete)"
    assert again["stages"]["reduce"]["status"] == "done"


def test_exemplars_are_the_closest_samples_and_their_patches_the_model_field(folder_run) -> None:
    """grid/<G>/exemplar_row against a brute-force cosine ranking over every sample, and one
    stored patch against a direct crop of its source image."""
    from atlas_core.exemplars import patch_box, source_box, take_patch
    from atlas_core.extract.sampling import map_positions
    from atlas_core.grid import cell_index
    from pipelines.core.common import cached_model

    s, manifest, run_dir = folder_run
    g = zarr.open_group(str(run_dir / "atlas.zarr"), mode="r")
    acts = g["layers/blocks.2/acts"][:].astype(np.float32)
    cells = cell_index(g["layers/blocks.2/layout"][:], 4)
    lv = g["layers/blocks.2/grid/4"]
    rows, kept = lv["exemplar_row"][:], lv["cell"][:]
    mean = lv["mean"][:]
    for i, (ix, iy) in enumerate(kept):
        mine = np.flatnonzero(cells == iy * 4 + ix)
        v = acts[mine]
        cos = v @ mean[i] / (np.linalg.norm(v, axis=1) * np.linalg.norm(mean[i]))
        want = mine[np.lexsort((mine, -cos))][: rows.shape[1]]
        assert rows[i][rows[i] >= 0].tolist() == want.tolist()
    ex = g["layers/blocks.2/exemplars"]
    assert ex["ok"][:].all() and manifest["stages"]["exemplars"]["counts"]["patches_failed"] == 0
    assert sorted(ex["row"][:].tolist()) == sorted(set(rows[rows >= 0].tolist()))  # each once
    row = int(ex["row"][3])
    model = cached_model(s.model.spec, "cpu", role="test")
    field = ex.attrs["field_px"]
    grid = tuple(g.attrs["layers"]["blocks.2"][1:])
    pos = map_positions(g["samples/pos"][row : row + 1], tuple(g.attrs["position_grid"]), grid)[0]
    image = Image.open(str(g["images/uri"][row // 2])).convert("RGB")
    box = source_box(
        patch_box((int(pos[0]), int(pos[1])), grid, field, 64), *image.size, model.preprocess
    )
    px, per = ex.attrs["patch_px"], ex.attrs["per_sheet"]
    want = take_patch(image, box, px).astype(int)
    got = _sheet_cell(run_dir, "patches", 3, px, per)  # a JPEG sheet: close, not equal
    assert np.abs(got - want).mean() < 12 and np.abs(got.mean((0, 1)) - want.mean((0, 1))).max() < 3
    assert 1 <= field <= 64 and ex.attrs["theoretical_px"] >= field
    # one thumbnail per source image: as many slots in use as distinct source files
    uris = g["images/uri"][:]
    used = ex["source"][:][ex["source"][:] >= 0]
    assert len(used) == len({uris[r // 2] for r in ex["row"][:]}) == len(set(uris[used]))


def test_unreadable_sources_are_counted_not_fatal(tmp_path) -> None:
    make_images(tmp_path / "imgs", 24, size=80)
    common = (
        "data=folder",
        f"data.path={tmp_path / 'imgs'}",
        f"run_dir={tmp_path / 'run'}",
        "exemplars.rows_per_task=16",
    )
    s, _ = _settings(*common, "stages=[extract,reduce,grid,render]")
    run(s, {})
    gone = sorted((tmp_path / "imgs").rglob("*.jpg"))[:3]
    for f in gone:
        f.unlink()
    s, _ = _settings(*common, "stages=[exemplars,plausibility,compose]")
    counts = run(s, {})["stages"]["exemplars"]["counts"]
    g = zarr.open_group(str(tmp_path / "run" / "atlas.zarr"), mode="r")
    ex = g["layers/blocks.2/exemplars"]
    uris = g["images/uri"][:]
    lost = np.isin(
        ex["row"][:] // g.attrs["k"], [i for i, u in enumerate(uris) if Path(u) in set(gone)]
    )
    log.info(
        "exemplar rows %d: ok %d, failed %d (sources deleted: %d)",
        counts["exemplar_rows"],
        counts["patches_ok"],
        counts["patches_failed"],
        len(gone),
    )
    assert lost.sum() > 0 and counts["patches_failed"] == lost.sum()
    assert counts["patches_ok"] + counts["patches_failed"] == counts["exemplar_rows"]
    px, per = ex.attrs["patch_px"], ex.attrs["per_sheet"]
    blank = [
        _sheet_cell(tmp_path / "run", "patches", int(i), px, per)[4:-4, 4:-4].min()
        for i in np.flatnonzero(lost)
    ]  # inside: JPEG's chroma smoothing reaches the edges
    assert (ex["ok"][:] == ~lost).all() and min(blank) >= 250  # left blank (white)
    assert (tmp_path / "run" / "viewer" / "index.html").is_file()
