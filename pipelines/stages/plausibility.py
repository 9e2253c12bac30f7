"""Plausibility stage: every rendered icon judged against its own cell's exemplar patches.

Per level, Ray tasks (on a GPU where the cluster gives this stage one) load the judge network
(default: the atlas's own model; ``plausibility.judge`` names another, cached per worker) and put
icons and exemplar patches through its pooled features (:mod:`atlas_core.quality`): one task for
the prototypes of the level's pool (every cell with exemplars up to ``plausibility.pool``, else a
seeded sample), then one task per ``cells_per_task`` cells scoring each icon against the pool:
the margin of its cosine to its own cell's exemplars over the pool's other cells, and its own
cell's rank among them; beside it, what a real exemplar reaches in the icon's place. The cost is
linear in the cells, and no process holds more than a task's patches. The driver writes
``grid/<G>/{icon_margin,icon_rank}`` and the summaries (level attributes, the manifest, the
viewer's cards, the sweep index).
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import fsspec
import numpy as np
from PIL import Image

from atlas_core.exemplars.sheets import cell as sheet_cell
from atlas_core.models import ModelSpec
from atlas_core.quality import (
    Plausibility,
    choose_pool,
    exemplar_reference,
    pooled_features,
    prototypes,
    score,
)
from atlas_core.store import RunStore
from atlas_core.store.check import missing_arrays
from pipelines.core import ray_ops
from pipelines.core.common import cached_model, resolve_device
from pipelines.core.schema import NOT_FINGERPRINTED, Group, Resources, setting
from pipelines.core.stage import Stage, StageResult, StageRun
from pipelines.stages.grid import GridConf

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlausibilityConf(Group):
    """plausibility: the judge network, the size it sees icons and patches at, the pool of
    cells each icon is ranked among, and the cells per task."""

    GROUP: ClassVar[str] = "plausibility"
    judge: str = ""  # a model name (model.name's choices); empty: the atlas's own model
    judge_weights: str | None = None  # the judge's weights (its default ones when empty)
    input_px: int = 112  # icons and patches are resized to this square for the judge
    pool: int = 2048  # cells ranked among: every cell with exemplars up to this, else a sample
    batch: int = field(default=64, metadata=NOT_FINGERPRINTED)
    cells_per_task: int = field(default=1024, metadata=NOT_FINGERPRINTED)

    def __post_init__(self) -> None:
        self._ranges({"input_px": (16, 1024), "pool": (2, None), "batch": (1, 4096),
                      "cells_per_task": (1, None)})  # fmt: skip


@dataclass(frozen=True)
class JudgeJob:
    """Cells [start, stop) of level ``size``: where the store and the sheets are, the judge."""

    store_url: str
    prefix: str
    run_dir: str
    storage_options: dict[str, Any]
    layer: str
    size: int
    start: int
    stop: int
    judge: ModelSpec
    input_px: int
    batch: int
    device: str

    def features(self, images: np.ndarray) -> np.ndarray:
        judge = cached_model(self.judge, resolve_device(self.device))
        return pooled_features(judge.module, judge.preprocess, images, input_px=self.input_px,
                               batch=self.batch, device=resolve_device(self.device))

    def exemplars(self, cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The judge's features of the exemplar patches of ``cells`` (level indices): (n, k, D)
        and which exist (n, k)."""
        store = RunStore.open(self.store_url, storage_options=self.storage_options)
        store = store.in_view(self.prefix)
        place, ok = places(store, self.layer, self.size, cells)
        attrs = dict(store.exemplars(self.layer).attrs)
        need = np.unique(place[ok])
        feats = self.features(read_patches(self.run_dir, self.storage_options, attrs, need))
        at = np.searchsorted(need, np.where(ok, place, need[0] if len(need) else 0))
        out = feats[np.minimum(at, max(len(need) - 1, 0))] if len(need) else \
            np.zeros((*ok.shape, 1), np.float32)  # fmt: skip
        return out, ok


