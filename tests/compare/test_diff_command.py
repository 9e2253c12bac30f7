"""``atlas diff`` on a real pair of runs (the tiny network's early and late checkpoints over the
same images): every array and figure it stores against Python loops over the two stores read
with plain zarr (a brute-force cosine kNN over every pair of samples, then tests/compare/brute.py
for flows, preservation, flips and transitions); runs over other images refused."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import zarr

from atlas_core.compare.runs import open_pair
from atlas_core.errors import ConfigError
from atlas_core.extract import sample_positions
from pipelines.commands import diff as command
from tests.compare import brute

pytestmark = pytest.mark.ray
LAYER = "blocks.2"
K = 6
LEVELS = (4, 8)


def _brute_knn(x: np.ndarray, kept: list[bool], k: int) -> list[list[int]]:
    """Each kept row's k most cosine-similar other kept rows (ties: lower row), one pair at a
    time in float64."""
    norms = [math.sqrt(float(v @ v)) for v in x]
    out = []
    for i in range(len(x)):
        if not kept[i]:
            out.append([-1] * k)
            continue
        sims = sorted(
            (-float(x[i] @ x[j]) / (norms[i] * norms[j]), j)
            for j in range(len(x))
            if j != i and kept[j]
        )
        found = [j for _, j in sims[:k]]
        out.append(found + [-1] * (k - len(found)))
    return out


def _pair(early, late) -> brute.Pair:
    """Both stores read whole with zarr, the kNN graphs by brute force."""
    ga = zarr.open_group(str(early / "atlas.zarr"), mode="r")
    gb = zarr.open_group(str(late / "atlas.zarr"), mode="r")
    la = ga[f"layers/{LAYER}/layout"][:].astype(np.float64)
    lb = gb[f"layers/{LAYER}/layout"][:].astype(np.float64)
    image = ga["samples/image"][:]
    p = brute.Pair(la, lb, None, None, None, None, None)  # type: ignore[arg-type]
    keep = brute.kept(p)
    p.ka = np.array(_brute_knn(ga[f"layers/{LAYER}/acts"][:].astype(np.float64), keep, K))
    p.kb = np.array(_brute_knn(gb[f"layers/{LAYER}/acts"][:].astype(np.float64), keep, K))
    p.pa = ga["images/top_class"][:][image, 0].astype(np.int64)
    p.pb = gb["images/top_class"][:][image, 0].astype(np.int64)
    p.y = ga["images/label"][:][image].astype(np.int64)
    return p


@pytest.fixture(scope="module")
def diffed(tiny_pair):
    """The command's whole path (``run_diff``, what ``main`` runs) into its own folder."""
    out = tiny_pair.base / "diff-k6"
    command.run_diff(str(tiny_pair.early), str(tiny_pair.late), k=K, out=str(out))
    return out, _pair(tiny_pair.early, tiny_pair.late)


def _close(got: float, want: float | None) -> bool:
    return (want is None and math.isnan(got)) or (want is not None and abs(got - want) < 1e-6)


def test_per_sample_arrays_equal_the_loops(diffed) -> None:
    out, p = diffed
    g = zarr.open_group(str(out / "diff.zarr"), mode="r")
    assert g.attrs["format"] == "activation-atlas-diff" and g.attrs["k"] == K
    keep = brute.kept(p)
    pres = brute.preservation(p)
    assert g["samples/kept"][:].astype(bool).tolist() == keep
    assert g["samples/knn_a"][:].tolist() == p.ka.tolist()
    assert g["samples/knn_b"][:].tolist() == p.kb.tolist()
    got_p, flip, trans = (
        g["samples/preservation"][:],
        g["samples/flip"][:],
        g["samples/transition"][:],
    )
    for i in range(len(keep)):
        assert _close(got_p[i], pres[i]), i
        f, t = brute.flip(p, i, keep), brute.transition(p, i, keep)
        assert flip[i] == (-1 if f is None else f)
        assert trans[i] == (-1 if t is None else brute.NAMES.index(t))
    assert 0 < sum(keep) == len(keep)  # every image decoded: no hole


