"""Exemplar choice against brute force, and patch geometry against the model's preprocessing."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from atlas_core.exemplars import (
    cosine_to_cells,
    merge_top_k,
    patch_box,
    source_box,
    take_patch,
    top_k_per_cell,
)
from atlas_core.models.preprocess import Preprocess
from atlas_core.models.receptive import receptive_field


def _brute(acts, cells, kept, means, k):
    out = {}
    for j, c in enumerate(kept):
        m = means[j] / np.linalg.norm(means[j])
        scored = []
        for r in range(len(acts)):
            if cells[r] != c or not np.isfinite(acts[r]).all():
                continue
            n = np.linalg.norm(acts[r])
            scored.append((-(acts[r] @ m / n if n > 0 else 0.0), r))
        out[j] = [r for _, r in sorted(scored)[:k]]
    return out


def test_top_k_of_split_ranges_equals_brute_force_over_all_rows() -> None:
    rng = np.random.default_rng(0)
    n, c, k = 600, 6, 4
    acts = rng.normal(size=(n, c)).astype(np.float32)
    acts[[5, 77]] = np.nan  # holes never chosen
    acts[10] = acts[11]  # a tie: the lower row wins
    cells = rng.integers(-1, 12, n)
    kept = np.array([0, 2, 3, 5, 7, 11])
    means = rng.normal(size=(len(kept), c)).astype(np.float32)
    unit = means / np.linalg.norm(means, axis=1, keepdims=True)
    want = _brute(acts, cells, kept, means, k)
    for bounds in ([0, n], [0, 100, 101, 350, n], list(range(0, n + 1, 60))):
        parts = []
        for a, b in itertools.pairwise(bounds):
            idx, score = cosine_to_cells(acts[a:b], cells[a:b], kept, unit)
            parts.append(top_k_per_cell(idx, score, np.arange(a, b), k))
        rows, scores = merge_top_k(parts, len(kept), k)
        for j in range(len(kept)):
            got = [int(r) for r in rows[j] if r >= 0]
            assert got == want[j], (bounds, j)
            assert np.isnan(scores[j, len(got) :]).all()


def test_cosine_matches_a_direct_loop() -> None:
    rng = np.random.default_rng(1)
    acts = rng.normal(size=(50, 5)).astype(np.float32)
    cells = rng.integers(0, 4, 50)
    kept = np.array([1, 3])
    means = rng.normal(size=(2, 5)).astype(np.float32)
    unit = means / np.linalg.norm(means, axis=1, keepdims=True)
    idx, score = cosine_to_cells(acts, cells, kept, unit)
    for r in range(50):
        if cells[r] in (1, 3):
            j = int(np.flatnonzero(kept == cells[r])[0])
            want = acts[r] @ unit[j] / np.linalg.norm(acts[r])
            assert idx[r] == j and score[r] == pytest.approx(want, abs=1e-5)
        else:
            assert idx[r] == -1


@pytest.mark.parametrize(
    "mode,wh", [("crop", (300, 200)), ("crop", (180, 400)), ("squash", (90, 70))]
)
def test_a_patch_box_maps_back_to_the_pixels_the_model_saw(mode: str, wh: tuple[int, int]) -> None:
    w, h = wh
    yy, xx = np.mgrid[0:h, 0:w]
    src = np.stack([xx * 255 // (w - 1), yy * 255 // (h - 1), np.full_like(xx, 128)], -1)
    image = Image.fromarray(src.astype(np.uint8))
    pre = Preprocess(size=64, mode=mode)
    seen = pre.to_array(image).astype(int)  # what the model's input holds
    for pos in [(0, 0), (3, 5), (7, 7)]:
        box = patch_box(pos, (8, 8), 16, 64)
        assert box[2] - box[0] == 16 and 0 <= box[0] and box[2] <= 64
        sb = source_box(box, w, h, pre)
        patch = take_patch(image, sb, 16).astype(int)
        x, y = int(box[0]), int(box[1])
        # the patch's colours are the input's colours over the same box (up to resampling)
        assert np.abs(patch.mean((0, 1)) - seen[y : y + 16, x : x + 16].mean((0, 1))).max() < 6


class _Stack(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.ReLU())
        self.c = nn.Sequential(nn.Conv2d(4, 4, 5, padding=2), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(self.b(self.a(x)))


def test_receptive_field_is_measured_not_guessed() -> None:
    torch.manual_seed(0)
    model = _Stack().eval()
    # r = 1 + sum (k_i - 1) * prod(strides before i): 1 + 2 + 2 * 1 + 4 * 2 = 13
    rf = receptive_field(model, "c", 64)
    assert rf.theoretical == 13 and rf.grid == (32, 32)
    assert receptive_field(model, "a", 64).theoretical == 3
    assert receptive_field(model, "b", 64).theoretical == 5
    assert 1 <= rf.effective <= rf.theoretical
    assert rf.side("effective") == rf.effective
    with pytest.raises(ValueError):
        rf.side("guessed")
