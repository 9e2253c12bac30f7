"""Plausibility stage: every rendered icon judged against its own cell's exemplar patches.

Ray tasks (on a GPU where the cluster gives this stage one) load the judge network (default: the
atlas's own model; ``plausibility.judge`` names another; once per worker) and use its pooled
features (:mod:`atlas_core.quality`). First every exemplar patch goes through it once, in tasks
of whole sheets that write ``layers/<L>/exemplars/judge``. Then, per level, the driver makes the
prototypes of the level's pool (every cell with exemplars up to ``plausibility.pool``, else a
seeded sample) from those features, and one task per ``cells_per_task`` cells scores each icon:
the margin of its cosine to its own cell's exemplars over the pool's other cells, and its own
cell's rank among them; beside it, what a real exemplar reaches in the icon's place. Each patch
and icon is judged once and the scoring is linear in the cells. The driver writes
``grid/<G>/{icon_margin,icon_rank}`` and the summaries (level attributes, the manifest, the
viewer's cards, the sweep index).
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np
from PIL import Image

from atlas_core.exemplars.sheets import cell as sheet_cell
from atlas_core.models import ModelSpec
from atlas_core.quality import (
    Plausibility,
    choose_pool,
    exemplar_reference,
    feature_dim,
    plausibility,
    pooled_features,
    prototypes,
)
from atlas_core.store import RunStore
from atlas_core.store.check import missing_arrays
from atlas_core.store.location import RunLocation
from pipelines.core import ray_ops
from pipelines.core.common import cached_model, resolve_device
from pipelines.core.settings import GridConf, PlausibilityConf, Resources
from pipelines.core.stage import Stage, StageResult, StageRun

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Judge:
    """Where the store and the sheets are (the view's location), and the judge (a plain value
    for the tasks)."""

    loc: RunLocation
    layer: str
    spec: ModelSpec
    input_px: int
    batch: int
    device: str

    def features(self, images: np.ndarray) -> np.ndarray:
        """Unit pooled features (n, D) of uint8 images (n, h, w, 3); the judge is loaded once
        per worker process."""
        device = resolve_device(self.device)
        judge = cached_model(self.spec, device, role="judge")
        return pooled_features(
            judge.module,
            judge.preprocess,
            images,
            input_px=self.input_px,
            batch=self.batch,
            device=device,
        )

    def dim(self) -> int:
        """The width of the judge's pooled features (task body: the worker then holds the
        judge, and the driver never loads it)."""
        judge = cached_model(self.spec, resolve_device(self.device), role="judge")
        return feature_dim(judge.module, judge.preprocess, self.input_px)

    def store(self) -> RunStore:
        return self.loc.open_store("r+")


@dataclass(frozen=True)
class SheetJob:
    """Exemplars [start, stop) of the index: whole sheets (chunks of ``judge``)."""

    judge: Judge
    start: int
    stop: int


@dataclass(frozen=True)
class CellJob:
    """Cells [start, stop) of level ``size``: their exemplars' places in the index (n, k) and
    which exist (n, k)."""

    judge: Judge
    size: int
    start: int
    stop: int
    place: np.ndarray
    ok: np.ndarray


def places(
    store: RunStore, layer: str, size: int, index: dict[str, np.ndarray] | None
) -> tuple[np.ndarray, np.ndarray]:
    """Each exemplar of each cell of level ``size``: its place in the exemplar ``index`` (M, k)
    and whether its patch exists (M, k)."""
    rows = store.level(layer, size).read("exemplar_row")
    if index is None or not len(index["row"]):
        return np.zeros(rows.shape, np.int64), np.zeros(rows.shape, bool)
    order = np.argsort(index["row"], kind="stable")
    at = np.searchsorted(index["row"], np.maximum(rows, 0), sorter=order)
    place = order[np.minimum(at, len(order) - 1)]
    ok = (rows >= 0) & (index["row"][place] == rows) & (index["ok"][place] == 1)
    return place, ok


def read_patches(
    loc: RunLocation, layer: str, attrs: dict[str, Any], idx: np.ndarray
) -> np.ndarray:
    """Patches ``idx`` (places in the exemplar index) from the exemplars stage's sheets of
    ``layer`` in the view at ``loc``: (n, p, p, 3) uint8; each sheet is read once."""
    per, cols, px = int(attrs["per_sheet"]), int(attrs["sheet_columns"]), int(attrs["patch_px"])
    out = np.zeros((len(idx), px, px, 3), np.uint8)
    sheets = idx // per
    for sh in np.unique(sheets):
        url = f"{loc.exemplars_dir(layer)}/patches-{int(sh)}.jpg"
        with fsspec.open(url, "rb", **loc.storage_options) as f:
            sheet = np.asarray(Image.open(io.BytesIO(f.read())).convert("RGB"))
        for j in np.flatnonzero(sheets == sh):
            out[j] = sheet_cell(sheet, int(idx[j] % per), px, cols)
    return out


def sheet_task(job: SheetJob) -> int:
    """Task body: the judge's features of every patch of whole sheets, into ``judge``."""
    j = job.judge
    store = j.store()
    node = store.exemplars(j.layer)
    idx = np.arange(job.start, job.stop)
    feats = j.features(read_patches(j.loc, j.layer, dict(node.attrs), idx))
    ok = node.read("ok", job.start, job.stop) == 1
    node.write("judge", job.start, np.where(ok[:, None], feats, np.nan).astype(np.float16))
    return len(idx)