def _check_side(side, cells: list[int], flows: dict, ps: dict, fl: dict, tr: dict, g: int) -> None:
    cell = side["cell"][:]
    assert (cell[:, 1] * g + cell[:, 0]).tolist() == cells
    for r, c in enumerate(cells):
        f = flows.get(c, {})
        both = sum(f.values())
        assert side["both"][r] == both and side["destinations"][r] == len(f)
        top = brute.top_flows(f, 5)
        got = [
            (int(x), int(n))
            for x, n in zip(side["flow_cell"][r], side["flow_count"][r], strict=True)
            if x >= 0
        ]
        assert got == top
        assert all(abs(side["flow_frac"][r, j] - n / both) < 1e-6 for j, (_, n) in enumerate(top))
        assert _close(side["spread"][r], 1 - sum((n / both) ** 2 for n in f.values()))
        assert _close(side["stay"][r], f.get(c, 0) / both)
        vals = ps.get(c, [])
        assert side["preservation_n"][r] == len(vals)
        assert _close(side["preservation"][r], sum(vals) / len(vals) if vals else None)
        assert abs(side["preservation_sum"][r] - sum(vals)) < 1e-9
        flips = fl.get(c, [])
        assert side["flips"][r] == sum(flips) and side["flip_n"][r] == len(flips)
        assert _close(side["flip_rate"][r], sum(flips) / len(flips) if flips else None)
        t = tr.get(c, {})
        assert side["transitions"][r].tolist() == [t.get(n, 0) for n in brute.NAMES]


def _flat(ix_iy: np.ndarray, size: int) -> list[int]:
    return sorted((ix_iy[:, 1] * size + ix_iy[:, 0]).tolist())


def test_cell_tables_equal_the_loops_and_the_runs_own_grids(diffed, tiny_pair) -> None:
    out, p = diffed
    g = zarr.open_group(str(out / "diff.zarr"), mode="r")
    runs = {
        "a": zarr.open_group(str(tiny_pair.early / "atlas.zarr"), mode="r"),
        "b": zarr.open_group(str(tiny_pair.late / "atlas.zarr"), mode="r"),
    }
    for size in LEVELS:
        want = brute.level(p, size, g.attrs["min_count"])
        lv = g[f"levels/{size}"]
        _check_side(lv["a"], want.cells_a, want.flows, want.p_a, want.flips_a, want.trans_a, size)
        _check_side(lv["b"], want.cells_b, want.back, want.p_b, want.flips_b, want.trans_b, size)
        for s in "ab":  # the diff's cells are each run's own kept cells, with its counts
            grid = runs[s][f"layers/{LAYER}/grid/{size}"]
            assert np.array_equal(lv[s]["cell"][:], grid["cell"][:])
            assert np.array_equal(lv[s]["count"][:], grid["count"][:])
        assert _flat(lv["appeared"][:], size) == sorted(set(want.cells_b) - set(want.cells_a))
        assert _flat(lv["emptied"][:], size) == sorted(set(want.cells_a) - set(want.cells_b))
        lost = {c: round(sum(1 - v for v in want.p_a.get(c, [])), 9) for c in want.cells_a}
        ranked = sorted((c for c in want.cells_a if lost[c] > 1e-12), key=lambda c: (-lost[c], c))
        rows = lv["largest"][:]
        assert [want.cells_a[r] for r in rows] == ranked[: len(rows)] and len(rows) == len(ranked)
        assert np.allclose(lv["largest_score"][:], [lost[c] for c in ranked])


def test_overall_figures_and_json_equal_the_loops(diffed) -> None:
    out, p = diffed
    o = brute.overall(p)
    report = json.loads((out / "diff.json").read_text())
    assert abs(report["neighbourhood_preservation"] - o["preservation"]) < 1e-12
    assert abs(report["flip_rate"] - o["flip_rate"]) < 1e-12
    for key in ("kept_both", "flips", "flip_samples", "preservation_samples"):
        assert report[key] == o[key], key
    assert report["transitions"] == o["transitions"] and report["k"] == K
    g = zarr.open_group(str(out / "diff.zarr"), mode="r")
    got = {
        tuple(int(v) for v in t): int(n)
        for t, n in zip(g["predictions/triples"][:], g["predictions/triple_count"][:], strict=True)
    }
    assert got == o["triples"]
    assert report["runs"]["a"]["name"] == "early" and report["positions"] == "equal"
    assert set(report["levels"]) == {"4", "8"}
    # the late checkpoint learnt the stripes: flips are wrong -> right, none right -> wrong
    assert o["transitions"]["wrong_to_right"] > 0 and o["transitions"]["right_to_wrong"] == 0


