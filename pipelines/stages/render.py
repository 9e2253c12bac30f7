"""Render stage: icons for every kept cell, by a pool of Ray actors that write their own icons.

plan: the recipe (:class:`~atlas_core.featvis.recipe.IconRecipe`, built once here from the
settings and the run's whitening matrix or amplitude spectrum), then per grid level the work
items (whole storage objects of ``render.batch_size`` icons, rounded up to whole groups) whose
icons have no stored objective; tasks: items through ``ray_ops.ActorPool``, two in flight per
actor. Each actor holds an :class:`IconWorker` (set up once: its own model and renderer on its
node's device, the icon cache; each call computes one item's icons, from the cache where it can)
and writes the item's icons, cosines and objectives (last: they mark the item done); summarize:
counts and fidelity from the store.

What an icon depends on: icons are optimized in fixed groups of ``render.group`` consecutive
cells of a level, each group one tensor (with every best-of-N attempt in it), and every random
draw of an icon comes from ``icon_seed(seed, layer, level, cell)``. The same group always holds
the same icons, so every kernel sees the same shapes and bytes whatever the batch size, the
number of actors, a resume or the machine's load; on CPU each actor computes on one thread, so
a thread count never changes a reduction either.
"""

from __future__ import annotations

import logging
import os
import signal
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from atlas_core.featvis.recipe import IconRecipe
from atlas_core.featvis.render import IconRenderer, Rendered, whitening_matrix
from atlas_core.featvis.streams import icon_seed
from atlas_core.models.registry import ModelSpec
from atlas_core.store import CachedGroup, RunStore, group_key
from atlas_core.store.check import missing_arrays
from atlas_core.store.location import RunLocation
from pipelines.core import ray_ops
from pipelines.core.common import cached_model, resolve_device, test_fault
from pipelines.core.settings import ActorResources, GridConf, RenderConf
from pipelines.core.stage import Stage, StageResult, StageRun

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RenderItem:
    """Cells [start, start + n) of a level (a whole storage object of its icons): directions
    (n, C), one seed per icon, one cache key per group (none without a cache)."""

    size: int
    start: int
    directions: np.ndarray
    seeds: tuple[int, ...]
    keys: tuple[str, ...]


@dataclass(frozen=True)
class RenderSetup:
    """What every actor is built with: the model, the layer, the recipe, the device it asks
    for (resolved on its node), where it writes (the view's location) and whether it uses the
    icon cache (at ``cache_dir``, or the run's own)."""

    model: ModelSpec
    layer: str
    recipe: IconRecipe
    device: str
    loc: RunLocation
    cache: bool
    cache_dir: str | None = None


class IconWorker:
    """An actor's rendering state, set up once (Ray's stateful-transform shape): ``__init__``
    resolves the device and builds this worker's own model and renderer; each call computes one
    work item's icons, taking whole groups from the cache where it holds them. Testable
    without Ray."""

    def __init__(self, setup: RenderSetup) -> None:
        self.device = resolve_device(setup.device)
        if self.device == "cpu":  # one thread: a thread count never changes a reduction
            torch.set_num_threads(1)
        model = cached_model(setup.model, self.device, role="render")
        self.renderer = IconRenderer(model, setup.layer, setup.recipe, device=self.device)
        self.cache = setup.loc.icon_cache(setup.cache_dir) if setup.cache else None

    def __call__(self, item: RenderItem, group: int) -> tuple[Rendered, dict[str, CachedGroup]]:
        """The item's icons, and the groups rendered now (to add to the cache), by key."""
        found = self.cache.get_many([k for k in item.keys if k]) if self.cache else {}
        parts, new = [], {}
        for g, a in enumerate(range(0, len(item.seeds), group)):
            key = item.keys[g] if item.keys else ""
            if key in found:
                c = found[key]
                parts.append(Rendered(c.icons, c.objective, c.cosine, c.alpha))
                continue
            sl = slice(a, a + group)
            out = self.renderer.render(item.directions[sl], seeds=item.seeds[sl])
            parts.append(out)
            if key:
                new[key] = CachedGroup(*out)
        return Rendered.concatenate(parts), new


def write_item(loc: RunLocation, layer: str, item: RenderItem, done: Rendered) -> None:
    """An item's icons into its level: the objectives last, since they mark the item done."""
    level = loc.open_store("r+").level(layer, item.size)
    level.write("icons", item.start, done.icons)
    if done.alpha is not None:
        level.write("icon_alpha", item.start, done.alpha)
    level.write("icon_cosine", item.start, done.cosine)
    level.write("icon_objective", item.start, done.objective)


