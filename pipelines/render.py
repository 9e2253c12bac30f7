"""Render stage: icons for every kept cell, in batches, by a pool of Ray actors.

Each actor builds the model and renderer once. The driver writes each finished batch; an icon's
objective is written last and marks it done, so a resumed run renders only the missing icons.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from atlas_core.featvis.render import IconRenderer, RenderSettings, whitening_matrix
from atlas_core.models.registry import ModelSpec
from atlas_core.store import RunStore
from pipelines import ray_ops
from pipelines.common import StageResult, cached_model, resolve_device
from pipelines.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RenderBatch:
    size: int
    rows: np.ndarray
    directions: np.ndarray
    seed: int


class RenderWorker:
    """Actor body: the model and renderer are built once; each call renders one batch."""

    def __init__(
        self,
        model: ModelSpec,
        layer: str,
        settings: RenderSettings,
        device: str,
        whiten: np.ndarray | None,
        threads: int = 1,
    ) -> None:
        torch.set_num_threads(max(1, threads))
        self.renderer = IconRenderer(
            cached_model(model, resolve_device(device)),
            layer,
            settings,
            device=resolve_device(device),
        )
        self.whiten = whiten

    def render(self, batch: RenderBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.renderer.render(batch.directions, seed=batch.seed, whiten=self.whiten)


def run(s: Settings, fp: str) -> StageResult:
    store = RunStore.open(s.store_url, mode="r+", storage_options=s.storage_options)
    icon = s.render.icon
    whiten = whitening_matrix(store.second_moment(s.layer)) if icon.whiten else None
    batches: list[RenderBatch] = []
    for size in s.grid.sizes:
        grid = store.grid(s.layer, size)
        todo = _missing(store, s, size, len(grid.cell), fp)
        for start in range(0, len(todo), s.render.batch_size):
            rows = todo[start : start + s.render.batch_size]
            batches.append(RenderBatch(size, rows, grid.mean[rows], s.seed * 100003 + int(rows[0])))
    n_icons = sum(len(b.rows) for b in batches)
    log.info(
        "render: %d icons in %d batches (%d px, %d steps, best of %d)",
        n_icons,
        len(batches),
        icon.icon_px,
        icon.steps,
        icon.attempts,
    )
    restarts = 0
    if batches:
        ray_ops.init(s.cluster)
        pool = ray_ops.ActorPool(
            RenderWorker,
            (s.model, s.layer, icon, s.render.device, whiten, int(s.render.num_cpus_per_actor)),
            size=min(s.render.actors, len(batches)),
            num_cpus=s.render.num_cpus_per_actor,
            num_gpus=s.render.num_gpus_per_actor,
        )

        def commit(batch: RenderBatch, out: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
            store.write_icons(s.layer, batch.size, batch.rows, *out)

        try:
            restarts = pool.map("render", batches, desc="render", on_result=commit)
        finally:
            pool.close()
    return _summarize(store, s, n_icons, restarts)


def _missing(store: RunStore, s: Settings, size: int, m: int, fp: str) -> np.ndarray:
    path = f"layers/{s.layer}/grid/{size}/icons"
    if not store.has(path) or store.group[path].attrs.get("fingerprint") != fp:
        store.create_icons(s.layer, size, m, s.render.icon.icon_px, {"fingerprint": fp})
        return np.arange(m)
    _, objective, _ = store.icons(s.layer, size)
    return np.flatnonzero(np.isnan(objective))


def _summarize(store: RunStore, s: Settings, rendered: int, restarts: int) -> StageResult:
    cos: list[np.ndarray] = []
    total = 0
    for size in s.grid.sizes:
        _, objective, cosine = store.icons(s.layer, size)
        total += int((~np.isnan(objective)).sum())
        cos.append(cosine[~np.isnan(cosine)])
    allc = np.concatenate(cos) if cos else np.zeros(0)
    details: dict[str, Any] = {}
    if len(allc):
        details = {
            "fidelity_cosine_mean": round(float(allc.mean()), 4),
            "fidelity_cosine_std": round(float(allc.std()), 4),
        }
    return StageResult(
        counts={"icons": total, "icons_rendered_now": rendered, "actor_restarts": restarts},
        details=details,
    )
