"""What a run will cost before it starts: rows, cells, icons, storage objects, bytes and hours.

Pure arithmetic over a run's shape (:class:`RunShape`: images, samples, layers, levels, icon and
exemplar settings) and a device's calibration (:class:`Device`). Cell counts come from a simple
model of the layout: it covers a share ``AREA`` of the unit square (measured on UMAP layouts
here), and a cell is kept when it gets at least ``min_count`` samples, a Poisson draw of the mean
density there. Byte sizes per array come from the compression ratios measured on real runs here;
storage objects from the arrays' chunking, which the store's nodes declare (one object per chunk
or shard, one ``zarr.json`` per array and group). The figures are estimates: ``atlas plan``
prints them with the calibration they used, and the scale benchmark checks them against runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from atlas_core.compose.points import CHUNK as POINTS_CHUNK
from atlas_core.compose.points import DETAIL_IMAGES
from atlas_core.neighbours import NeighbourParams

AREA = 0.45  # share of the unit square a normalized UMAP layout covers (measured: 0.42-0.48)
TILE_BYTES = 18_000  # a 256 px JPEG tile of icons (measured mean, 16-64 px icons)
STATIC = (12, 230_000)  # the viewer's own files: Leaflet, script, style (files, bytes)
# the neighbour index's throughput per thread: its FLOPs (k-means, every row's candidates) per
# second, measured by `python -m benchmarks.neighbours_bench` here (1M x 112: 2.7 TFLOP for
# the graph in 669 s on 2 threads); the task runs on CPUs unless cluster.neighbours asks a GPU
KNN_GFLOPS_PER_THREAD = 2.0


@dataclass(frozen=True)
class RunShape:
    """The shape of one run: everything the estimate reads."""

    n_images: int
    k: int  # samples per image
    channels: dict[str, int]  # layer -> C, every extracted layer
    layer: str
    act_bytes: int  # 2 (float16) or 4
    attr: int  # attribution columns (0: none)
    topk: int
    chunk_images: int  # images per storage object
    shards: int
    levels: tuple[int, ...]
    min_count: int
    icon_px: int
    steps: int
    attempts: int
    group: int
    item: int
    exemplars_k: int
    patch_px: int
    thumb_px: int
    rows_per_task: int
    tile_px: int
    zooms: dict[int, tuple[int, int]]  # level -> (zmin, zmax)
    distinct_sources: int  # source files (photos: a few; a folder: every image)
    uri_bytes: int = 60
    views: int = 1
    judge_dim: int = 1280  # the plausibility judge's pooled features per patch
    judge_px: int = 112  # the size it sees icons and patches at
    judge_gflops: float = 0.0  # its whole forward pass per image at its own input size
    judge_input_px: int = 224
    cells_per_task: int = 2048
    sheets_per_task: int = 4
    neighbours: NeighbourParams = field(default_factory=NeighbourParams)  # the index's settings
    neighbours_k: int = 10  # every sample's k nearest are stored (0: the index only)
    neighbour_threads: int = 1
    neighbour_gpu: bool = False  # the index task has a GPU (cluster.neighbours.num_gpus)


@dataclass(frozen=True)
class Device:
    """Throughput of one worker slot (a task or actor with its resources) of a kind of node,
    and how many slots each node has. Network cost enters by FLOPs: extraction takes
    1 / (1 / decode + GFLOPs per image / forward GFLOP/s) images per second per slot;
    rendering 3 x the GFLOPs to the layer x (icon px / input px)^2 per icon-step (forward and
    backward). Measured here for ``cpu``; recorded from published figures for GPUs."""

    name: str
    decode_images_s: float  # images decoded and resized per second per slot
    forward_gflops_s: float  # effective inference GFLOP/s per slot
    render_gflops_s: float  # effective forward + backward GFLOP/s per render actor
    umap_rows_s: float  # landmark fit, rows per second
    place_rows_s: float  # rows placed per second per search slot
    exemplar_sources_s: float  # source images re-read per second per CPU
    tiles_s: float  # tiles drawn per second per CPU
    slots: int = 2  # extraction tasks / render actors at once per node
    cpus: int = 2  # CPU tasks at once per node (grid, exemplars, compose)
    note: str = ""
    startup_s: float = 0.0  # per stage on GPUs: models loaded, kernels tuned, actors started
    # the neighbour index's float32 products on one GPU, when cluster.neighbours has one
    # (0: none; the task then runs on KNN_GFLOPS_PER_THREAD x its threads)
    knn_gflops_s: float = 0.0


CALIBRATION = {
    # this 2-core machine: `make demo` (EfficientNet-Lite0, 0.77 GFLOPs counted as torch's
    # FlopCounterMode does, two per multiply-add: 13.2 images/s and 142 icon-steps/s at 64 px
    # per slot) and `make bench-scale` (the rest)
    "cpu": Device(
        "cpu",
        100.0,
        11.7,
        17.0,
        2_600.0,
        20_000.0,
        180.0,
        75.0,
        2,
        2,
        "2 CPU cores, measured here (make demo, make bench-scale)",
    ),
    # one H100 per worker node with 8 CPUs: JPEG decode and resize at ~250 ImageNet images/s
    # per CPU thread (8 threads), inference at ~60 TFLOP/s effective in bf16; rendering at the
    # project's bar
    # (100k icon-steps/s at 80 px stopped at mixed4c: ~0.8 GFLOPs a step, 80 TFLOP/s); cuML
    # UMAP 1M x 512 in ~10 s (published on a V100: 20 s)
    "h100": Device(
        "h100",
        2_000.0,
        60_000.0,
        80_000.0,
        100_000.0,
        2_000_000.0,
        400.0,
        75.0,
        1,
        8,
        "published figures, per GPU worker (8 CPUs, 1 H100); not measured here",
        120.0,
        knn_gflops_s=1_000.0,  # assumed (GPU products, CPU merges); not measured
    ),
    "a100": Device(
        "a100",
        2_000.0,
        30_000.0,
        40_000.0,
        60_000.0,
        1_200_000.0,
        400.0,
        75.0,
        1,
        8,
        "published figures, per GPU worker (8 CPUs, 1 A100); not measured here",
        120.0,
        knn_gflops_s=600.0,  # assumed (GPU products, CPU merges); not measured
    ),
}


@dataclass
class Plan:
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    bytes: dict[str, float] = field(default_factory=dict)
    objects: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "stages": self.stages,
            "store_bytes": int(sum(self.bytes.values())),
            "objects": int(sum(self.objects.values())),
            "bytes_by_group": {k: int(v) for k, v in self.bytes.items()},
            "objects_by_group": {k: int(v) for k, v in self.objects.items()},
        }


def kept_cells(samples: int, size: int, min_count: int) -> int:
    """Expected kept cells of a level: the covered cells with at least ``min_count`` samples."""
    covered = max(1.0, AREA * size * size)
    lam = samples / covered
    p = 1.0 - sum(math.exp(-lam) * lam**j / math.factorial(j) for j in range(min_count))
    return round(min(covered, samples) * p)


def exemplar_rows(samples: int, cells: int, k: int) -> int:
    """Distinct samples that are an exemplar of some cell: each cell draws k of its own."""
    return round(samples * (1.0 - math.exp(-cells * k / max(samples, 1))))


def _objects(rows: float, per: float) -> float:
    return max(1.0, math.ceil(rows / max(per, 1)))


def estimate(r: RunShape) -> Plan:
    """Rows, cells, icons, bytes and objects of every stage's outputs."""
    plan = Plan()
    s = r.n_images * r.k
    cells = {g: kept_cells(s, g, r.min_count) for g in r.levels}
    icons = sum(cells.values())
    ex_rows = exemplar_rows(s, icons, r.exemplars_k)
    sources = min(r.distinct_sources, ex_rows)
    _extraction(plan, r)
    _levels(plan, r, cells, ex_rows, sources)
    _neighbours(plan, r)
    tiles = sum(sum(4**z for z in range(lo, hi + 1)) for lo, hi in r.zooms.values())
    icon = r.icon_px * r.icon_px * 3
    plan.bytes["viewer"] = (
        tiles * TILE_BYTES + icons * (icon * 0.55 + 40 + 30 * r.exemplars_k) + STATIC[1]
    )
    plan.objects["viewer"] = (
        tiles
        + sum(_objects(m, 256) + _objects(m, 1024) + 1 for m in cells.values())
        + _objects(sources, r.rows_per_task)
        + STATIC[0]
        + 4
    )
    # the explorer's points (atlas_core.compose.points): base64 columns, 20 bytes a sample;
    # per image its URI, top classes and sample places; the exemplar patches' places
    n = r.n_images
    plan.bytes["viewer"] += (
        s * 20 * 4 / 3
        + n * (r.uri_bytes + 3 + (4 * r.topk + 4 * r.k) * 4 / 3)
        + ex_rows * 37
        + 6_000
    )
    plan.objects["viewer"] += 2 + _objects(s, POINTS_CHUNK) + _objects(n, DETAIL_IMAGES)
    width = {g: min(g * r.icon_px, 4096) for g in r.levels}
    plan.bytes["overviews"] = sum(w * w * 3 * 0.25 for w in width.values())
    plan.objects["overviews"] = len(r.levels) + 1
    c = r.channels[r.layer]
    plan.bytes["markers"] = r.shards * 700 + 12 * 1000 + 8 * c * c
    plan.objects["markers"] = r.shards + 12
    plan.stages = _stage_counts(r, cells, ex_rows, sources, tiles)
    return plan