def places(store: RunStore, layer: str, size: int, cells: np.ndarray
           ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """For ``cells`` of level ``size``: each exemplar's place in the exemplar index (n, k) and
    whether its patch exists (n, k)."""
    index = store.exemplars(layer).index()
    rows = store.level(layer, size).read("exemplar_row")[cells]
    if index is None or not len(index["row"]):
        return np.zeros(rows.shape, np.int64), np.zeros(rows.shape, bool)
    order = np.argsort(index["row"], kind="stable")
    at = np.searchsorted(index["row"], np.maximum(rows, 0), sorter=order)
    place = order[np.minimum(at, len(order) - 1)]
    ok = (rows >= 0) & (index["row"][place] == rows) & (index["ok"][place] == 1)
    return place, ok


def read_patches(root: str, opts: dict[str, Any], attrs: dict[str, Any], idx: np.ndarray
                 ) -> np.ndarray:  # fmt: skip
    """Patches ``idx`` (places in the exemplar index) from the exemplars stage's sheets:
    (n, p, p, 3) uint8; each sheet is read once."""
    per, cols, px = int(attrs["per_sheet"]), int(attrs["sheet_columns"]), int(attrs["patch_px"])
    out = np.zeros((len(idx), px, px, 3), np.uint8)
    sheets = idx // per
    for sh in np.unique(sheets):
        with fsspec.open(f"{root}/{attrs['sheets']}/patches-{int(sh)}.jpg", "rb", **opts) as f:
            sheet = np.asarray(Image.open(io.BytesIO(f.read())).convert("RGB"))
        for j in np.flatnonzero(sheets == sh):
            out[j] = sheet_cell(sheet, int(idx[j] % per), px, cols)
    return out


def pool_task(job: JudgeJob, pool: np.ndarray) -> np.ndarray:
    """Task body: the prototypes (P, D) of the level's pool cells."""
    ex, ok = job.exemplars(pool)
    return prototypes(ex, ok)[0]


def judge_task(job: JudgeJob, shared: tuple[np.ndarray, np.ndarray]
               ) -> tuple[Plausibility, Plausibility]:  # fmt: skip
    """Task body: the icons of cells [start, stop) against their exemplars and the pool (its
    cells and their prototypes), and a real exemplar in each icon's place (the ceiling)."""
    pool, pool_protos = shared
    store = RunStore.open(job.store_url, storage_options=job.storage_options).in_view(job.prefix)
    level = store.level(job.layer, job.size)
    ids = np.arange(job.start, job.stop)
    ex, ok = job.exemplars(ids)
    rendered = ~np.isnan(level.read("icon_objective", job.start, job.stop))
    icons = job.features(level.drawn(job.start, job.stop))  # as seen on white
    protos, has = prototypes(ex, ok & rendered[:, None])
    own = np.einsum("nd,nd->n", icons, protos)
    ours = score(icons, own, has, ids, pool, pool_protos)
    return ours, exemplar_reference(ex, ok, pool, pool_protos, ids)


def _judge_spec(ctx: StageRun) -> ModelSpec:
    conf = ctx.conf(PlausibilityConf)
    if not conf.judge:
        return ctx.s.model.spec
    with setting("plausibility", {"judge": conf.judge}):
        return ModelSpec(conf.judge, conf.judge_weights)


def _level(ctx: StageRun, store: RunStore, size: int) -> dict[str, Any] | None:
    """Judge one level: its pool's prototypes (one task), then its cells in tasks of
    ``cells_per_task``; writes the per-cell arrays, returns the level's summary."""
    s, conf, res = ctx.s, ctx.conf(PlausibilityConf), ctx.resources()
    level = store.level(s.layer, size)
    if not level.has("exemplar_row") or not level.has("icon_objective"):
        return None
    m = len(level.read("count"))
    _, ok = places(store, s.layer, size, np.arange(m))
    pool = choose_pool(np.flatnonzero(ok.any(1)), conf.pool, seed=s.seed + size)
    if not len(pool):
        return None
    job = JudgeJob(s.store_url, store.prefix, ctx.run_dir, s.storage_options, s.layer, size, 0,
                   m, _judge_spec(ctx), conf.input_px, conf.batch, ctx.device())  # fmt: skip
    (pool_protos,) = ray_ops.map_tasks(pool_task, [job], shared=pool, num_cpus=res.num_cpus,
                                       num_gpus=res.num_gpus, desc=f"plausibility {size} pool")
    step = conf.cells_per_task
    jobs = [replace(job, start=a, stop=min(m, a + step)) for a in range(0, m, step)]
    parts = ray_ops.map_tasks(judge_task, jobs, shared=(pool, pool_protos),
                              num_cpus=res.num_cpus, num_gpus=res.num_gpus,
                              desc=f"plausibility {size}")  # fmt: skip
    ours = Plausibility.concatenate([p[0] for p in parts])
    ref = Plausibility.concatenate([p[1] for p in parts])
    level.put_cells("icon_margin", ours.margin)
    level.put_cells("icon_rank", ours.rank)
    i, e = ours.summary(), ref.summary()
    summary: dict[str, Any] = {"judge": conf.judge or s.model.name, "pool": len(pool),
                               "icons": i, "exemplar": e}  # fmt: skip
    level.set_attrs({"plausibility": summary})
    log.info("plausibility %d (judge %s): icons margin %.3f, top-5 %.1f%% (chance %.1f%%); "
             "an exemplar in the icon's place: margin %.3f, top-5 %.1f%%", size,
             summary["judge"], i.get("margin_mean", float("nan")), 100 * i.get("top5", 0),
             100 * i.get("chance_top5", 0), e.get("margin_mean", float("nan")),
             100 * e.get("top5", 0))  # fmt: skip
    return summary


def run(ctx: StageRun) -> StageResult:
    s, conf = ctx.s, ctx.conf(PlausibilityConf)
    store = ctx.open_store("r+")
    ray_ops.init(s.cluster)
    res = ctx.resources()
    ray_ops.require("cluster.plausibility", res.num_cpus, res.num_gpus)
    counts = {str(g): out for g in ctx.conf(GridConf).sizes
              if (out := _level(ctx, store, g)) is not None}  # fmt: skip
    return StageResult(counts={"levels": counts},
                       details={"judge": conf.judge or s.model.name, "input_px": conf.input_px,
                                "pool": conf.pool})  # fmt: skip


def outputs(ctx: StageRun, store: RunStore) -> list[str]:
    paths = [f"{store.level(ctx.s.layer, g).path}/icon_margin" for g in ctx.conf(GridConf).sizes]
    return missing_arrays(store, paths)


STAGE = Stage(
    name="plausibility",
    run=run,
    needs=("render", "exemplars"),
    settings=PlausibilityConf,
    resources={"plausibility": Resources()},
    outputs=outputs,
    reads="`grid/<G>/{icons,icon_objective,exemplar_row}`, `layers/<L>/exemplars/*`, the "
    "exemplar sheets",
    writes="`[views/<v>/]layers/<L>/grid/<G>/{icon_margin,icon_rank}`, the level's "
    "`plausibility` attribute",
    ray="per level: one task for the pool's prototypes, then one task per `cells_per_task` "
    "cells (`map_tasks`): the judge's features of its icons and patches, scored against the pool",
)
