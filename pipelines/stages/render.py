"""Render stage: icons for every kept cell, by a pool of Ray actors that write their own icons.

plan: per grid level, the work items (whole storage objects of ``render.batch_size`` icons,
rounded up to whole groups) whose icons have no stored objective; run: items through
``ray_ops.ActorPool``, two in flight per actor (each actor builds its model and renderer once, on
its own node and device, reads the icon cache in bulk, renders the groups it misses, writes the
item's icons, cosines and objectives (last: they mark the item done), and adds what it rendered
to the cache); summarize: counts and fidelity from the store.

What an icon depends on: icons are optimized in fixed groups of ``render.group`` consecutive
cells of a level, each group one tensor (with every best-of-N attempt in it), and every random
draw of an icon comes from ``icon_seed(seed, layer, level, cell)``. The same group always holds
the same icons, so every kernel sees the same shapes and bytes whatever the batch size, the
number of actors, a resume or the machine's load; on CPU each actor computes on one thread, so
a thread count never changes a reduction either.
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from atlas_core.errors import ConfigError
from atlas_core.featvis.render import (
    ALPHAS,
    OBJECTIVES,
    PARAMS,
    IconRenderer,
    Rendered,
    RenderSettings,
    whitening_matrix,
)
from atlas_core.featvis.streams import icon_seed
from atlas_core.models.registry import ModelSpec
from atlas_core.store import CachedGroup, IconCache, RunStore, group_key
from atlas_core.store.check import missing_arrays
from pipelines.core import ray_ops
from pipelines.core.common import cached_model, resolve_device, test_fault
from pipelines.core.schema import NOT_FINGERPRINTED, ActorResources, Group, choice, in_range
from pipelines.core.stage import Stage, StageResult, StageRun
from pipelines.stages.grid import GridConf

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RenderConf(Group):
    """render: lucid-faithful icons (FFT + decorrelated colour, atlas transforms, dot x cos^n)."""

    GROUP: ClassVar[str] = "render"
    icon_px: int = 80
    steps: int = 1024
    attempts: int = 4  # best of N per icon (the N attempts are optimized in one tensor)
    lr: float = 0.05
    # lucid (Lucid's code: mean(a*Sv) * max(0.1, cos)^cos_power, whitened) | cosine (the cosine
    # between the centre activation and the cell's direction: closer to the cell's exemplars at
    # the same steps, measured in docs/icons.md; cos_power and whiten do not apply)
    objective: str = "lucid"
    fill: float = 0.5  # cosine objective: weight of the mean cosine over every position
    cos_power: float = 4.0
    whiten: bool = True
    # fft (Lucid: 1/f spectrum, decorrelated colour) | maco (the phase only, the magnitude the
    # run's own images' mean amplitude spectrum, measured during extraction) | pixel
    param: str = "fft"
    optimizer: str = "adam"  # adam | nadam (MACO's)
    noise: float = 0.0  # Gaussian + uniform noise added to the transformed image each step
    amp: bool = True  # bfloat16 autocast on CUDA
    # none | channel (Lucid: an optimized alpha over random backgrounds) | saliency (MACO:
    # where the objective's input gradients were); stored as grid/<G>/icon_alpha, compose
    # draws each icon over the atlas's background with it
    alpha: str = "none"
    # icons optimized together in one tensor, part of an icon's identity: auto = 16 on a CPU,
    # on CUDA the largest power of two up to 256 that fits the GPU's free memory (recorded in
    # the store, so a resume keeps it)
    group: Any = "auto"
    # icons per work item and per storage object, rounded up to whole groups (auto: about four
    # items per actor, at most 1024 icons); never changes an icon
    batch_size: Any = field(default="auto", metadata=NOT_FINGERPRINTED)
    cache: bool = field(default=True, metadata=NOT_FINGERPRINTED)  # never render a group twice
    cache_dir: str | None = field(default=None, metadata=NOT_FINGERPRINTED)  # <run_dir>/icon-cache

    def __post_init__(self) -> None:
        if str(self.alpha) in ("True", "False", "true", "false"):  # the old boolean setting
            object.__setattr__(
                self, "alpha", "channel" if str(self.alpha).lower() == "true" else "none"
            )
        choice("render.param", self.param, PARAMS)
        choice("render.alpha", self.alpha, ALPHAS)
        choice("render.optimizer", self.optimizer, ("adam", "nadam"))
        choice("render.objective", self.objective, OBJECTIVES)
        if self.param == "maco" and self.alpha == "channel":
            raise ConfigError(
                "render.alpha",
                self.alpha,
                fix="MACO's parameterization has no "
                "alpha channel: set render.alpha=saliency (MACO's own) or none, "
                "or render.param=fft.",
            )
        in_range("render.fill", self.fill, 0.0, 1.0)
        in_range("render.noise", self.noise, 0.0, 1.0)
        self._ranges(
            {
                "icon_px": (8, 1024),
                "steps": (1, None),
                "attempts": (1, 64),
                "lr": (1e-6, 10.0),
                "cos_power": (0.0, 16.0),
            }
        )
        for key in ("batch_size", "group"):
            if getattr(self, key) != "auto":
                in_range(f"render.{key}", getattr(self, key), 1, 65536)

    @property
    def icon(self) -> RenderSettings:
        return RenderSettings(
            icon_px=self.icon_px,
            steps=self.steps,
            attempts=self.attempts,
            lr=self.lr,
            cos_power=self.cos_power,
            whiten=self.whiten,
            param=self.param,
            amp=self.amp,
            alpha=self.alpha,
            optimizer=self.optimizer,
            noise=self.noise,
            objective=self.objective,
            fill=self.fill if self.objective == "cosine" else 0.0,
        )


@dataclass(frozen=True)
class RenderItem:
    """Cells [start, start + n) of a level (a whole storage object of its icons): directions
    (n, C), one seed per icon, one cache key per group ('' without a cache)."""

    size: int
    start: int
    directions: np.ndarray
    seeds: tuple[int, ...]
    keys: tuple[str, ...]


@dataclass(frozen=True)
class Target:
    """Where an actor writes: the run store, the view's group in it, the icon cache."""

    store_url: str
    storage_options: dict[str, Any]
    prefix: str
    layer: str
    cache: str | None