def cell_task(
    job: CellJob, shared: tuple[np.ndarray, np.ndarray]
) -> tuple[Plausibility, Plausibility]:
    """Task body: the icons of cells [start, stop) against their exemplars' features and the
    pool (its cells and their prototypes), and a real exemplar in each icon's place."""
    pool, pool_protos = shared
    j = job.judge
    store = j.store()
    level = store.level(j.layer, job.size)
    ex = store.exemplars(j.layer).take("judge", job.place.reshape(-1))
    ex = np.nan_to_num(ex.reshape(*job.place.shape, -1))
    ids = np.arange(job.start, job.stop)
    rendered = ~np.isnan(level.read("icon_objective", job.start, job.stop))
    icons = j.features(level.drawn(job.start, job.stop))  # as seen on white
    return (
        plausibility(icons, ex, job.ok & rendered[:, None], pool, pool_protos, ids),
        exemplar_reference(ex, job.ok, pool, pool_protos, ids),
    )


def _judge_spec(ctx: StageRun) -> ModelSpec:
    conf = ctx.conf(PlausibilityConf)
    return ModelSpec(conf.judge, conf.judge_weights) if conf.judge else ctx.s.model.spec


def _features(
    ctx: StageRun, store: RunStore, judge: Judge, index: dict[str, np.ndarray] | None
) -> None:
    """Every exemplar patch through the judge once: tasks of whole sheets write ``judge``."""
    node, res = store.exemplars(ctx.s.layer), ctx.resources()
    rows, per = (len(index["row"]) if index else 0), int(node.attrs.get("per_sheet", 1))
    if not rows:
        return
    (dim,) = ray_ops.gather(
        [ray_ops.submit(Judge.dim, judge, num_cpus=res.num_cpus, num_gpus=res.num_gpus)],
        desc="plausibility judge",
    )
    node.create(["judge"], {"R": rows, "D": dim, "sheet": per})
    step = per * max(1, ctx.conf(PlausibilityConf).sheets_per_task)
    jobs = [SheetJob(judge, a, min(rows, a + step)) for a in range(0, rows, step)]
    ray_ops.map_tasks(
        sheet_task, jobs, num_cpus=res.num_cpus, num_gpus=res.num_gpus, desc="plausibility patches"
    )


