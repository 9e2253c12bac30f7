"""CUDA paths, marked ``gpu``: they skip without a CUDA device (as on CI) and run where one is."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from atlas_core.extract import ActivationExtractor, sample_positions
from atlas_core.featvis import IconRecipe, IconRenderer, IconSettings
from atlas_core.models import ModelSpec, load_model

pytestmark = pytest.mark.gpu


def test_bf16_channels_last_extraction_matches_fp32_cpu() -> None:
    cpu = load_model(ModelSpec())
    gpu = load_model(ModelSpec(), device="cuda")
    grids = {"blocks.4": (14, 14)}
    x = torch.rand(8, 3, 224, 224)
    pos = sample_positions(np.arange(8), 2, (14, 14), seed=0)
    ref = ActivationExtractor(cpu, ["blocks.4"], grids)(cpu.preprocess.normalize(x), pos)
    for dtype, tol in ((torch.bfloat16, 0.05), (torch.float16, 0.01), (None, 1e-3)):
        out = ActivationExtractor(gpu, ["blocks.4"], grids, device="cuda", amp_dtype=dtype)(
            gpu.preprocess.normalize(x), pos
        )
        a, b = out.acts["blocks.4"], ref.acts["blocks.4"]
        assert np.abs(a - b).max() / np.abs(b).max() < tol, dtype


def test_rendering_on_cuda_picks_a_batch_and_raises_the_objective() -> None:
    m = load_model(ModelSpec(), device="cuda")
    recipe = IconRecipe.from_settings(IconSettings(icon_px=64, steps=32, attempts=1))
    r = IconRenderer(m, "blocks.4", recipe, device="cuda")
    assert r.suggest_group() >= 16
    d = np.abs(np.random.default_rng(0).normal(size=(16, 112))).astype(np.float32)
    icons, score, cos, _ = r.render(d, seeds=range(len(d)))
    assert icons.shape == (16, 64, 64, 3) and np.isfinite(score).all() and cos.mean() > 0.1


def test_exact_neighbour_search_on_cuda_equals_cpu() -> None:
    from atlas_core.reduce import NeighborIndex

    rng = np.random.default_rng(0)
    ref = np.abs(rng.normal(size=(5000, 64))).astype(np.float32)
    q = np.abs(rng.normal(size=(3000, 64))).astype(np.float32)
    for metric in ("cosine", "euclidean"):
        index = NeighborIndex.build(ref, metric)
        i_cpu, d_cpu = index.query(q, 10, device="cpu")
        i_gpu, d_gpu = index.query(q, 10, device="cuda")
        np.testing.assert_allclose(d_gpu, d_cpu, rtol=1e-3, atol=1e-4)
        assert (i_gpu == i_cpu).mean() > 0.99  # near-ties may swap under TF32/ordering


def test_the_neighbour_index_on_cuda_agrees_with_the_cpu() -> None:
    """The index built and its all-rows graph computed on CUDA against the CPU's, over rows with
    exact duplicates (ties) and holes: the same neighbours up to float32 rounding, duplicates in
    the CPU's order (lower row first), holes never returned; two CUDA runs give the same bytes;
    the small exact index (one list) too."""
    from atlas_core.neighbours import NeighbourIndex, NeighbourParams

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(40, 64)) * 2.0
    x = centres[rng.integers(0, 40, 20_000)] + rng.normal(size=(20_000, 64))
    x = x.astype(np.float16).astype(np.float32)
    x[[500, 9000, 17000]] = x[100]  # four copies of row 100
    x[[7, 777]] = np.nan  # holes
    blocks = [(a, x[a : a + 4096]) for a in range(0, len(x), 4096)]
    for p in (NeighbourParams(exact_rows=1000, seed=3), NeighbourParams()):
        cpu = NeighbourIndex.build(iter(blocks), p)
        gpu = NeighbourIndex.build(iter(blocks), p, device="cuda")
        assert gpu.to_bytes() == NeighbourIndex.build(iter(blocks), p, device="cuda").to_bytes()
        assert gpu.lists == cpu.lists and np.abs(gpu.centroids - cpu.centroids).max() < 1e-4
        ref_rows, ref_cos = cpu.knn_graph(10, threads=2)
        rows, cos = gpu.knn_graph(10, device="cuda")
        again = gpu.knn_graph(10, device="cuda")
        np.testing.assert_array_equal(rows, again[0])
        np.testing.assert_array_equal(cos, again[1])
        assert rows[100, :3].tolist() == [500, 9000, 17000] == ref_rows[100, :3].tolist()
        assert (rows[[7, 777]] == -1).all() and not np.isin([7, 777], rows).any()
        present = np.isfinite(x).all(1)
        same = sum(len(np.intersect1d(a, b)) for a, b in zip(rows, ref_rows, strict=True))
        assert same / ref_rows[present].size > 0.99
        top = (rows[:, 0] == ref_rows[:, 0]) & present
        assert top.mean() > 0.98
        np.testing.assert_allclose(cos[top, 0], ref_cos[top, 0], atol=1e-5)
