"""Reduce stage: UMAP of the layer's activations, normalized, written position-addressed."""

from __future__ import annotations

import logging

import numpy as np

from atlas_core.errors import StoreError
from atlas_core.reduce import choose_backend, fit_transform, normalize_layout, trustworthiness
from atlas_core.store import RunStore
from pipelines.common import StageResult
from pipelines.settings import Settings

log = logging.getLogger(__name__)


def run(s: Settings, fp: str) -> StageResult:
    store = RunStore.open(s.store_url, mode="r+", storage_options=s.storage_options)
    acts = store.acts(s.layer)
    ok = ~np.isnan(acts).any(axis=1)
    n_ok = int(ok.sum())
    if n_ok <= s.reduce.umap.n_neighbors:
        raise StoreError(
            f"only {n_ok} usable activation rows for layer {s.layer}, fewer than "
            f"n_neighbors={s.reduce.umap.n_neighbors}: add images (data.n_images) or lower "
            "reduce.n_neighbors"
        )
    backend = choose_backend(s.reduce.backend)
    raw = fit_transform(acts[ok], s.reduce.umap, backend)
    norm, bounds = normalize_layout(raw)
    layout = np.full((len(acts), 2), np.nan, np.float32)
    layout[ok] = norm
    tw = trustworthiness(
        acts[ok], raw, metric=s.reduce.umap.metric, sample=s.reduce.quality_sample, seed=s.seed
    )
    store.write_layout(
        s.layer,
        layout,
        {"backend": backend, "bounds": bounds.tolist(), "fingerprint": fp, "trustworthiness": tw},
    )
    log.info("reduce: %d rows, backend %s, trustworthiness %.3f", n_ok, backend, tw)
    return StageResult(
        counts={"rows": n_ok, "holes": int((~ok).sum())},
        details={"backend": backend, "trustworthiness_k10": round(tw, 4)},
    )