def _extraction(plan: Plan, r: RunShape) -> None:
    """The extraction's bytes and objects: images, samples, activations, moments, layout."""
    n, s = r.n_images, r.n_images * r.k
    chunks = _objects(n, r.chunk_images)
    img_arrays, smp_arrays = 7, 2
    plan.bytes["extraction: images, samples"] = n * (0.5 * r.uri_bytes + 20 + 3 * r.topk) + s * 3
    plan.objects["extraction: images, samples"] = (img_arrays + smp_arrays) * (chunks + 1) + 3
    acts = sum(s * c * r.act_bytes * 0.9 + 8 * c * c for c in r.channels.values())
    plan.bytes["extraction: activations and moments"] = acts + s * r.attr * 2 * 0.9
    plan.objects["extraction: activations and moments"] = len(r.channels) * (
        (chunks + 1) * (1 + (r.attr > 0)) + 7
    )
    plan.bytes["layout"] = s * 16 * 0.85
    plan.objects["layout"] = 2 * (chunks + 1)


def _neighbours(plan: Plan, r: RunShape) -> None:
    """The neighbour index (without its vectors: they are the activations) and every sample's
    k nearest (int64 rows and float32 cosines, about 6 bytes a neighbour compressed)."""
    s = r.n_images * r.k
    lists = r.neighbours.lists_for(s)
    plan.bytes["neighbours"] = s * 9 + lists * r.channels[r.layer] * 4 + s * r.neighbours_k * 6
    graph = 2 * (_objects(r.n_images, r.chunk_images) + 1) if r.neighbours_k else 0
    plan.objects["neighbours"] = 3 + graph