def test_json_prints_what_diff_json_holds(tiny_pair, tmp_path, capsys) -> None:
    out = tmp_path / "d"
    args = [str(tiny_pair.early), str(tiny_pair.late), "--k", str(K), "--out", str(out), "--json"]
    assert command.main(args) == 0
    printed = json.loads(capsys.readouterr().out)
    report = json.loads((out / "diff.json").read_text())
    assert printed == report
    assert {"neighbourhood_preservation", "flip_rate", "levels"} <= set(printed)
    assert (out / "diff.html").is_file() and (out / "data" / "level-8.js").is_file()


def _copy(run, dest, edit) -> str:
    """The run's store and manifest copied to ``dest``, then changed by ``edit(group)``."""
    shutil.copytree(run / "atlas.zarr", dest / "atlas.zarr")
    shutil.copy(run / "manifest.json", dest / "manifest.json")
    edit(zarr.open_group(str(dest / "atlas.zarr"), mode="r+"))
    return str(dest)


def _set(key: str, row: int, value):
    def edit(g):
        a = g[key][:]
        a[row] = value
        g[key][:] = a

    return edit


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (_set("images/uri", 3, "/elsewhere/other.png"), "images/uri differ from image 3"),
        (_set("images/crop", 5, [0, 0, 10, 10]), "images/crop differ from image 5"),
        (_set("samples/pos", 7, [0, 0]), "samples/pos differ from sample row 7"),
        (lambda g: g.attrs.update({"n_images": 191}), "n_images is 191 in B"),
    ],
)
def test_runs_over_other_images_are_refused(tiny_pair, tmp_path, capsys, edit, named) -> None:
    other = _copy(tiny_pair.late, tmp_path / "other", edit)
    assert command.main([str(tiny_pair.early), other]) == 2
    err = capsys.readouterr().err
    assert named in err and "same images" in err
    assert not (tmp_path / "other" / "diffs").exists()  # nothing written


def test_positions_on_another_grid_match_within_a_cell(tiny_pair, tmp_path) -> None:
    """Two models of different input sizes sample on different grids: the same seeded draw is
    accepted, another seed's is refused."""
    g = zarr.open_group(str(tiny_pair.late / "atlas.zarr"), mode="r")
    n = g.attrs["n_images"]

    def regrid(seed):
        def edit(h):
            h.attrs.update({"position_grid": [13, 13]})
            h["samples/pos"][:] = sample_positions(np.arange(n), 1, (13, 13), seed=seed)

        return edit

    same = _copy(tiny_pair.late, tmp_path / "same", regrid(0))
    assert "within one cell" in open_pair(str(tiny_pair.early), same).positions
    other = _copy(tiny_pair.late, tmp_path / "other", regrid(1))
    with pytest.raises(ConfigError, match="samples/pos differ"):
        open_pair(str(tiny_pair.early), other)


def test_bad_settings_stop_before_any_work(tiny_pair, tmp_path, capsys) -> None:
    out = tmp_path / "d"
    assert (
        command.main([str(tiny_pair.early), str(tiny_pair.late), "--k", "0", "--out", str(out)])
        == 2
    )
    assert "k: 0 is not valid" in capsys.readouterr().err and not out.exists()
    args = [str(tiny_pair.early), str(tiny_pair.late), "--largest", "-1", "--out", str(out)]
    assert command.main(args) == 2
    assert "largest: -1 is not valid" in capsys.readouterr().err and not out.exists()
    assert command.main([str(tiny_pair.early), str(tmp_path / "nothing")]) == 2
    assert "finished run directory" in capsys.readouterr().err
