"""Plausibility: an icon against its own cell's exemplars in a judge's pooled features, against
brute-force loops over cells and exemplars."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from atlas_core.quality import exemplar_reference, plausibility, pooled_features


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _loop(icons: np.ndarray, ex: np.ndarray, ok: np.ndarray):
    m = len(icons)
    protos = {}
    for j in range(m):
        rows = [ex[j, k] for k in range(ex.shape[1]) if ok[j, k]]
        if rows:
            protos[j] = _unit(np.mean(rows, axis=0))
    margin, rank = np.full(m, np.nan), np.zeros(m, int)
    for i in range(m):
        if i not in protos:
            continue
        own = float(icons[i] @ protos[i])
        others = [float(icons[i] @ protos[j]) for j in protos if j != i]
        margin[i] = own - np.mean(others)
        rank[i] = 1 + sum(o > own for o in others)
    return margin, rank


def test_margin_and_rank_equal_a_loop_over_cells() -> None:
    rng = np.random.default_rng(0)
    m, k, d = 12, 5, 16
    centres = _unit(rng.normal(size=(m, d)))
    ex = _unit(centres[:, None] + 0.6 * rng.normal(size=(m, k, d))).astype(np.float32)
    icons = _unit(centres + rng.normal(size=(m, d)) * np.linspace(0.1, 3, m)[:, None])
    ok = rng.random((m, k)) > 0.2
    ok[3] = False  # a cell without exemplars
    p = plausibility(icons.astype(np.float32), ex, ok)
    margin, rank = _loop(icons, ex, ok)
    assert np.allclose(p.margin, margin, atol=1e-5, equal_nan=True)
    assert np.array_equal(p.rank, rank) and p.rank[3] == 0
    s = p.summary()
    assert s["cells"] == 11 and s["top1"] == round(float((rank[rank > 0] == 1).mean()), 4)
    assert s["chance_top5"] == round(5 / 11, 4)
    assert p.rank[0] == 1 and p.margin[0] > p.margin[-1]  # the clean icon finds its cell


def test_the_exemplar_reference_leaves_the_probe_out() -> None:
    rng = np.random.default_rng(1)
    m, k, d = 8, 4, 10
    ex = _unit(rng.normal(size=(m, k, d))).astype(np.float32)
    ok = np.ones((m, k), bool)
    ok[2, 1:] = False  # one exemplar only: no reference
    ok[5, 0] = False  # the probe is the first exemplar that exists
    ref = exemplar_reference(ex, ok)
    for i in range(m):
        first = int(np.argmax(ok[i]))
        rest = [ex[i, j] for j in range(k) if ok[i, j] and j != first]
        if not rest:
            assert ref.rank[i] == 0 and np.isnan(ref.margin[i])
            continue
        probe = ex[i, first]
        own = float(probe @ _unit(np.mean(rest, axis=0)))
        others = [float(probe @ _unit(ex[j][ok[j]].mean(0))) for j in range(m) if j != i]
        assert abs(ref.margin[i] - (own - np.mean(others))) < 1e-5
        assert ref.rank[i] == 1 + sum(o > own for o in others)


def test_pooled_features_are_the_unit_input_of_the_last_linear_layer() -> None:
    class Pre:
        def normalize(self, x: torch.Tensor) -> torch.Tensor:
            return (x - 0.5) / 0.5

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4)
    )
    imgs = np.random.default_rng(2).integers(0, 256, (5, 20, 20, 3), dtype=np.uint8)
    got = pooled_features(net, Pre(), imgs, input_px=16, batch=2)
    x = torch.nn.functional.interpolate(
        torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255,
        size=(16, 16),
        mode="bilinear",
        antialias=True,
    )
    with torch.no_grad():
        want = torch.nn.functional.normalize(net[:4](Pre().normalize(x)), dim=1).numpy()
    assert got.shape == (5, 6) and np.allclose(got, want, atol=1e-5)


def test_a_pool_ranks_among_its_cells_only() -> None:
    """Above ``pool`` cells, each icon is ranked among a seeded sample of cells: the margin is
    over the pool's other cells and the rank counts only them (a loop over the pool)."""
    from atlas_core.quality import choose_pool

    rng = np.random.default_rng(3)
    m, k, d = 30, 3, 12
    ex = _unit(rng.normal(size=(m, k, d))).astype(np.float32)
    ok = np.ones((m, k), bool)
    icons = _unit(ex.mean(1) + 0.5 * rng.normal(size=(m, d))).astype(np.float32)
    pool = choose_pool(np.arange(m), 7, seed=1)
    assert len(pool) == 7 and np.array_equal(pool, choose_pool(np.arange(m), 7, seed=1))
    assert np.array_equal(choose_pool(np.arange(5), 7), np.arange(5))  # few cells: all of them
    p = plausibility(icons, ex, ok, pool=pool)
    protos = {j: _unit(ex[j].mean(0)) for j in range(m)}
    for i in range(m):
        own = float(icons[i] @ protos[i])
        others = [float(icons[i] @ protos[j]) for j in pool if j != i]
        assert abs(p.margin[i] - (own - np.mean(others))) < 1e-5
        assert p.rank[i] == 1 + sum(o > own for o in others)
        assert p.candidates[i] == len(others) + 1
    s = p.summary()
    assert s["ranked_among"] == 8 and abs(s["chance_top5"] - np.mean(5 / p.candidates)) < 1e-4
