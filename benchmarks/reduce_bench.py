"""Reduce benchmark: our sample fit + parallel Ray transform (the pipeline's own reduce stage on a
run store) against umap-learn ``fit_transform`` on all rows, at equal UMAP settings.

Data: a synthetic non-negative Gaussian mixture with the dimension of EfficientNet-Lite0's
blocks.4 (112 channels), since the demo corpus has only a few thousand real rows.

    python -m benchmarks.reduce_bench [--rows 200000] [--scaling 50000,100000,200000,400000,1000000]
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import (
    RayRssSampler,
    Timer,
    mixture,
    peak_rss_mb,
    report,
    settings,
    write,
)

log = logging.getLogger("benchmarks.reduce")
DIM = 112
N_NEIGHBORS = 20
FIT_ROWS = 20_000


def _store(path: Path, x: np.ndarray) -> str:
    from atlas_core.data import InputManifest, plan_shards
    from atlas_core.data.decode import Status
    from atlas_core.store import RunStore
    from atlas_core.store.run_store import StoreLayout

    n = len(x)
    man = InputManifest(
        uris=np.array([f"synthetic/{i}" for i in range(n)], dtype=object),
        crops=np.full((n, 4), -1, np.int32),
    )
    plan = plan_shards(n, chunk_images=8192, chunks_per_shard=4)
    st = RunStore.create(
        str(path),
        man,
        plan,
        np.zeros((n, 2), np.int16),
        StoreLayout(k=1, seed=0, layers={"blocks.4": (DIM, 14, 14)}, topk=0),
    )
    st.group["layers/blocks.4/acts"][:] = x.astype(np.float16)
    st.group["images/status"][:] = np.full(n, int(Status.OK), np.uint8)
    return str(path)


def _make_store(path: str, n: int) -> None:
    _store(Path(path), mixture(n, DIM))


def _card(s: Any) -> Any:
    """The model card of the synthetic store: its one layer, no class head."""
    from atlas_core.models.card import ModelCard
    from atlas_core.models.preprocess import Preprocess

    return ModelCard(s.model.spec, Preprocess(), {s.layer: (DIM, 1, 1)})


def ours(n: int) -> dict[str, float]:
    """Run our reduce stage in this process (Ray tasks for the fit and the transform). The store
    is written by a child process first, so this process's peak memory is the stage's own.
    Timed: the stage (reading the store, fit, searches, placement, writes, normalization and the
    quality figures); not timed: starting Ray, which a pipeline run does once for every stage."""
    import multiprocessing

    from pipelines.core import ray_ops
    from pipelines.core.stage import StageRun
    from pipelines.core.views import MAIN
    from pipelines.stages.reduce import run

    with tempfile.TemporaryDirectory() as tmp:
        child = multiprocessing.get_context("spawn").Process(
            target=_make_store, args=(str(Path(tmp) / "atlas.zarr"), n)
        )
        child.start()
        child.join()
        if child.exitcode != 0:
            raise RuntimeError(f"writing the synthetic store failed ({child.exitcode})")
        s = settings(
            f"run_dir={tmp}",
            "model=tiny",
            "layer=blocks.4",
            "reduce.backend=umap-learn",
            f"reduce.n_neighbors={N_NEIGHBORS}",
            "reduce.min_dist=0.05",
            "reduce.metric=cosine",
            f"reduce.fit_rows={FIT_ROWS}",
            "reduce.quality_sample=5000",
            "cluster.num_cpus=2",
        )
        ray_ops.init(s.cluster)
        with RayRssSampler() as workers, Timer() as t:
            res = run(StageRun("reduce", s, MAIN, "bench", _card(s)))
        ray_ops.shutdown()
    return {
        "seconds": t.seconds,
        "trustworthiness": res.details["trustworthiness_k10"],
        "knn_recall": res.details["knn_recall_k10"],
        "peak_rss_mb_driver": peak_rss_mb(),
        "peak_rss_mb_one_worker": workers.peak_mb,
        "phase_seconds": res.details["phase_seconds"],
    }


def peer(n: int) -> dict[str, float]:
    """umap-learn fit_transform on every row, unseeded so it may use every core (its fastest).
    It gets the numba kernel cache ours gets (compiled code loaded from disk, not timed)."""
    import umap

    from atlas_core.reduce import layout_quality
    from atlas_core.reduce.backends import cache_numba_kernels

    cache_numba_kernels()

    x = mixture(n, DIM).astype(np.float16).astype(np.float32)  # same values as the store holds
    with Timer() as t:
        emb = umap.UMAP(n_neighbors=N_NEIGHBORS, min_dist=0.05, metric="cosine").fit_transform(x)
    q = layout_quality(x, emb, metric="cosine", sample=5000, seed=1)
    return {
        "seconds": t.seconds,
        "trustworthiness": q["trustworthiness_k10"],
        "knn_recall": q["knn_recall_k10"],
        "peak_rss_mb": peak_rss_mb(),
    }


def _subprocess(which: str, n: int) -> dict[str, float]:
    """Each measurement in a fresh process: clean peak memory, no shared JIT or Ray state."""
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.reduce_bench", "--one", which, "--rows", str(n)],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{which} at {n} rows failed:\n{out.stderr[-3000:]}")
    res = json.loads(out.stdout.strip().splitlines()[-1])
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--scaling", default="50000,100000,200000,400000,1000000")
    ap.add_argument("--one", choices=["ours", "peer"])
    args = ap.parse_args()
    if args.one:
        print(json.dumps((ours if args.one == "ours" else peer)(args.rows)))
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    o = _subprocess("ours", args.rows)
    p = _subprocess("peer", args.rows)
    ratio = p["seconds"] / o["seconds"]
    report(
        f"reduce {args.rows} x {DIM}",
        o["seconds"],
        p["seconds"],
        "s",
        f"trustworthiness ours {o['trustworthiness']:.4f} peer {p['trustworthiness']:.4f}",
    )
    scaling = {}
    for n in (int(v) for v in args.scaling.split(",") if v):
        scaling[str(n)] = o if n == args.rows else _subprocess("ours", n)
        log.info(
            "ours at %d rows: %.1f s, trustworthiness %.4f",
            n,
            scaling[str(n)]["seconds"],
            scaling[str(n)]["trustworthiness"],
        )
    write(
        "reduce",
        {
            "rows": args.rows,
            "dim": DIM,
            "data": "synthetic non-negative Gaussian mixture",
            "umap": {"n_neighbors": N_NEIGHBORS, "min_dist": 0.05, "metric": "cosine"},
            "ours": {
                **o,
                "method": f"UMAP fit of {FIT_ROWS} seeded landmark rows (exact kNN graph) in one "
                "Ray task while Ray tasks search every row's 10 nearest landmarks exactly; rows "
                "placed at the membership-weighted mean (2 CPUs; Ray start-up not timed)",
            },
            "peer": {**p, "method": "umap-learn fit_transform on all rows, unseeded (parallel)"},
            "ratio_vs_umap_learn": round(ratio, 3),
            "trustworthiness_delta": round(o["trustworthiness"] - p["trustworthiness"], 4),
            "scaling_ours_seconds": {k: round(v["seconds"], 1) for k, v in scaling.items()},
            "scaling_ours_trustworthiness": {k: v["trustworthiness"] for k, v in scaling.items()},
            "scaling_ours_peak_rss_mb": {
                k: {"driver": v["peak_rss_mb_driver"], "one_worker": v["peak_rss_mb_one_worker"]}
                for k, v in scaling.items()
            },
        },
    )


if __name__ == "__main__":
    main()