def knn_gflops(r: RunShape) -> float:
    """The neighbour index's work: k-means over its training sample, every row assigned to a
    list, and with ``neighbours_k`` every row's candidates (``graph_probe`` lists) scored."""
    s, c, p = r.n_images * r.k, r.channels[r.layer], r.neighbours
    lists = p.lists_for(s)
    if lists == 1:
        return 2.0 * s * s * c / 1e9 if r.neighbours_k else 0.0
    train = min(s, p.train_per_list * lists)
    build = 2.0 * c * lists * (p.iters * train + s)
    graph = 2.0 * c * s * min(s, p.graph_probe * s / lists) if r.neighbours_k else 0.0
    return (build + graph) / 1e9


def _levels(plan: Plan, r: RunShape, cells: dict[int, int], ex_rows: int, sources: int) -> None:
    """The levels' cells and icons, the exemplars (with the judge's features), the cache."""
    icons = sum(cells.values())
    c = r.channels[r.layer]
    per_cell = c * 4 * 0.9 + 24 + r.topk * 10 + r.exemplars_k * 10
    icon = r.icon_px * r.icon_px * 3
    plan.bytes["levels: cells"] = icons * (per_cell + 8)  # + margin and rank
    plan.objects["levels: cells"] = len(r.levels) * 2 * 12
    plan.bytes["levels: icons"] = icons * (icon * 0.75 + 8)
    plan.objects["levels: icons"] = sum(3 * (_objects(m, r.item) + 1) for m in cells.values())
    plan.bytes["exemplars"] = ex_rows * (r.patch_px**2 * 3 * 0.12 + 30) + sources * (
        r.thumb_px**2 * 3 * 0.1
    )
    plan.objects["exemplars"] = 2 * _objects(ex_rows, r.rows_per_task) + 8
    # the judge's float16 features of every patch, a chunk per sheet (the plausibility stage)
    plan.bytes["exemplars"] += ex_rows * r.judge_dim * 2 * 0.9
    plan.objects["exemplars"] += _objects(ex_rows, r.rows_per_task) + 1
    plan.bytes["icon cache"] = icons * icon * 0.7
    plan.objects["icon cache"] = _objects(icons, r.group) * 1.0


