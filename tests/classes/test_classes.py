"""Class views and failure-mode patches against brute-force loops and a model built to flip."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from atlas_core.classes import (
    attribution_to,
    class_rows,
    comparison_x,
    count_flips,
    noise_patch,
    paste,
    patch_origin,
    resized,
    top_attribution_class,
)
from atlas_core.grid import attribution_per_cell, cell_index, class_heat


def _attr(seed: int = 0, s: int = 400, a: int = 4, n_classes: int = 12):
    """Per-sample attribution over each image's top-a classes (distinct per row), some holes."""
    rng = np.random.default_rng(seed)
    classes = np.stack([rng.choice(n_classes, a, replace=False) for _ in range(s)])
    values = rng.normal(size=(s, a)).astype(np.float32)
    values[[3, 50, 51]] = np.nan
    return classes, values


def test_class_filter_selects_what_a_brute_force_loop_selects() -> None:
    classes, values = _attr()
    for c, top_n in ((2, 10), (5, 0), (7, 1000)):
        want_own, scored = set(), []
        for r in range(len(values)):
            if np.isnan(values[r]).any():
                continue
            if classes[r][int(np.argmax(values[r]))] == c:
                want_own.add(r)
            v = sum(float(x) for k, x in zip(classes[r], values[r], strict=True) if k == c)
            if v > 0:
                scored.append((-v, r))
        want = want_own | {r for _, r in sorted(scored)[:top_n]}
        assert class_rows(classes, values, c, top_n).tolist() == sorted(want)
    assert (top_attribution_class(classes, values)[[3, 50]] == -1).all()


def test_comparison_x_is_the_clipped_scaled_attribution_difference() -> None:
    classes, values = _attr(seed=1)
    ok = ~np.isnan(values).any(axis=1)
    a = attribution_to(classes[ok], values[ok], 1)
    b = attribution_to(classes[ok], values[ok], 4)
    x = comparison_x(a, b)
    d = [float(bb) - float(aa) for aa, bb in zip(a, b, strict=True)]
    scale = float(np.percentile(np.abs(d), 99))
    for xi, di in zip(x, d, strict=True):
        assert xi == pytest.approx(max(-1.0, min(1.0, di / scale)), abs=1e-6)
    assert (np.abs(x) <= 1).all() and (np.abs(x) == 1).sum() >= 1
    assert (comparison_x(np.zeros(3), np.zeros(3)) == 0).all()


def test_heat_equals_per_cell_mean_attribution() -> None:
    rng = np.random.default_rng(2)
    classes, values = _attr(seed=2)
    xy = rng.random((len(values), 2))
    cells = cell_index(xy, 4)
    kept = np.unique(cells)
    heat = np.array([0, 3, 11])
    got = class_heat(cells, kept, classes, values, heat)
    for i, cell in enumerate(kept):
        rows = [r for r in range(len(values)) if cells[r] == cell and not np.isnan(values[r]).any()]
        for j, c in enumerate(heat):
            vals = [
                sum(float(x) for k, x in zip(classes[r], values[r], strict=True) if k == c)
                for r in rows
            ]
            assert got[i, j] == pytest.approx(np.mean(vals) if rows else 0.0, abs=1e-5)
    # the same convention as the cell labels' mean attribution
    top_c, top_v = attribution_per_cell(cells, kept, classes, values, 12, top=12)
    for i in range(len(kept)):
        for j, c in enumerate(heat):
            assert got[i, j] == pytest.approx(top_v[i][list(top_c[i]).index(c)], abs=1e-5)


def test_paste_puts_the_patch_at_each_corner() -> None:
    imgs = np.zeros((2, 20, 20, 3), np.uint8)
    patch = np.full((4, 4, 3), 9, np.uint8)
    for corner, (t, left) in {
        "tl": (2, 2),
        "tr": (2, 14),
        "bl": (14, 2),
        "br": (14, 14),
        "centre": (8, 8),
    }.items():
        out = paste(imgs, patch, corner, margin=2)
        assert patch_origin(corner, 20, 4, 2) == (t, left)
        assert (out[:, t : t + 4, left : left + 4] == 9).all() and out.sum() == 2 * 16 * 3 * 9
    assert (imgs == 0).all()  # a copy
    assert (noise_patch(5, 1) == noise_patch(5, 1)).all() and noise_patch(5, 1).std() > 40
    assert resized(patch, 8).shape == (8, 8, 3)


class _RedDetector(nn.Module):
    """Class 0 unless some 8 x 8 window is strongly red: then class 1 (the patch's class)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        red = x[:, 0] - x[:, 1:].mean(dim=1)  # red excess, in normalized units
        score = nn.functional.avg_pool2d(red[:, None], 8, stride=1).amax(dim=(1, 2, 3))
        return torch.stack([torch.zeros_like(score), 4.0 * (score - 2.0)], dim=1)


def _predict(model: nn.Module):
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    def predict(arrays: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(arrays).permute(0, 3, 1, 2).float() / 255
        with torch.no_grad():
            return model((x - mean) / std).argmax(dim=1).numpy()

    return predict


def test_flip_counts_equal_a_direct_loop_and_the_strongest_input_beats_noise() -> None:
    rng = np.random.default_rng(3)
    grey = rng.integers(90, 140, (24, 48, 48, 1), dtype=np.uint8).repeat(3, axis=3)
    predict = _predict(_RedDetector())
    assert (predict(grey) == 0).all()  # every image is class a = 0
    red = np.zeros((16, 16, 3), np.uint8)
    red[..., 0] = 255  # class b's strongest input
    pale = np.full((16, 16, 3), 128, np.uint8)
    sizes, corners, seeds = (6, 12), ("tl", "br", "centre"), (11, 12)
    counts = count_flips(predict, grey, [red, pale], sizes, corners, 1, seeds, margin=2)
    for pi, patch in enumerate([red, pale, None]):
        for si, side in enumerate(sizes):
            p = noise_patch(side, seeds[si]) if patch is None else resized(patch, side)
            for ci, corner in enumerate(corners):
                direct = sum(
                    int(predict(paste(grey[i : i + 1], p, corner, 2))[0] == 1)
                    for i in range(len(grey))
                )
                assert counts[pi, si, ci] == direct
    rates = counts / len(grey)
    assert (rates[0, 1] == 1.0).all()  # the red patch at 12 px flips every image, everywhere
    assert rates[0].mean() > rates[-1].mean() and rates[-1].max() == 0  # noise never does
    assert rates[1].max() == 0


def test_the_article_pairs_preset_names_real_imagenet_classes() -> None:
    from atlas_core.models.card import ModelCard
    from pipelines.core.common import cached_model
    from tests.conftest import debug_settings

    s, _ = debug_settings("experiment=article_pairs", "model=efficientnet_lite0")
    model = ModelCard.of(cached_model(s.model.spec, "cpu", role="test"), [])
    got = [[model.class_name(model.class_index(c)) for c in pair] for pair in s.classes.pairs]
    assert [[n.split(",")[0] for n in pair] for pair in got] == [
        ["snorkel", "scuba diver"],
        ["grey whale", "great white shark"],
        ["frying pan", "wok"],
        ["fireboat", "streetcar"],
    ]
    assert s.extract.attr_classes == 5
    from atlas_core.errors import ConfigError

    with pytest.raises(ConfigError, match="class"):
        model.class_index("scuba dvier")
