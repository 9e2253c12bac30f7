"""Every figure of the diff against the brute-force loops of tests/compare/brute.py, on small
random pairs of runs with holes in either run; any blocking and any merge give the same diff."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from atlas_core.compare import (
    DiffAccumulator,
    both_kept,
    change_score,
    largest_changes,
    rows_in_cells,
)
from atlas_core.errors import ConfigError
from tests.compare import brute

LEVELS = (1, 3, 8)
K = 6


def _diff(p: brute.Pair, bounds: list[int], *, min_count: int = 2, top: int = 3, order=None):
    acc = DiffAccumulator(both_kept(p.la, p.lb), LEVELS, k=K, min_count=min_count, top=top)
    spans = list(itertools.pairwise(bounds))
    parts = {}
    for a, b in [spans[i] for i in (order if order is not None else range(len(spans)))]:
        parts[a] = acc.add(a, p.la[a:b], p.lb[a:b], **p.block(a, b))
    return acc.finish(), parts


def _blocks(n: int, seed: int) -> list[int]:
    cuts = np.sort(np.random.default_rng(seed).choice(np.arange(1, n), 6, replace=False))
    return [0, *cuts.tolist(), n]


@pytest.fixture(scope="module", params=[(400, 0, 0.08, 0.08), (300, 1, 0.0, 0.3)])
def case(request):
    n, seed, ha, hb = request.param
    p = brute.random_pair(n, K, seed, hole_a=ha, hole_b=hb)
    diff, _ = _diff(p, [0, 97, 98, 250, n])
    return p, diff


def _close(got: float, want: float | None) -> bool:
    return (want is None and math.isnan(got)) or (want is not None and abs(got - want) < 1e-6)


def test_flows_match_the_loops(case) -> None:
    p, diff = case
    for g in LEVELS:
        want = brute.level(p, g, 2)
        for side, cells, flows in (
            (diff.levels[g].a, want.cells_a, want.flows),
            (diff.levels[g].b, want.cells_b, want.back),
        ):
            assert side.cell.tolist() == cells
            for r, c in enumerate(cells):
                f = flows.get(c, {})
                both = sum(f.values())
                assert side.both[r] == both and side.destinations[r] == len(f)
                top = brute.top_flows(f, 3)
                got = [
                    (int(x), int(n))
                    for x, n in zip(side.flow_cell[r], side.flow_count[r], strict=True)
                    if x >= 0
                ]
                assert got == top
                for j, (_, n) in enumerate(top):
                    assert abs(side.flow_frac[r, j] - n / both) < 1e-6
                spread = 1 - sum((n / both) ** 2 for n in f.values()) if both else None
                assert _close(side.spread[r], spread)
                assert _close(side.stay[r], f.get(c, 0) / both if both else None)


def test_cell_counts_and_appear_empty_match_the_loops(case) -> None:
    p, diff = case
    for g in LEVELS:
        want = brute.level(p, g, 2)
        lv = diff.levels[g]
        assert lv.a.count.tolist() == [want.count_a[c] for c in want.cells_a]
        assert lv.b.count.tolist() == [want.count_b[c] for c in want.cells_b]
        assert lv.appeared.tolist() == sorted(set(want.cells_b) - set(want.cells_a))
        assert lv.emptied.tolist() == sorted(set(want.cells_a) - set(want.cells_b))
        assert (lv.a.ix_iy[:, 1] * g + lv.a.ix_iy[:, 0]).tolist() == want.cells_a
    assert any(len(diff.levels[g].appeared) + len(diff.levels[g].emptied) for g in LEVELS)


def test_preservation_per_cell_and_overall_match_the_loops(case) -> None:
    p, diff = case
    for g in LEVELS:
        want = brute.level(p, g, 2)
        for side, cells, ps in (
            (diff.levels[g].a, want.cells_a, want.p_a),
            (diff.levels[g].b, want.cells_b, want.p_b),
        ):
            for r, c in enumerate(cells):
                vals = ps.get(c, [])
                assert side.preservation_n[r] == len(vals)
                assert _close(side.preservation[r], sum(vals) / len(vals) if vals else None)
                assert abs(side.preservation_sum[r] - sum(vals)) < 1e-9
    o = brute.overall(p)
    f = diff.figures
    assert abs(f["neighbourhood_preservation"] - o["preservation"]) < 1e-12
    assert f["preservation_samples"] == o["preservation_samples"]
    assert 0 < f["neighbourhood_preservation"] < 1


def test_flips_and_transitions_match_the_loops(case) -> None:
    p, diff = case
    for g in LEVELS:
        want = brute.level(p, g, 2)
        for side, cells, fl, tr in (
            (diff.levels[g].a, want.cells_a, want.flips_a, want.trans_a),
            (diff.levels[g].b, want.cells_b, want.flips_b, want.trans_b),
        ):
            for r, c in enumerate(cells):
                f = fl.get(c, [])
                assert side.flips[r] == sum(f) and side.flip_n[r] == len(f)
                assert _close(side.flip_rate[r], sum(f) / len(f) if f else None)
                t = tr.get(c, {})
                assert side.transitions[r].tolist() == [t.get(n, 0) for n in brute.NAMES]
    o = brute.overall(p)
    f = diff.figures
    for key in ("kept_a", "kept_b", "kept_both", "flips", "flip_samples"):
        assert f[key] == o[key], key
    assert abs(f["flip_rate"] - o["flip_rate"]) < 1e-12
    assert f["transitions"] == o["transitions"]
    t = o["transitions"]
    labelled = sum(t.values())
    assert f["labelled_samples"] == labelled
    assert abs(f["accuracy_a"] - (t["right_to_right"] + t["right_to_wrong"]) / labelled) < 1e-12
    assert abs(f["accuracy_b"] - (t["right_to_right"] + t["wrong_to_right"]) / labelled) < 1e-12
    got = {
        tuple(int(v) for v in t): int(n)
        for t, n in zip(diff.triples, diff.triple_count, strict=True)
    }
    assert got == o["triples"]


def test_per_sample_figures_match_the_loops() -> None:
    p = brute.random_pair(200, K, 5)
    _, parts = _diff(p, [0, 64, 130, 200])
    keep = brute.kept(p)
    pres = brute.preservation(p)
    for row0, part in parts.items():
        for j in range(len(part.kept)):
            i = row0 + j
            assert part.kept[j] == keep[i]
            assert _close(part.preservation[j], pres[i])
            f = brute.flip(p, i, keep)
            assert part.flip[j] == (-1 if f is None else f)
            t = brute.transition(p, i, keep)
            assert part.transition[j] == (-1 if t is None else brute.NAMES.index(t))


def _same(d1, d2) -> None:
    assert d1.figures == d2.figures
    assert np.array_equal(d1.triples, d2.triples) and np.array_equal(
        d1.triple_count, d2.triple_count
    )
    for g in LEVELS:
        for s1, s2 in ((d1.levels[g].a, d2.levels[g].a), (d1.levels[g].b, d2.levels[g].b)):
            for name, v in vars(s1).items():
                assert np.array_equal(v, getattr(s2, name), equal_nan=True), name
        assert np.array_equal(d1.levels[g].appeared, d2.levels[g].appeared)
        assert np.array_equal(d1.levels[g].emptied, d2.levels[g].emptied)


def test_any_blocking_order_or_merge_gives_the_same_diff() -> None:
    p = brute.random_pair(500, K, 7)
    n = len(p.la)
    whole, _ = _diff(p, [0, n])
    ones, _ = _diff(p, list(range(n + 1)))  # one row per block
    _same(whole, ones)
    for seed in range(3):
        bounds = _blocks(n, seed)
        order = np.random.default_rng(seed).permutation(len(bounds) - 1)
        _same(whole, _diff(p, bounds, order=order)[0])
    kept = both_kept(p.la, p.lb)
    parts = []
    for a, b in ((0, 123), (123, 300), (300, n)):  # one partial per "task", merged
        acc = DiffAccumulator(kept, LEVELS, k=K, min_count=2, top=3)
        acc.add(a, p.la[a:b], p.lb[a:b], **p.block(a, b))
        parts.append(acc)
    parts[2].merge(parts[0])
    parts[2].merge(parts[1])
    _same(whole, parts[2].finish())


def test_largest_changes_rank_cells_by_their_score() -> None:
    p = brute.random_pair(400, K, 3)
    diff, _ = _diff(p, [0, 400])
    want = brute.level(p, 3, 2)
    a = diff.levels[3].a
    lost = {c: sum(1 - v for v in want.p_a.get(c, [])) for c in want.cells_a}
    flips = {c: sum(want.flips_a.get(c, [])) for c in want.cells_a}
    moved = {c: sum(f.values()) - max(f.values()) for c, f in want.flows.items()}
    for score, ref in (("neighbours", lost), ("flips", flips), ("moved", moved)):
        s = change_score(a, score)
        assert np.allclose(s, [ref.get(c, 0) for c in a.cell.tolist()])
        ranked = sorted(
            (c for c in ref if ref[c] > 0 and c in set(a.cell.tolist())), key=lambda c: (-ref[c], c)
        )
        assert a.cell[largest_changes(a, 4, score)].tolist() == ranked[:4]
    assert np.array_equal(change_score(a), change_score(a, "neighbours"))
    with pytest.raises(ConfigError, match="neighbours, flips, moved"):
        change_score(a, "loss")
    summary = diff.summary(largest=2)
    top = summary["levels"]["3"]["largest"]
    assert [c[1] * 3 + c[0] for c in (t["cell"] for t in top)] == ranked_first(lost, 2)


def ranked_first(ref: dict[int, float], n: int) -> list[int]:
    return sorted((c for c in ref if ref[c] > 0), key=lambda c: (-ref[c], c))[:n]


def test_rows_in_cells_selects_a_change_s_samples() -> None:
    p = brute.random_pair(300, K, 4)
    cells = [1, 5, 7]
    got = np.concatenate(
        [np.flatnonzero(rows_in_cells(p.la[a : a + 70], 3, cells)) + a for a in range(0, 300, 70)]
    )
    want = [i for i in range(300) if brute.cell_of(p.la[i], 3) in cells]
    assert got.tolist() == want


def test_bad_blocks_are_refused() -> None:
    p = brute.random_pair(100, K, 2)
    kept = both_kept(p.la, p.lb)
    acc = DiffAccumulator(kept, (4,), k=K)
    acc.add(0, p.la[:50], p.lb[:50], **p.block(0, 50))
    with pytest.raises(ValueError, match="added before"):
        acc.add(40, p.la[40:60], p.lb[40:60], **p.block(40, 60))
    with pytest.raises(ValueError, match="do not fit"):
        acc.add(90, p.la[90:], p.lb[80:], **p.block(90, 100))
    wrong = p.lb[50:60].copy()
    wrong[np.flatnonzero(kept[50:60])[0]] = np.nan
    with pytest.raises(ValueError, match="disagree with the kept mask"):
        acc.add(50, p.la[50:60], wrong, **p.block(50, 60))
    bad = p.block(50, 60) | {"knn_a": p.ka[50:60] + 1000}
    with pytest.raises(ValueError, match=r"\[-1, 100\)"):
        acc.add(50, p.la[50:60], p.lb[50:60], **bad)
    with pytest.raises(ValueError, match="k=6 columns"):
        acc.add(50, p.la[50:60], p.lb[50:60], **(p.block(50, 60) | {"knn_b": p.kb[50:60, :3]}))
    with pytest.raises(ValueError, match="never added"):
        acc.finish()
    assert acc.finish(require_all=False).figures["rows"] == 50
    # the refused blocks left no trace: finishing the rows gives the diff of a clean pass
    acc.add(50, p.la[50:], p.lb[50:], **p.block(50, 100))
    clean = DiffAccumulator(kept, (4,), k=K)
    clean.add(0, p.la, p.lb, **p.block(0, 100))
    d1, d2 = acc.finish(), clean.finish()
    assert d1.figures == d2.figures
    assert np.array_equal(d1.levels[4].a.flow_count, d2.levels[4].a.flow_count)


def test_without_knn_or_predictions_those_figures_are_absent() -> None:
    p = brute.random_pair(120, K, 6)
    acc = DiffAccumulator(both_kept(p.la, p.lb), (2,))
    part = acc.add(0, p.la, p.lb)
    d = acc.finish()
    assert np.isnan(part.preservation).all() and (part.flip == -1).all()
    assert d.figures["neighbourhood_preservation"] is None and d.figures["flip_rate"] is None
    assert np.isnan(d.levels[2].a.preservation).all()
    want = brute.level(p, 2, 1)
    assert d.levels[2].a.flow_count[:, 0].tolist() == [
        brute.top_flows(want.flows[c], 1)[0][1] for c in want.cells_a
    ]


def test_arrays_name_every_table_column(case) -> None:
    _p, diff = case
    arrays = diff.arrays(largest=4)
    lv = diff.levels[8]
    assert np.array_equal(arrays["levels/8/a/cell"], lv.a.ix_iy)
    assert np.array_equal(arrays["levels/8/b/flow_frac"], lv.b.flow_frac, equal_nan=True)
    ix_iy = arrays["levels/8/emptied"]
    assert (ix_iy[:, 1] * 8 + ix_iy[:, 0]).tolist() == lv.emptied.tolist()
    rows = arrays["levels/8/largest"]
    assert rows.tolist() == largest_changes(lv.a, 4).tolist()
    assert np.array_equal(arrays["levels/8/largest_score"], change_score(lv.a)[rows])
    assert {k.split("/")[-1] for k in arrays if k.startswith("levels/1/a/")} == set(vars(lv.a)) - {
        "size"
    }


def test_table_dtypes_are_the_documented_ones(case) -> None:
    _p, diff = case
    t = diff.levels[3].a
    for name in ("flow_frac", "spread", "stay", "preservation", "flip_rate"):
        assert getattr(t, name).dtype == np.float32, name
    for name in ("cell", "count", "both", "flow_cell", "flow_count", "flips", "transitions"):
        assert getattr(t, name).dtype == np.int64, name
    assert t.ix_iy.dtype == np.int32