def _stage_counts(
    r: RunShape, cells: dict[int, int], ex_rows: int, sources: int, tiles: int
) -> dict[str, dict[str, Any]]:
    """Per stage: its tasks and what it works on."""
    n, s = r.n_images, r.n_images * r.k
    icons = sum(cells.values())
    return {
        "extract": {"tasks": r.shards, "images": n, "samples": s},
        "reduce": {"rows": s, "fit_rows": min(s, 100_000), "tasks": 1 + 2 * r.shards},
        "grid": {"tasks": r.shards, "cells": cells},
        "exemplars": {
            "tasks": r.shards + int(_objects(ex_rows, r.rows_per_task)),
            "rows": ex_rows,
            "sources": sources,
        },
        "render": {
            "icons": icons,
            "icon_steps": icons * r.steps * r.attempts,
            "items": sum(int(_objects(m, r.item)) for m in cells.values()),
        },
        "plausibility": {
            "tasks": int(_objects(ex_rows, r.rows_per_task * r.sheets_per_task))
            + sum(int(_objects(m, r.cells_per_task)) for m in cells.values()),
            "patches": ex_rows,
            "icons": icons,
        },
        "neighbours": {"tasks": 1, "rows": s, "k": r.neighbours_k},
        "compose": {"tiles": tiles},
    }


def hours(
    plan: Plan, r: RunShape, dev: Device, gflops: tuple[float, float], input_px: int, workers: int
) -> dict[str, float]:
    """Each stage's hours on ``workers`` nodes of ``dev``; ``gflops``: (a whole forward pass,
    the forward pass to the atlas's layer) per image at ``input_px``."""
    st, w = plan.stages, max(1, workers)
    per_image = 1.0 / (1.0 / dev.decode_images_s + gflops[0] / dev.forward_gflops_s)
    extract = st["extract"]["images"] / (per_image * dev.slots * w)
    fit = st["reduce"]["fit_rows"] / dev.umap_rows_s
    place = max(0, st["reduce"]["rows"] - st["reduce"]["fit_rows"]) / (dev.place_rows_s * w)
    step = 3 * gflops[1] * (r.icon_px / input_px) ** 2
    render = st["render"]["icon_steps"] * step / (dev.render_gflops_s * dev.slots * w)
    cpu = dev.cpus * w
    ex = st["exemplars"]["sources"] / (dev.exemplar_sources_s * cpu) + st["exemplars"]["rows"] / (
        2_000.0 * cpu
    )
    compose = st["compose"]["tiles"] / (dev.tiles_s * cpu)
    up = dev.startup_s
    pl = st["plausibility"]
    judge = (
        (pl["patches"] + pl["icons"])
        * (r.judge_gflops or gflops[0])
        * (r.judge_px / r.judge_input_px) ** 2
        / (dev.forward_gflops_s * dev.slots * w)
    )
    knn_rate = KNN_GFLOPS_PER_THREAD * r.neighbour_threads
    if r.neighbour_gpu and dev.knn_gflops_s:
        knn_rate = dev.knn_gflops_s
    out = {
        "extract": extract + up,
        "reduce": fit + place + up,
        "grid": st["extract"]["samples"] / 2e5 / w,
        "exemplars": ex,
        "render": render + up,
        "plausibility": judge + up,
        "neighbours": knn_gflops(r) / knn_rate,
        "compose": compose,
    }
    return {k: float(f"{v / 3600:.3g}") for k, v in out.items()}