def _level(
    ctx: StageRun, store: RunStore, judge: Judge, size: int, index: dict[str, np.ndarray] | None
) -> dict[str, Any] | None:
    """Judge one level's icons in tasks of ``cells_per_task`` cells, against its pool (every
    cell with exemplars up to ``plausibility.pool``, else a seeded sample, whose prototypes
    the driver makes from the stored features); writes the per-cell arrays, returns the
    level's summary."""
    s, conf, res = ctx.s, ctx.conf(PlausibilityConf), ctx.resources()
    level = store.level(s.layer, size)
    if not level.has("exemplar_row") or not level.has("icon_objective"):
        return None
    place, ok = places(store, s.layer, size, index)
    pool = choose_pool(np.flatnonzero(ok.any(1)), conf.pool, seed=s.seed + size)
    if not len(pool):  # no cell has an exemplar: nothing to judge, as for such a cell
        level.put_cells("icon_margin", np.full(len(place), np.nan, np.float32))
        level.put_cells("icon_rank", np.zeros(len(place), np.int32))
        return None
    feats = store.exemplars(s.layer).take("judge", place[pool].reshape(-1))
    pool_protos = prototypes(np.nan_to_num(feats.reshape(*place[pool].shape, -1)), ok[pool])[0]
    m, step = len(place), conf.cells_per_task
    jobs = [
        CellJob(judge, size, a, min(m, a + step), place[a : a + step], ok[a : a + step])
        for a in range(0, m, step)
    ]
    parts = ray_ops.map_tasks(
        cell_task,
        jobs,
        shared=(pool, pool_protos),
        num_cpus=res.num_cpus,
        num_gpus=res.num_gpus,
        desc=f"plausibility {size}",
    )
    ours = Plausibility.concatenate([p[0] for p in parts])
    ref = Plausibility.concatenate([p[1] for p in parts])
    level.put_cells("icon_margin", ours.margin)
    level.put_cells("icon_rank", ours.rank)
    i, e = ours.summary(), ref.summary()
    summary: dict[str, Any] = {
        "judge": conf.judge or s.model.name,
        "pool": len(pool),
        "icons": i,
        "exemplar": e,
    }
    level.set_attrs({"plausibility": summary})
    log.info(
        "plausibility %d (judge %s): icons margin %.3f, top-5 %.1f%% (chance %.1f%%); "
        "an exemplar in the icon's place: margin %.3f, top-5 %.1f%%",
        size,
        summary["judge"],
        i.get("margin_mean", float("nan")),
        100 * i.get("top5", 0),
        100 * i.get("chance_top5", 0),
        e.get("margin_mean", float("nan")),
        100 * e.get("top5", 0),
    )
    return summary


def run(ctx: StageRun) -> StageResult:
    s, conf = ctx.s, ctx.conf(PlausibilityConf)
    store = ctx.open_store("r+")
    ray_ops.init(s.cluster)
    res = ctx.resources()
    ray_ops.require("cluster.plausibility", res.num_cpus, res.num_gpus)
    judge = Judge(
        ctx.loc,
        s.layer,
        _judge_spec(ctx),
        conf.input_px,
        conf.batch,
        ctx.device(),
    )
    index = store.exemplars(s.layer).index()
    _features(ctx, store, judge, index)
    counts = {
        str(g): out
        for g in ctx.conf(GridConf).sizes
        if (out := _level(ctx, store, judge, g, index)) is not None
    }
    return StageResult(
        counts={"levels": counts},
        details={"judge": conf.judge or s.model.name, "input_px": conf.input_px, "pool": conf.pool},
    )


def outputs(ctx: StageRun, store: RunStore) -> list[str]:
    paths = [store.level(ctx.s.layer, g).key("icon_margin") for g in ctx.conf(GridConf).sizes]
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
    writes="`layers/<L>/exemplars/judge`, `[views/<v>/]layers/<L>/grid/<G>/{icon_margin,"
    "icon_rank}`, the level's `plausibility` attribute",
    ray="one task per `sheets_per_task` sheets: the judge's features of their patches; then per "
    "level one task per `cells_per_task` cells: its icons' features, scored against the level's "
    "pool (`map_tasks`)",
)
