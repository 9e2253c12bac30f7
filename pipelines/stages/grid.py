"""Grid stage: bin the layout at every size; per kept cell its mean, count and top classes.

Activation sums are computed by Ray tasks, one per shard's row range, each reading only its own
rows and returning sparse per-cell sums (never larger than its rows) that the driver adds into
one dense total per grid size as they arrive: no process holds every activation. The driver
holds per-row scalars only (the layout and each sample's label; attribution values too, when
extracted).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from atlas_core.errors import StoreError
from atlas_core.grid import (
    CellSums,
    SparseSums,
    add_sparse,
    attribution_per_cell,
    cell_index,
    class_heat,
    empty_sums,
    finalize,
    sparse_partial_sums,
    top_classes_per_cell,
)
from atlas_core.store import GridArrays, RunStore
from atlas_core.store.check import missing_arrays
from atlas_core.store.location import RunLocation
from pipelines.core import ray_ops
from pipelines.core.common import peak_rss_mb
from pipelines.core.settings import GridConf, Resources, setting
from pipelines.core.stage import Stage, StageResult, StageRun

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GridJob:
    """One shard's sample rows [start, stop) of a view's layout (``loc``: the view's)."""

    loc: RunLocation
    layer: str
    sizes: tuple[int, ...]
    start: int
    stop: int

    def open(self) -> tuple[RunStore, np.ndarray, np.ndarray]:
        """(the view's store, layout rows (n, 2), activation rows (n, C))."""
        store = self.loc.open_store("r")
        xy = store.layout_node(self.layer).read("layout", self.start, self.stop)
        return store, xy, store.extraction(self.layer).acts(self.start, self.stop)


def sums_task(job: GridJob) -> list[SparseSums]:
    """Task body: sparse per-cell activation sums of rows [start, stop), one per grid size."""
    _, xy, acts = job.open()
    return [sparse_partial_sums(cell_index(xy, g), acts, g) for g in job.sizes]


def grid_jobs(ctx: StageRun, store: RunStore, sizes: tuple[int, ...]) -> list[GridJob]:
    """One job per extraction shard's sample rows."""
    return [GridJob(ctx.loc, ctx.s.layer, sizes, a, b) for a, b in store.sample_ranges()]


def run(ctx: StageRun) -> StageResult:
    s, grid = ctx.s, ctx.conf(GridConf)
    store = ctx.open_store("r+")
    layout = store.layout_node(s.layer).read("layout")
    totals = _sums(ctx, store)
    top = store.images.top_class()
    image = store.image_of_sample()
    sample_label = top[image, 0] if top.shape[1] else None
    attr = _attribution(store, s.layer, top, image)
    kept_per_size, labels = {}, []
    for size in grid.sizes:
        kept, ac = _level(ctx, store, size, layout, totals.pop(size), sample_label, attr)
        kept_per_size[str(size)] = kept
        labels += [ac] if ac is not None else []
    heat = _write_heat(ctx, store, layout, attr, labels) if attr is not None else []
    return StageResult(
        counts={"cells_kept": kept_per_size, "heat_classes": len(heat)},
        details={
            "labels": "attribution" if attr is not None else "predictions",
            "tasks": len(store.sample_ranges()),
            "peak_rss_mb_driver": peak_rss_mb(),
        },
    )


def _sums(ctx: StageRun, store: RunStore) -> dict[int, CellSums]:
    """Per grid size, every cell's activation sums and counts, from one task per shard."""
    grid = ctx.conf(GridConf)
    channels = store.layers[ctx.s.layer][0]
    totals = {g: empty_sums(g, channels) for g in grid.sizes}

    def add(_: int, parts: list[SparseSums]) -> None:
        for part in parts:
            add_sparse(totals[part.size], part)

    jobs = grid_jobs(ctx, store, grid.sizes)
    ray_ops.init(ctx.s.cluster)
    res = ctx.resources()
    ray_ops.require("cluster.grid", res.num_cpus, res.num_gpus)
    ray_ops.map_tasks(
        sums_task,
        jobs,
        num_cpus=res.num_cpus,
        num_gpus=res.num_gpus,
        desc="grid sums",
        on_result=add,
        labels=[f"rows {j.start}..{j.stop}" for j in jobs],
        keep=False,
    )
    return totals


def _level(
    ctx: StageRun,
    store: RunStore,
    size: int,
    layout: np.ndarray,
    total: CellSums,
    sample_label: np.ndarray | None,
    attr: tuple[np.ndarray, np.ndarray, int] | None,
) -> tuple[int, np.ndarray | None]:
    """Finalize and write one level: kept cells, means, counts, top classes, attribution
    labels. Returns (cells kept, each kept cell's attribution label or None)."""
    grid = ctx.conf(GridConf)
    cells = cell_index(layout, size)
    kept, mean, count = finalize(total, grid.min_count)
    if sample_label is not None:
        tc, tn = top_classes_per_cell(cells, sample_label, kept, grid.top)
    else:
        tc = np.full((len(kept), grid.top), -1, np.int32)
        tn = np.zeros((len(kept), grid.top), np.int32)
    xy = np.stack([kept % size, kept // size], axis=1).astype(np.int32)
    level = store.level(ctx.s.layer, size)
    level.write_grid(
        GridArrays(size, xy, mean, count.astype(np.int32), tc, tn),
        {"min_count": grid.min_count, "fingerprint": ctx.fp},
    )
    label = None
    if attr is not None:
        ac, av = attribution_per_cell(cells, kept, *attr, top=grid.top)
        level.put_cells("attr_top_class", ac)
        level.put_cells("attr_top_value", av)
        label = ac[:, 0]
    log.info(
        "grid %d: %d of %d cells kept (count >= %d)", size, len(kept), size * size, grid.min_count
    )
    return len(kept), label


def _attribution(
    store: RunStore, layer: str, top: np.ndarray, image: np.ndarray
) -> tuple[np.ndarray, np.ndarray, int] | None:
    """(classes (S, A), values (S, A), n_classes) of the layer's attribution, if extracted."""
    found = store.extraction(layer).attribution()
    if found is None:
        return None
    values, every = found
    a = values.shape[1]
    if every:
        classes = np.broadcast_to(np.arange(a), values.shape)
        return np.ascontiguousarray(classes), values, a
    if top.shape[1] < a:
        raise StoreError(
            f"layer {layer} has {a} attribution columns but the store keeps only "
            f"{top.shape[1]} top classes per image: re-extract (extract.topk >= attr_classes)"
        )
    classes = np.maximum(top[image, :a], 0)
    return classes, values, int(store.attrs["n_classes"])


def heat_classes(ctx: StageRun, labels: list[np.ndarray]) -> np.ndarray:
    """The classes of the heatmaps: ``grid.heatmap`` (names or indices), else the 64 classes
    that label the most cells over every level."""
    grid = ctx.conf(GridConf)
    if grid.heatmap:
        with setting("grid", {"class": "heatmap"}):
            return np.array([ctx.card.class_index(c) for c in grid.heatmap], np.int64)
    flat = np.concatenate(labels) if labels else np.zeros(0, np.int64)
    flat = flat[flat >= 0]
    if not len(flat):
        return np.zeros(0, np.int64)
    uniq, n = np.unique(flat, return_counts=True)
    return np.sort(uniq[np.lexsort((uniq, -n))][:64]).astype(np.int64)


def _write_heat(
    ctx: StageRun,
    store: RunStore,
    layout: np.ndarray,
    attr: tuple[np.ndarray, np.ndarray, int],
    labels: list[np.ndarray],
) -> list[int]:
    """Per level: ``heat`` (M, H), each kept cell's mean attribution to each heatmap class, and
    ``heat_class`` (H,)."""
    heat = heat_classes(ctx, labels)
    for size in ctx.conf(GridConf).sizes:
        level = store.level(ctx.s.layer, size)
        grid = level.read("cell")
        kept = grid[:, 1].astype(np.int64) * size + grid[:, 0]
        values = class_heat(cell_index(layout, size), kept, attr[0], attr[1], heat)
        level.put_cells("heat", values.reshape(len(kept), len(heat)))
        level.put("heat_class", heat)
    return heat.tolist()


def outputs(ctx: StageRun, store: RunStore) -> list[str]:
    paths = [store.level(ctx.s.layer, g).key("mean") for g in ctx.conf(GridConf).sizes]
    return missing_arrays(store, paths)


STAGE = Stage(
    name="grid",
    run=run,
    needs=("reduce",),
    settings=GridConf,
    resources={"grid": Resources()},
    outputs=outputs,
    reads="`layers/<L>/layout`, `layers/<L>/acts`, `images/top_class`, `layers/<L>/attr`",
    writes="`[views/<v>/]layers/<L>/grid/<G>/{cell,count,mean,top_class,top_count,"
    "attr_top_*,heat,heat_class}`",
    ray="one task per shard returning sparse per-cell sums, added as they arrive (`map_tasks`)",
)
