"""Render stage: icons for every kept cell, in batches, by a pool of Ray actors.

plan: per grid level, the icons without a stored objective, less those the content-addressed
cache holds; run: batches through ``ray_ops.ActorPool`` (each actor builds its model and renderer
once, on its own node and device); commit: the driver writes each finished batch (the objective
last: it marks an icon done); summarize: counts and fidelity. Every random draw of an icon comes
from ``icon_seed(seed, layer, level, cell)``, so batch size, actor count and resumes never change
an icon's pixels.
"""

from __future__ import annotations

import logging
import os
import signal
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from atlas_core.featvis.render import IconRenderer, RenderSettings, whitening_matrix
from atlas_core.featvis.streams import icon_seed
from atlas_core.models.registry import ModelSpec
from atlas_core.store import IconCache, RunStore, icon_keys
from pipelines import ray_ops
from pipelines.common import StageResult, cached_model, resolve_device, test_fault
from pipelines.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RenderBatch:
    """Icons of one grid level: cell rows (B,), directions (B, C), per-icon seeds (B,)."""

    size: int
    rows: np.ndarray
    directions: np.ndarray
    seeds: tuple[int, ...]
    keys: tuple[str, ...] = ()


@dataclass
class Todo:
    """One grid level's icons still to render."""

    size: int
    rows: np.ndarray
    directions: np.ndarray
    seeds: list[int]
    keys: list[str]


