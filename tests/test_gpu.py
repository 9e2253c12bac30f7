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
