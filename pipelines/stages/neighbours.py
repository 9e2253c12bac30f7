"""Neighbours stage: the layer's nearest-neighbour index in activation space, built once per run.

One Ray task reads the layer's activations in storage-object blocks, builds the index
(:class:`atlas_core.neighbours.NeighbourIndex`: inverted lists over a seeded spherical k-means,
exact cosines inside; exact with one list for small runs), and, with ``neighbours.k``, every
sample's k nearest other samples, which it writes into arrays the driver created; the driver
stores the index's bytes (without the vectors: they are the activations). ``atlas neighbours``,
the server and the notebook search it; ``atlas diff`` reads the stored neighbours of two runs.
The index depends on the activations and its settings only, never on the threads; on a GPU (the
task has one: `cluster.neighbours`) its cosines carry the GPU's float32 rounding.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from atlas_core.explore.search import blocks
from atlas_core.neighbours import NeighbourIndex, NeighbourParams
from atlas_core.store import RunStore
from atlas_core.store.check import missing_arrays
from atlas_core.store.location import RunLocation
from pipelines.core import ray_ops
from pipelines.core.common import peak_rss_mb, resolve_device
from pipelines.core.settings import NeighboursConf, Resources
from pipelines.core.stage import Stage, StageResult, StageRun

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IndexJob:
    """The layer to index, where its store is, the index's settings, and the graph's k."""

    loc: RunLocation
    layer: str
    params: NeighbourParams
    k: int
    threads: int
    device: str  # auto | cpu | cuda (resolved on the task's node)


def index_task(job: IndexJob) -> tuple[bytes, dict[str, Any]]:
    """Task body: build the index; write every sample's ``k`` nearest (arrays the driver
    created), a storage object at a time; return the index's bytes and what built it."""
    device = resolve_device(job.device)
    store = job.loc.open_store("r+")
    index = NeighbourIndex.build(
        blocks(store, job.layer), job.params, threads=job.threads, device=device
    )
    graph_device = index.graph_device(device) if job.k else device
    if job.k:
        rows, cos = index.knn_graph(job.k, threads=job.threads, device=graph_device)
        node = store.neighbours(job.layer)
        for a, b in store.sample_ranges():
            node.write("rows", a, rows[a:b])
            node.write("cos", a, cos[a:b])
    return index.to_bytes(), {
        **index.describe(),
        "device": device,
        "graph_device": graph_device,
        "threads": job.threads,
        "peak_rss_mb_task": peak_rss_mb(),
    }


def run(ctx: StageRun) -> StageResult:
    s, conf = ctx.s, ctx.conf(NeighboursConf)
    store = ctx.open_store("r+")
    node = store.neighbours(s.layer)
    if conf.k:
        node.create(["rows", "cos"], {**store.sample_dims(), "k": conf.k})
    params = conf.params()
    ray_ops.init(s.cluster)
    res = ctx.resources()
    ray_ops.require("cluster.neighbours", res.num_cpus, res.num_gpus)
    job = IndexJob(ctx.loc, s.layer, params, conf.k, conf.threads_for(res), ctx.device())
    (out,) = ray_ops.gather(
        [ray_ops.submit(index_task, job, num_cpus=res.num_cpus, num_gpus=res.num_gpus)],
        desc="neighbour index",
    )
    blob, described = out
    node.put("index", np.frombuffer(blob, np.uint8))
    node.set_attrs({"fingerprint": ctx.fp, "k": conf.k, **described})
    log.info("neighbours: %s, %d bytes", described.get("method"), len(blob))
    return StageResult(
        counts={
            "rows": described.get("present", 0),
            "lists": described.get("lists", 0),
            "index_bytes": len(blob),
            "k": conf.k,
        },
        details={**described, "peak_rss_mb_driver": peak_rss_mb()},
    )


def outputs(ctx: StageRun, store: RunStore) -> list[str]:
    node = store.neighbours(ctx.s.layer)
    keys = [node.key("index")] + ([node.key("rows")] if ctx.s.neighbours.k else [])
    return missing_arrays(store, keys)


STAGE = Stage(
    name="neighbours",
    run=run,
    needs=("extract",),
    settings=NeighboursConf,
    resources={"neighbours": Resources()},
    outputs=outputs,
    kinds=("atlas",),
    reads="`layers/<L>/acts`",
    writes="`layers/<L>/neighbours/{index,rows,cos}`",
    ray="one task: the index and every sample's k nearest (`submit`)",
)