class RenderWorker:
    """Actor body: resolves its device, builds the model and renderer once; each call renders one
    batch. ``fault`` is the tests' hook (``sigkill_once:render:<flag>`` kills the actor at the end
    of its second batch, before it returns, once)."""

    def __init__(
        self,
        model: ModelSpec,
        layer: str,
        settings: RenderSettings,
        device: str,
        whiten: np.ndarray | None,
        threads: int = 1,
        fault: str = "",
    ) -> None:
        torch.set_num_threads(max(1, threads))
        self.device = resolve_device(device)
        self.renderer = IconRenderer(
            cached_model(model, self.device), layer, settings, device=self.device
        )
        self.whiten = whiten
        self.fault = fault
        self.batches = 0

    def render(self, batch: RenderBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        out = self.renderer.render(batch.directions, seeds=batch.seeds, whiten=self.whiten)
        self.batches += 1
        kind, _, flag = self.fault.partition(":render:")
        if kind == "sigkill_once" and self.batches == 2 and not os.path.exists(flag):
            open(flag, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        return out

    def suggest_batch_size(self) -> int:
        return self.renderer.suggest_batch_size()

    def where(self) -> dict[str, str]:
        return {**ray_ops.where_am_i(), "device": self.device}


def run(s: Settings, fp: str) -> StageResult:
    store = RunStore.open(s.store_url, mode="r+", storage_options=s.storage_options)
    whiten = whitening_matrix(store.second_moment(s.layer)) if s.render.whiten else None
    cache = _cache(s)
    todo = [_plan_level(store, s, size, fp, whiten, cache) for size in s.grid.sizes]
    n_icons = sum(len(t.rows) for t in todo)
    log.info(
        "render: %d icons to render (%d px, %d steps, best of %d)%s", n_icons,
        s.render.icon_px, s.render.steps, s.render.attempts,
        f"; {cache.hits} from the icon cache" if cache else "",
    )  # fmt: skip
    restarts, where = 0, dict[str, Any]()
    if n_icons:
        restarts, where = _render(s, store, todo, whiten, cache)
    return _summarize(store, s, n_icons, restarts, cache.hits if cache else 0, where)


def _cache(s: Settings) -> IconCache | None:
    if not s.render.cache:
        return None
    return IconCache(s.render.cache_dir or f"{s.run_dir.rstrip('/')}/icon-cache", s.storage_options)


def _plan_level(
    store: RunStore, s: Settings, size: int, fp: str, whiten: np.ndarray | None,
    cache: IconCache | None,
) -> Todo:  # fmt: skip
    """The icons of one level still missing; those in the cache are written now."""
    grid = store.grid(s.layer, size)
    if store.icons_fingerprint(s.layer, size) != fp:
        store.create_icons(s.layer, size, len(grid.cell), s.render.icon_px, {"fingerprint": fp})
        rows = np.arange(len(grid.cell))
    else:
        rows = np.flatnonzero(np.isnan(store.icons(s.layer, size)[1]))
    seeds = [icon_seed(s.seed, s.layer, size, *grid.cell[r]) for r in rows]
    todo = Todo(size, rows, grid.mean[rows], seeds, [""] * len(rows))
    if cache is not None:
        context = {"model": asdict(s.model.spec), "layer": s.layer, "icon": asdict(s.render.icon)}
        todo.keys = icon_keys(todo.directions, context, whiten, seeds)
        todo = _from_cache(store, s.layer, todo, cache)
    return todo


def _render(
    s: Settings, store: RunStore, todo: list[Todo], whiten: np.ndarray | None,
    cache: IconCache | None,
) -> tuple[int, dict[str, Any]]:  # fmt: skip
    """Render every batch on the actor pool; returns (actor restarts, where the actors ran)."""
    ray_ops.init(s.cluster)
    res = s.cluster.render
    ray_ops.require("cluster.render", res.num_cpus, res.num_gpus)
    actors = res.actors
    if actors == "auto":
        # never more than the batches (at the largest CPU batch size the first actor may pick)
        most = sum(-(-len(t.rows) // (s.render.batch_size if s.render.batch_size != "auto" else 64))
                   for t in todo)  # fmt: skip
        actors = max(1, min(ray_ops.capacity(res.num_cpus, res.num_gpus), most))
        log.info("render: %d actors (cluster.render.actors=auto)", actors)
    pool = ray_ops.ActorPool(
        RenderWorker,
        (s.model.spec, s.layer, s.render.icon, res.device, whiten, int(res.num_cpus), test_fault()),
        size=actors, num_cpus=res.num_cpus, num_gpus=res.num_gpus,
    )  # fmt: skip

    def commit(batch: RenderBatch, out: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
        store.write_icons(s.layer, batch.size, batch.rows, *out)
        for key, ic, ob, co in zip(batch.keys, *out, strict=False):
            if cache is not None:
                cache.put(key, ic, float(ob), float(co))

    try:
        where = pool.call(0, "where")
        size = s.render.batch_size
        if size == "auto":  # the first actor measures its device
            size = int(pool.call(0, "suggest_batch_size"))
            log.info("render: batch size %d chosen from the device's free memory", size)
        batches = [
            RenderBatch(t.size, t.rows[i : i + size], t.directions[i : i + size],
                        tuple(t.seeds[i : i + size]), tuple(t.keys[i : i + size]))
            for t in todo for i in range(0, len(t.rows), size)
        ]  # fmt: skip
        restarts = pool.map("render", batches, desc="render", on_result=commit)
    finally:
        pool.close()
    return restarts, {**where, "batch_size": size, "actors": actors}


def _from_cache(store: RunStore, layer: str, todo: Todo, cache: IconCache) -> Todo:
    """Write the icons the cache holds; return the ones still to render."""
    found = [cache.get(k) for k in todo.keys]
    hit = [i for i, v in enumerate(found) if v is not None]
    if hit:
        got = [v for v in found if v is not None]
        store.write_icons(
            layer, todo.size, todo.rows[hit], np.stack([v[0] for v in got]),
            np.array([v[1] for v in got], np.float32), np.array([v[2] for v in got], np.float32),
        )  # fmt: skip
    miss = [i for i, v in enumerate(found) if v is None]
    return Todo(
        todo.size, todo.rows[miss], todo.directions[miss],
        [todo.seeds[i] for i in miss], [todo.keys[i] for i in miss],
    )  # fmt: skip


def _summarize(
    store: RunStore, s: Settings, rendered: int, restarts: int, cached: int, where: dict[str, Any]
) -> StageResult:
    cos, total = [], 0
    for size in s.grid.sizes:
        _, objective, cosine = store.icons(s.layer, size)
        total += int((~np.isnan(objective)).sum())
        cos.append(cosine[~np.isnan(cosine)])
    allc = np.concatenate(cos) if cos else np.zeros(0)
    details: dict[str, Any] = {"where": where} if where else {}
    if len(allc):
        details["fidelity_cosine_mean"] = round(float(allc.mean()), 4)
        details["fidelity_cosine_std"] = round(float(allc.std()), 4)
    counts = {"icons": total, "icons_rendered_now": rendered, "actor_restarts": restarts}
    return StageResult(counts={**counts, "icons_from_cache": cached}, details=details)
