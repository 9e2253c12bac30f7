from __future__ import annotations

import numpy as np
import pytest

from atlas_core.errors import ConfigError
from atlas_core.reduce import (
    UmapParams,
    choose_backend,
    fit_transform,
    normalize_layout,
    trustworthiness,
)


def test_normalization_clips_to_percentiles_with_margin() -> None:
    rng = np.random.default_rng(0)
    xy = rng.normal(size=(10000, 2)) * [1.0, 5.0] + [3.0, -2.0]
    xy[0] = [1e6, -1e6]  # an outlier is clipped, not allowed to squash the layout
    xy[1] = np.nan
    out, bounds = normalize_layout(xy)
    assert np.isnan(out[1]).all()
    ok = out[~np.isnan(out).any(axis=1)]
    assert ok.min() >= 0.0 and ok.max() <= 1.0 and out[0].tolist() == [1.0, 0.0]
    lo, hi = np.nanpercentile(xy, 1, axis=0), np.nanpercentile(xy, 99, axis=0)
    assert np.allclose(bounds[0], lo - 0.1 * (hi - lo)) and np.allclose(
        bounds[1], hi + 0.1 * (hi - lo)
    )
    inside = ((xy[2:] >= lo) & (xy[2:] <= hi)).all(axis=1)
    assert out[2:][inside].min() >= 0.1 / 1.2 - 1e-6  # the margin is empty space


def test_backend_choice_and_errors(monkeypatch) -> None:
    from atlas_core.reduce import backends

    monkeypatch.setattr(backends, "_has_cuml", lambda: False)
    assert choose_backend("auto") == "umap-learn"
    with pytest.raises(ConfigError, match="cuml"):
        choose_backend("cuml")  # asked for by name and absent: an error, never a fallback
    monkeypatch.setattr(backends, "_has_cuml", lambda: True)
    assert choose_backend("auto") == "cuml"
    assert choose_backend("umap-learn") == "umap-learn"
    with pytest.raises(ConfigError, match="Valid choices"):
        choose_backend("tsne")
    with pytest.raises(ValueError):
        UmapParams(metric="hamming-ish")


def test_umap_layout_is_trustworthy_and_reproducible() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(6, 32)) * 4
    x = (centres[rng.integers(0, 6, 600)] + rng.normal(size=(600, 32))).astype(np.float32)
    # well-separated clusters: a disconnected kNN graph, where only the pca init is reproducible
    params = UmapParams(n_neighbors=15, metric="euclidean", n_epochs=200, seed=3, init="pca")
    a = fit_transform(x, params, "umap-learn")
    b = fit_transform(x, params, "umap-learn")
    assert a.shape == (600, 2) and np.array_equal(a, b)
    tw = trustworthiness(x, a, metric="euclidean")
    assert tw > 0.9
    shuffled = rng.permutation(a)
    assert trustworthiness(x, shuffled, metric="euclidean") < 0.6
