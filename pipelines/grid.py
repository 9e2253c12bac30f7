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
from typing import Any

import numpy as np

from atlas_core.errors import StoreError
from atlas_core.grid import (
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
from atlas_core.store import RunStore
from atlas_core.store.run_store import GridArrays
from pipelines import ray_ops
from pipelines.common import StageResult, cached_model, peak_rss_mb
from pipelines.settings import Settings, setting

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GridJob:
    store_url: str
    storage_options: dict[str, Any]
    layer: str
    sizes: tuple[int, ...]
    start: int
    stop: int


def sums_task(job: GridJob) -> list[SparseSums]:
    """Task body: sparse per-cell activation sums of rows [start, stop), one per grid size."""
    store = RunStore.open(job.store_url, mode="r", storage_options=job.storage_options)
    xy = store.layout(job.layer, job.start, job.stop)
    acts = store.acts(job.layer, job.start, job.stop)
    return [sparse_partial_sums(cell_index(xy, g), acts, g) for g in job.sizes]


def run(s: Settings, fp: str) -> StageResult:
    store = RunStore.open(s.store_url, mode="r+", storage_options=s.storage_options)
    layout = store.layout(s.layer)
    channels = store.layers[s.layer][0]
    totals = {g: empty_sums(g, channels) for g in s.grid.sizes}

    def add(_: int, parts: list[SparseSums]) -> None:
        for part in parts:
            add_sparse(totals[part.size], part)

    jobs = [
        GridJob(s.store_url, s.storage_options, s.layer, s.grid.sizes, a, b)
        for a, b in store.sample_ranges()
    ]
    ray_ops.init(s.cluster)
    res = s.cluster.grid
    ray_ops.require("cluster.grid", res.num_cpus, res.num_gpus)
    ray_ops.map_tasks(
        sums_task, jobs, num_cpus=res.num_cpus, num_gpus=res.num_gpus, desc="grid sums",
        on_result=add, labels=[f"rows {j.start}..{j.stop}" for j in jobs],
    )  # fmt: skip
    top = store.top_class()
    image = store.image_of_sample()
    sample_label = top[image, 0] if top.shape[1] else None
    attr = _attribution(store, s.layer, top, image)
    kept_per_size, labels = {}, []
    for size in s.grid.sizes:
        cells = cell_index(layout, size)
        kept, mean, count = finalize(totals[size], s.grid.min_count)
        if sample_label is not None:
            tc, tn = top_classes_per_cell(cells, sample_label, kept, s.grid.top)
        else:
            tc = np.full((len(kept), s.grid.top), -1, np.int32)
            tn = np.zeros((len(kept), s.grid.top), np.int32)
        xy = np.stack([kept % size, kept // size], axis=1).astype(np.int32)
        store.write_grid(
            s.layer,
            GridArrays(size, xy, mean, count.astype(np.int32), tc, tn),
            {"min_count": s.grid.min_count, "fingerprint": fp},
        )
        if attr is not None:
            ac, av = attribution_per_cell(cells, kept, *attr, top=s.grid.top)
            store.write_grid_extra(s.layer, size, "attr_top_class", ac)
            store.write_grid_extra(s.layer, size, "attr_top_value", av)
            labels.append(ac[:, 0])
        kept_per_size[str(size)] = len(kept)
        log.info("grid %d: %d of %d cells kept (count >= %d)", size, len(kept), size * size,
                 s.grid.min_count)  # fmt: skip
    heat = _write_heat(s, store, layout, attr, labels) if attr is not None else []
    return StageResult(
        counts={"cells_kept": kept_per_size, "heat_classes": len(heat)},
        details={
            "labels": "attribution" if attr is not None else "predictions",
            "tasks": len(jobs),
            "peak_rss_mb_driver": peak_rss_mb(),
        },
    )


def _attribution(
    store: RunStore, layer: str, top: np.ndarray, image: np.ndarray
) -> tuple[np.ndarray, np.ndarray, int] | None:
    """(classes (S, A), values (S, A), n_classes) of the layer's attribution, if extracted."""
    found = store.attribution(layer)
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


def heat_classes(s: Settings, labels: list[np.ndarray]) -> np.ndarray:
    """The classes of the heatmaps: ``grid.heatmap`` (names or indices), else the 64 classes
    that label the most cells over every level."""
    if s.grid.heatmap:
        model = cached_model(s.model.spec, "cpu")
        with setting("grid", {"class": "heatmap"}):
            return np.array([model.class_index(c) for c in s.grid.heatmap], np.int64)
    flat = np.concatenate(labels) if labels else np.zeros(0, np.int64)
    flat = flat[flat >= 0]
    if not len(flat):
        return np.zeros(0, np.int64)
    uniq, n = np.unique(flat, return_counts=True)
    return np.sort(uniq[np.lexsort((uniq, -n))][:64]).astype(np.int64)


def _write_heat(
    s: Settings, store: RunStore, layout: np.ndarray, attr: tuple[np.ndarray, np.ndarray, int],
    labels: list[np.ndarray],
) -> list[int]:  # fmt: skip
    """Per level: ``heat`` (M, H), each kept cell's mean attribution to each heatmap class, and
    ``heat_class`` (H,)."""
    heat = heat_classes(s, labels)
    for size in s.grid.sizes:
        grid = store.grid_cells(s.layer, size)[0]
        kept = grid[:, 1].astype(np.int64) * size + grid[:, 0]
        values = class_heat(cell_index(layout, size), kept, attr[0], attr[1], heat)
        store.write_grid_extra(s.layer, size, "heat", values.reshape(len(kept), len(heat)))
        store.write_grid_extra(s.layer, size, "heat_class", heat)
    return heat.tolist()