class RenderWorker:
    """Actor body: resolves its device, builds the model and renderer once; each call renders
    one work item and writes it. ``fault`` is the tests' hook (``sigkill_once:render:<flag>``
    kills the actor at the end of its second item, before it returns, once)."""

    def __init__(
        self,
        model: ModelSpec,
        settings: RenderSettings,
        device: str,
        whiten: np.ndarray | None,
        target: Target,
        fault: str = "",
        spectrum: np.ndarray | None = None,
    ) -> None:
        self.device = resolve_device(device)
        if self.device == "cpu":  # one thread: a thread count never changes a reduction
            torch.set_num_threads(1)
        self.renderer = IconRenderer(
            cached_model(model, self.device),
            target.layer,
            settings,
            device=self.device,
            spectrum=spectrum,
        )
        self.whiten = whiten
        self.target = target
        self.cache = IconCache(target.cache, target.storage_options) if target.cache else None
        self.fault = fault
        self.items = 0

    def render(self, item: RenderItem, group: int) -> dict[str, Any]:
        t, n = self.target, len(item.seeds)
        found = self.cache.get_many([k for k in item.keys if k]) if self.cache else {}
        parts, new = [], {}
        for g, a in enumerate(range(0, n, group)):
            key = item.keys[g] if item.keys else ""
            if key in found:
                c = found[key]
                parts.append(Rendered(c.icons, c.objective, c.cosine, c.alpha))
                continue
            out = self.renderer.render(
                item.directions[a : a + group], seeds=item.seeds[a : a + group], whiten=self.whiten
            )
            parts.append(out)
            if key:
                new[key] = CachedGroup(*out)
        done = Rendered.concatenate(parts)
        store = RunStore.open(t.store_url, mode="r+", storage_options=t.storage_options)
        level = store.in_view(t.prefix).level(t.layer, item.size)
        level.write("icons", item.start, done.icons)
        if done.alpha is not None:
            level.write("icon_alpha", item.start, done.alpha)
        level.write("icon_cosine", item.start, done.cosine)
        level.write("icon_objective", item.start, done.objective)  # last: the item is done
        if self.cache is not None and new:
            self.cache.put_many(new)
        ray_ops.count(
            "atlas_icons", n, {"source": "rendered" if new or not self.cache else "cache"}
        )
        self.items += 1
        kind, _, flag = self.fault.partition(":render:")
        if kind == "sigkill_once" and self.items == 2 and not os.path.exists(flag):
            open(flag, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        rendered = sum(len(g.icons) for g in new.values()) if self.cache else n
        return {
            "icons": n,
            "icons_rendered": rendered,
            "groups_rendered": len(new) if self.cache else len(parts),
            "groups_cached": len(parts) - (len(new) if self.cache else len(parts)),
        }

    def suggest_group(self) -> int:
        return self.renderer.suggest_group()

    def where(self) -> dict[str, str]:
        return {**ray_ops.where_am_i(), "device": self.device}


def run(ctx: StageRun) -> StageResult:
    s, r = ctx.s, ctx.conf(RenderConf)
    store = ctx.open_store("r+")
    whiten = (
        whitening_matrix(store.extraction(s.layer).second_moment())
        if r.whiten and r.objective == "lucid"
        else None
    )
    sizes = ctx.conf(GridConf).sizes
    if not any(_unfinished(store, s.layer, g, ctx.fp) for g in sizes):
        return _summarize(ctx, store, 0, 0, {}, {})
    ray_ops.init(s.cluster)
    res: Any = ctx.resources()  # an ActorResources
    ray_ops.require("cluster.render", res.num_cpus, res.num_gpus)
    cache = r.cache_dir or f"{s.run_dir.rstrip('/')}/icon-cache"
    target = Target(
        ctx.store_url,
        ctx.storage_options,
        ctx.view.store_prefix,
        s.layer,
        cache if r.cache else None,
    )
    spectrum = store.images.spectrum() if r.param == "maco" else None
    if r.param == "maco" and spectrum is None:
        raise ConfigError(
            "render.param",
            "maco",
            fix="this run's extraction has no amplitude "
            "spectrum (it predates it): re-extract, or use render.param=fft.",
        )
    args = (s.model.spec, r.icon, ctx.device(), whiten, target, test_fault(), spectrum)
    pool = ray_ops.ActorPool(
        RenderWorker, args, size=1, num_cpus=res.num_cpus, num_gpus=res.num_gpus
    )
    try:
        where = pool.call(0, "where")
        group = _group(ctx, store, pool)
        todo = sum(len(store.level(s.layer, g).read("count")) for g in sizes)
        now = (
            int(res.actors)
            if res.actors != "auto"
            else ray_ops.capacity(res.num_cpus, res.num_gpus)
        )
        item = _item_size(r, group, todo, max(1, now))
        items = [
            it for g in sizes for it in _plan_level(ctx, store, g, group, item, whiten, spectrum)
        ]
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
        done: dict[str, int] = {
            "icons": 0,
            "icons_rendered": 0,
            "groups_rendered": 0,
            "groups_cached": 0,
        }

        def count(_: RenderItem, out: dict[str, Any]) -> None:
            for k in done:
                done[k] += int(out[k])

        restarts = pool.map("render", items, desc="render", on_result=count, extra=(group,))
    finally:
        pool.close()
    return _summarize(
        ctx, store, restarts, group, done, {**where, "actors": actors, "group": group}
    )


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
    ctx: StageRun,
    store: RunStore,
    size: int,
    group: int,
    item: int,
    whiten: np.ndarray | None,
    spectrum: np.ndarray | None,
) -> list[RenderItem]:
    """The level's work items still to render (its icon arrays created when new)."""
    s, r, fp = ctx.s, ctx.conf(RenderConf), ctx.fp
    level = store.level(s.layer, size)
    grid = level.grid()
    m = len(grid.cell)
    if not level.has("icons") or level.array("icons").attrs.get("fingerprint") != fp:
        names = ["icons", "icon_objective", "icon_cosine"] + (
            ["icon_alpha"] if r.alpha != "none" else []
        )
        level.create(names, {"M": m, "px": r.icon_px, "group": group, "item": item})
        level.array("icons").attrs.update({"fingerprint": fp, "group": group, "alpha": r.alpha})
    item = level.icon_layout()[1]
    objective = level.read("icon_objective")
    seeds = [icon_seed(s.seed, s.layer, size, *grid.cell[i]) for i in range(m)]
    context = {"model": asdict(s.model.spec), "layer": s.layer, "icon": asdict(r.icon)}
    if spectrum is not None:  # MACO's magnitude is the run's own: a render input like whiten
        context["spectrum"] = hashlib.sha256(np.asarray(spectrum, np.float32).tobytes()).hexdigest()
    out = []
    for a in range(0, m, item):
        b = min(m, a + item)
        if not np.isnan(objective[a:b]).any():
            continue
        keys = (
            tuple(
                group_key(
                    grid.mean[g : min(b, g + group)], seeds[g : min(b, g + group)], context, whiten
                )
                for g in range(a, b, group)
            )
            if r.cache
            else ()
        )
        out.append(RenderItem(size, a, grid.mean[a:b], tuple(seeds[a:b]), keys))
    return out


def _actors(res: Any, items: int) -> int:
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
        "actor_restarts": restarts,
    }
    return StageResult(counts=counts, details=details)


def outputs(ctx: StageRun, store: RunStore) -> list[str]:
    """Every level's icons, and no icon left unrendered."""
    sizes = ctx.conf(GridConf).sizes
    keys = [f"{store.level(ctx.s.layer, g).path}/icon_objective" for g in sizes]
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