class RenderActor:
    """Actor body: an :class:`IconWorker`, the write of each item, the cache's new entries and
    the metrics. ``fault`` is the tests' hook (``sigkill_once:render:<flag>`` kills the actor at
    the end of its second item, before it returns, once)."""

    def __init__(self, setup: RenderSetup, fault: str = "") -> None:
        self.setup = setup
        self.work = IconWorker(setup)
        self.fault = fault
        self.items = 0

    def render(self, item: RenderItem, group: int) -> dict[str, int]:
        cache = self.work.cache
        bad = cache.bad if cache is not None else 0
        done, new = self.work(item, group)
        write_item(self.setup.loc, self.setup.layer, item, done)
        if cache is not None and new:
            cache.put_many(new)
        source = "rendered" if new or cache is None else "cache"
        ray_ops.count("atlas_icons", len(item.seeds), {"source": source})
        self.items += 1
        self._fault()
        n_parts = -(-len(item.seeds) // group)
        rendered = sum(len(g.icons) for g in new.values()) if cache else len(item.seeds)
        groups = len(new) if cache else n_parts
        return {
            "icons": len(item.seeds),
            "icons_rendered": rendered,
            "groups_rendered": groups,
            "groups_cached": n_parts - groups,
            "cache_unreadable": (cache.bad - bad) if cache is not None else 0,
        }

    def _fault(self) -> None:
        kind, _, flag = self.fault.partition(":render:")
        if kind == "sigkill_once" and self.items == 2 and not os.path.exists(flag):
            open(flag, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)

    def suggest_group(self) -> int:
        return self.work.renderer.suggest_group()

    def where(self) -> dict[str, str]:
        return {**ray_ops.where_am_i(), "device": self.work.device}


def recipe_of(ctx: StageRun, store: RunStore) -> IconRecipe:
    """The view's render settings with the run's own data: the layer's whitening matrix for
    Lucid's objective, the amplitude spectrum for MACO's parameterization."""
    r = ctx.conf(RenderConf)
    whiten = None
    if r.whiten and r.objective == "lucid":
        whiten = whitening_matrix(store.extraction(ctx.s.layer).second_moment())
    spectrum = store.images.spectrum() if r.param == "maco" else None
    return IconRecipe.from_settings(r, spectrum=spectrum, whiten=whiten)


def run(ctx: StageRun) -> StageResult:
    s, r = ctx.s, ctx.conf(RenderConf)
    store = ctx.open_store("r+")
    sizes = ctx.conf(GridConf).sizes
    if not any(_unfinished(store, s.layer, g, ctx.fp) for g in sizes):
        return _summarize(ctx, store, 0, 0, {}, {})
    ray_ops.init(s.cluster)
    res = s.cluster.render
    ray_ops.require("cluster.render", res.num_cpus, res.num_gpus)
    recipe = recipe_of(ctx, store)
    setup = RenderSetup(s.model.spec, s.layer, recipe, ctx.device(), ctx.loc, r.cache, r.cache_dir)
    pool = ray_ops.ActorPool(
        RenderActor, (setup, test_fault()), size=1, num_cpus=res.num_cpus, num_gpus=res.num_gpus
    )
    try:
        where = pool.call(0, "where")
        group = _group(ctx, store, pool)
        items = _plan(ctx, store, recipe, group)
        actors = _actors(res, len(items))
        pool.grow(actors)
        log.info(
            "render: %d icons in %d items, groups of %d, %d actors (%d px, %d steps, best of %d)",
            sum(len(i.seeds) for i in items),
            len(items),
            group,
            actors,
            r.icon_px,
            r.steps,
            r.attempts,
        )
        done = dict.fromkeys(
            ("icons", "icons_rendered", "groups_rendered", "groups_cached", "cache_unreadable"), 0
        )

        def count(_: RenderItem, out: dict[str, int]) -> None:
            for k in done:
                done[k] += int(out[k])

        restarts = pool.map("render", items, desc="render", on_result=count, extra=(group,))
    finally:
        pool.close()
    where = {**where, "actors": actors, "group": group}
    return _summarize(ctx, store, restarts, group, done, where)


def _plan(ctx: StageRun, store: RunStore, recipe: IconRecipe, group: int) -> list[RenderItem]:
    """Every level's work items still to render."""
    sizes, res = ctx.conf(GridConf).sizes, ctx.s.cluster.render
    todo = sum(len(store.level(ctx.s.layer, g).read("count")) for g in sizes)
    now = int(res.actors) if res.actors != "auto" else ray_ops.capacity(res.num_cpus, res.num_gpus)
    item = _item_size(ctx.conf(RenderConf), group, todo, max(1, now))
    return [it for g in sizes for it in _plan_level(ctx, store, g, group, item, recipe)]


def _unfinished(store: RunStore, layer: str, size: int, fp: str) -> bool:
    level = store.level(layer, size)
    if not level.has("icons") or level.array("icons").attrs.get("fingerprint") != fp:
        return True
    return bool(np.isnan(level.read("icon_objective")).any())


def _group(ctx: StageRun, store: RunStore, pool: ray_ops.ActorPool) -> int:
    """The group size: the setting, or the one the level's icons were created with, or the
    first actor's choice for its device."""
    r = ctx.conf(RenderConf)
    if r.group != "auto":
        return int(r.group)
    for g in ctx.conf(GridConf).sizes:
        level = store.level(ctx.s.layer, g)
        if level.has("icons") and level.array("icons").attrs.get("fingerprint") == ctx.fp:
            return int(str(level.array("icons").attrs["group"]))
    return int(pool.call(0, "suggest_group"))


def _item_size(r: RenderConf, group: int, icons: int, actors: int) -> int:
    """Icons per work item: ``render.batch_size``, or (auto) about four items per actor, at
    most 1024 icons; whole groups either way."""
    want = int(r.batch_size) if r.batch_size != "auto" else min(1024, -(-icons // (4 * actors)))
    return max(group, -(-want // group) * group)


def _plan_level(
    ctx: StageRun, store: RunStore, size: int, group: int, item: int, recipe: IconRecipe
) -> list[RenderItem]:
    """The level's work items still to render (its icon arrays created when new)."""
    s, r, fp = ctx.s, ctx.conf(RenderConf), ctx.fp
    level = store.level(s.layer, size)
    grid = level.grid()
    m = len(grid.cell)
    if not level.has("icons") or level.array("icons").attrs.get("fingerprint") != fp:
        alpha = ["icon_alpha"] if recipe.alpha.kind != "none" else []
        level.create(
            ["icons", "icon_objective", "icon_cosine", *alpha],
            {"M": m, "px": recipe.px, "group": group, "item": item},
        )
        level.array("icons").attrs.update(
            {"fingerprint": fp, "group": group, "alpha": recipe.alpha.kind}
        )
    item = level.icon_layout()[1]
    objective = level.read("icon_objective")
    seeds = [icon_seed(s.seed, s.layer, size, *grid.cell[i]) for i in range(m)]
    # what changes an icon, and nothing else: the model, the layer and the recipe (the
    # whitening matrix and MACO's spectrum by their bytes)
    context = {"model": asdict(s.model.spec), "layer": s.layer, "recipe": recipe.identity()}
    out = []
    for a in range(0, m, item):
        b = min(m, a + item)
        if not np.isnan(objective[a:b]).any():
            continue
        groups = range(a, b, group) if r.cache else range(0)
        keys = tuple(
            group_key(grid.mean[g : min(b, g + group)], seeds[g : min(b, g + group)], context)
            for g in groups
        )
        out.append(RenderItem(size, a, grid.mean[a:b], tuple(seeds[a:b]), keys))
    return out


def _actors(res: ActorResources, items: int) -> int:
    """``cluster.render.actors``, or (auto) as many as the cluster holds once the autoscaler
    has grown for them (``ray_ops.grow``), never more than the items."""
    if res.actors != "auto":
        return int(res.actors)
    return max(1, min(ray_ops.grow(res.num_cpus, res.num_gpus, items), items))


def _summarize(
    ctx: StageRun,
    store: RunStore,
    restarts: int,
    group: int,
    done: dict[str, int],
    where: dict[str, Any],
) -> StageResult:
    cos, total = [], 0
    for size in ctx.conf(GridConf).sizes:
        level = store.level(ctx.s.layer, size)
        objective, cosine = level.read("icon_objective"), level.read("icon_cosine")
        total += int((~np.isnan(objective)).sum())
        cos.append(cosine[~np.isnan(cosine)])
    allc = np.concatenate(cos) if cos else np.zeros(0)
    details: dict[str, Any] = {"where": where} if where else {}
    if len(allc):
        details["fidelity_cosine_mean"] = round(float(allc.mean()), 4)
        details["fidelity_cosine_std"] = round(float(allc.std()), 4)
    counts = {
        "icons": total,
        "icons_rendered_now": done.get("icons_rendered", 0),
        "groups_rendered": done.get("groups_rendered", 0),
        "groups_from_cache": done.get("groups_cached", 0),
        # icon-cache entries found unreadable (torn, corrupt): removed and rendered again
        "cache_entries_unreadable": done.get("cache_unreadable", 0),
        "actor_restarts": restarts,
    }
    return StageResult(counts=counts, details=details)


def outputs(ctx: StageRun, store: RunStore) -> list[str]:
    """Every level's icons, and no icon left unrendered."""
    sizes = ctx.conf(GridConf).sizes
    keys = [store.level(ctx.s.layer, g).key("icon_objective") for g in sizes]
    gone = missing_arrays(store, keys)
    if not gone:
        for g in sizes:
            n = int(np.isnan(store.level(ctx.s.layer, g).read("icon_objective")).sum())
            gone += [f"{n} icons of grid {g}"] if n else []
    return gone


STAGE = Stage(
    name="render",
    run=run,
    needs=("grid",),
    settings=RenderConf,
    resources={"render": ActorResources()},
    outputs=outputs,
    reads="`grid/<G>/{cell,mean}`, `layers/<L>/moment*`, `images/spectrum` (MACO), the icon cache",
    writes="`grid/<G>/{icons,icon_objective,icon_cosine,icon_alpha}` (by the actors, one storage "
    "object "
    "per work item), the icon cache",
    ray="actor pool, two work items in flight per actor (`ActorPool`)",
)
