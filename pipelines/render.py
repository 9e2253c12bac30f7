"""Render stage: icons for every kept cell, in batches, by a pool of Ray actors.

Each actor builds the model and renderer once. The driver writes each finished batch; an icon's
objective is written last and marks it done, so a resumed run renders only the missing icons.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from atlas_core.featvis.render import IconRenderer, RenderSettings, whitening_matrix
from atlas_core.models.registry import ModelSpec
from atlas_core.store import IconCache, RunStore, icon_keys
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
    keys: tuple[str, ...] = ()


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

    def suggest_batch_size(self) -> int:
        return self.renderer.suggest_batch_size()


def run(s: Settings, fp: str) -> StageResult:
    store = RunStore.open(s.store_url, mode="r+", storage_options=s.storage_options)
    icon = s.render.icon
    whiten = whitening_matrix(store.second_moment(s.layer)) if icon.whiten else None
    cache = (
        IconCache(s.render.cache_dir or f"{s.run_dir.rstrip('/')}/icon-cache", s.storage_options)
        if s.render.cache
        else None
    )
    context = {"model": asdict(s.model), "layer": s.layer, "icon": asdict(icon), "seed": s.seed}
    todo: list[tuple[int, np.ndarray, np.ndarray, list[str]]] = []  # (size, rows, dirs, keys)
    for size in s.grid.sizes:
        grid = store.grid(s.layer, size)
        rows = _missing(store, s, size, len(grid.cell), fp)
        keys = icon_keys(grid.mean[rows], context, whiten) if cache else [""] * len(rows)
        if cache:
            rows, keys = _from_cache(store, s, size, rows, keys, cache)
        todo.append((size, rows, grid.mean[rows], keys))
    pool = None
    batch_size = s.render.batch_size
    if any(len(t[1]) for t in todo):
        ray_ops.init(s.cluster)
        pool = ray_ops.ActorPool(
            RenderWorker,
            (s.model, s.layer, icon, s.render.device, whiten, int(s.render.num_cpus_per_actor)),
            size=s.render.actors,
            num_cpus=s.render.num_cpus_per_actor,
            num_gpus=s.render.num_gpus_per_actor,
        )
        if batch_size <= 0:  # auto: the first actor measures its device
            batch_size = int(pool.call(0, "suggest_batch_size"))
            log.info("render: batch size %d chosen from the device's free memory", batch_size)
    batches = [
        RenderBatch(
            size,
            rows[i : i + batch_size],
            dirs[i : i + batch_size],
            s.seed * 100003 + int(rows[i]),
            tuple(keys[i : i + batch_size]),
        )
        for size, rows, dirs, keys in todo
        for i in range(0, len(rows), max(batch_size, 1))
    ]
    n_icons = sum(len(b.rows) for b in batches)
    log.info(
        "render: %d icons in %d batches (%d px, %d steps, best of %d)%s",
        n_icons,
        len(batches),
        icon.icon_px,
        icon.steps,
        icon.attempts,
        f"; {cache.hits} from the icon cache" if cache else "",
    )
    restarts = 0
    if pool is not None:

        def commit(batch: RenderBatch, out: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
            store.write_icons(s.layer, batch.size, batch.rows, *out)
            if cache:
                for key, ic, ob, co in zip(batch.keys, *out, strict=False):
                    cache.put(key, ic, float(ob), float(co))

        try:
            restarts = pool.map("render", batches, desc="render", on_result=commit)
        finally:
            pool.close()
    return _summarize(store, s, n_icons, restarts, cache.hits if cache else 0)


def _from_cache(
    store: RunStore, s: Settings, size: int, rows: np.ndarray, keys: list[str], cache: IconCache
) -> tuple[np.ndarray, list[str]]:
    """Write cached icons to the store; return the rows (and keys) still to render."""
    found = [(r, cache.get(k)) for r, k in zip(rows, keys, strict=False)]
    hit = [(r, v) for r, v in found if v is not None]
    if hit:
        store.write_icons(
            s.layer,
            size,
            np.array([r for r, _ in hit]),
            np.stack([v[0] for _, v in hit]),
            np.array([v[1] for _, v in hit], np.float32),
            np.array([v[2] for _, v in hit], np.float32),
        )
    miss = [i for i, (_, v) in enumerate(found) if v is None]
    return rows[miss], [keys[i] for i in miss]


def _missing(store: RunStore, s: Settings, size: int, m: int, fp: str) -> np.ndarray:
    path = f"layers/{s.layer}/grid/{size}/icons"
    if not store.has(path) or store.group[path].attrs.get("fingerprint") != fp:
        store.create_icons(s.layer, size, m, s.render.icon.icon_px, {"fingerprint": fp})
        return np.arange(m)
    _, objective, _ = store.icons(s.layer, size)
    return np.flatnonzero(np.isnan(objective))


def _summarize(
    store: RunStore, s: Settings, rendered: int, restarts: int, cached: int
) -> StageResult:
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
        counts={
            "icons": total,
            "icons_rendered_now": rendered,
            "actor_restarts": restarts,
            "icons_from_cache": cached,
        },
        details=details,
    )
