"""``atlas diff``'s whole path on run stores of 100k and 1M samples, and the exact kNN graph apart.

Stores: two run stores written through RunStore (one sample per image), rows as
benchmarks/diff_bench.py generates them (200 clusters laid out in 2-D, B moving 30% of them,
1% holes per run, predictions one class per cluster with flips in moved clusters, labels on 80%
of the rows): per image its URI, crop, label and top class, per sample both runs' layouts, four
levels (20, 40, 80, 160) keeping the cells with at least 10 samples as the grid stage does, a
manifest naming the layer; where the exact kNN is timed, 16-channel activations (the cluster's
centre plus noise).

The command's path, in a fresh process per size: ``run_diff(A, B, k=10, knn=...)``, i.e. open
both runs, check that they share their images (URIs, crops, positions, block by block), pass 1,
both kNN graphs written block by block into diff.zarr, pass 2, the tables, diff.json and the
page. Its kNN graph is the generator's (the stand-in for the approximate index that replaces
today's O(N^2) exact search); the exact search (``knn_graph`` over the stored activations) is
timed apart at 25k, 50k and 100k rows, with its growth exponent and its projection to 1M.
Checked: the command's overall figures equal a DiffAccumulator fed the same rows.

    python -m benchmarks.diff_command_bench [--sizes 100000,1000000] [--knn-sizes ...]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import peak_rss_mb
from benchmarks.diff_bench import BLOCK, CLUSTERS, LEVELS, SEED, K, _spans, block

log = logging.getLogger("benchmarks.diff_command")
LAYER = "L"
CHANNELS = 16
CHUNK_IMAGES = 16_384  # a storage object of every per-sample array (BLOCK is 4 of them)
MIN_COUNT = 10


def _acts(n: int, a: int, b: int) -> np.ndarray:
    """Activations of rows [a, b): their cluster's centre (A's cluster ids) plus noise."""
    centres = np.abs(np.random.default_rng(SEED + 7).normal(size=(CLUSTERS, CHANNELS)))
    rng = np.random.default_rng([SEED + 8, a])
    c = np.arange(a, b) * CLUSTERS // n
    return (centres[c] + rng.normal(0, 0.3, (b - a, CHANNELS))).astype(np.float16)


def _create(path: Path, n: int, labels: np.ndarray) -> Any:
    from atlas_core.data.plan import plan_shards
    from atlas_core.data.sources import InputManifest
    from atlas_core.store import RunStore
    from atlas_core.store.run_store import StoreLayout

    uris = np.array([f"/data/img-{i:07d}.jpg" for i in range(n)], dtype=object)
    manifest = InputManifest(uris, np.full((n, 4), -1, np.int32), labels=labels)
    layout = StoreLayout(k=1, seed=SEED, layers={LAYER: (CHANNELS, 3, 3)}, topk=1, n_classes=1000)
    plan = plan_shards(n, chunk_images=CHUNK_IMAGES)
    store = RunStore.create(
        str(path / "atlas.zarr"), manifest, plan, np.zeros((n, 2), np.int16), layout
    )
    store.layout_node(LAYER).create(["layout"], layout.dims(n, plan))
    return store


def generate(root: Path, n: int, acts: bool) -> dict[str, Any]:
    """Write runs ``root/a`` and ``root/b`` of n samples; returns the figures a DiffAccumulator
    gives over the same rows (layouts as the stores hold them, float32)."""
    from atlas_core.compare import DiffAccumulator, both_kept
    from atlas_core.grid.binning import cell_index
    from atlas_core.store import RunLocation

    labels = np.concatenate([block(n, a, b)["y"] for a, b in _spans(n, BLOCK)]).astype(np.int32)
    stores = {s: _create(root / s, n, labels) for s in "ab"}
    counts = {s: {g: np.zeros(g * g, np.int64) for g in LEVELS} for s in "ab"}
    kept = []
    for a, b in _spans(n, BLOCK):
        blk = block(n, a, b)
        for s, st in stores.items():
            xy = blk["l" + s].astype(np.float32)
            st.layout_node(LAYER).write("layout", a, xy)
            st.images.write("status", a, np.ones(b - a, np.uint8))
            st.images.write("top_class", a, blk["p" + s].astype(np.int32)[:, None])
            if acts:
                st.extraction(LAYER).write("acts", a, _acts(n, a, b))
            for g in LEVELS:
                c = cell_index(xy, g)
                counts[s][g] += np.bincount(c[c >= 0], minlength=g * g)
        kept.append(both_kept(blk["la"].astype(np.float32), blk["lb"].astype(np.float32)))
    for s, st in stores.items():
        _write_levels(st, counts[s])
        loc = RunLocation.of(str(root / s))
        loc.write_json(loc.manifest_url, {"layer": LAYER, "model": f"synthetic-{s}"})
    acc = DiffAccumulator(np.concatenate(kept), LEVELS, k=K, min_count=MIN_COUNT)
    for a, b in _spans(n, BLOCK):
        blk = block(n, a, b)
        la, lb = blk["la"].astype(np.float32), blk["lb"].astype(np.float32)
        acc.add(
            a,
            la,
            lb,
            knn_a=blk["ka"],
            knn_b=blk["kb"],
            pred_a=blk["pa"],
            pred_b=blk["pb"],
            label=blk["y"],
        )
    return acc.finish().figures


def _write_levels(store: Any, counts: dict[int, np.ndarray]) -> None:
    from atlas_core.store import GridArrays

    for g, cnt in counts.items():
        flat = np.flatnonzero(cnt >= MIN_COUNT)
        m = len(flat)
        grid = GridArrays(
            g,
            np.stack([flat % g, flat // g], 1).astype(np.int32),
            np.zeros((m, CHANNELS), np.float32),
            cnt[flat].astype(np.int32),
            np.zeros((m, 1), np.int32),
            cnt[flat, None].astype(np.int32),
        )
        store.level(LAYER, g).write_grid(grid, {"min_count": MIN_COUNT})


class GeneratorGraph:
    """The kNN graphs the generator made, handed over as an index would: per run (by its store's
    URL), blocks of ``block_rows`` rows (BLOCK-aligned, so the same rows as generated)."""

    def __init__(self, n: int, root: Path) -> None:
        self.n = n
        self.side = {str(root / s / "atlas.zarr"): "k" + s for s in "ab"}

    def __call__(
        self, store: Any, layer: str, k: int, kept: np.ndarray, *, block_rows: int
    ) -> Iterator[tuple[int, np.ndarray]]:
        if block_rows % BLOCK or k != K:
            raise ValueError(f"the generator's graph comes in blocks of {BLOCK} rows, k={K}")
        key = self.side[store.url]
        for a, b in _spans(self.n, block_rows):
            yield (
                a,
                np.concatenate([block(self.n, a + s, a + e)[key] for s, e in _spans(b - a, BLOCK)]),
            )


def command(n: int, root: Path) -> dict[str, Any]:
    """The command's whole path over ``root/a`` and ``root/b`` in this (fresh) process."""
    from pipelines.commands.diff import run_diff

    baseline = peak_rss_mb()
    t0, c0 = time.perf_counter(), time.process_time()
    loc, result = run_diff(
        str(root / "a"),
        str(root / "b"),
        k=K,
        out=str(root / "diff"),
        knn=GeneratorGraph(n, root),
        rows_per_block=BLOCK,
    )
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    phases = result.seconds
    graph = phases.get("knn_a", 0.0) + phases.get("knn_b", 0.0)
    size = sum(f.stat().st_size for f in (root / "diff").rglob("*") if f.is_file())
    return {
        "rows": n,
        "seconds": round(wall, 2),
        "cpu_seconds": round(cpu, 2),
        "seconds_without_knn": round(wall - graph, 2),
        "phases": phases,
        "baseline_rss_mb": baseline,
        "peak_rss_mb": peak_rss_mb(),
        "peak_above_baseline_mb": round(peak_rss_mb() - baseline, 1),
        "diff_folder_mb": round(size / 2**20, 1),
        "figures": {k: v for k, v in result.diff.figures.items() if k != "transitions"},
        "page": Path(loc.diff_page_url).is_file(),
    }


def exact_knn_time(n: int, root: Path) -> dict[str, Any]:
    """The exact kNN graph of run A's stored activations, timed (this process, fresh)."""
    import torch  # noqa: F401  (imported by the search: not counted in its memory)

    from atlas_core.compare.knn import knn_graph
    from atlas_core.store import RunStore

    store = RunStore.open(str(root / "a" / "atlas.zarr"))
    kept = np.isfinite(store.layout_node(LAYER).read("layout")).all(axis=1)
    baseline = peak_rss_mb()
    t0, c0 = time.perf_counter(), time.process_time()
    rows = sum(len(ids) for _, ids in knn_graph(store, LAYER, K, kept, block_rows=BLOCK))
    return {
        "rows": n,
        "graph_rows": rows,
        "channels": CHANNELS,
        "seconds": round(time.perf_counter() - t0, 2),
        "cpu_seconds": round(time.process_time() - c0, 2),
        "peak_above_baseline_mb": round(peak_rss_mb() - baseline, 1),
    }


def _child(*args: str) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "benchmarks.diff_command_bench", *args]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def exponent(rows: list[dict[str, Any]], key: str) -> float | None:
    a, b = rows[0], rows[-1]
    if a[key] <= 0 or b[key] <= 0 or a["rows"] == b["rows"]:
        return None
    return round(math.log(b[key] / a[key]) / math.log(b["rows"] / a["rows"]), 3)


def run(sizes: list[int], knn_sizes: list[int], tmp: Path) -> dict[str, Any]:
    """Every measurement, each in a fresh process; the stores live under ``tmp``."""
    results, knn = [], []
    for n in sorted(set(sizes) | set(knn_sizes)):
        root = tmp / f"n{n}"
        t0 = time.perf_counter()
        want = _child("--generate", str(n), "--root", str(root), "--acts", str(n in knn_sizes))
        log.info("%d rows: stores written in %.1f s", n, time.perf_counter() - t0)
        if n in knn_sizes:
            knn.append(_child("--knn", str(n), "--root", str(root)))
            log.info("exact kNN at %d rows: %.1f s", n, knn[-1]["seconds"])
        if n in sizes:
            got = _child("--command", str(n), "--root", str(root))
            got["figures_equal_accumulator"] = all(
                got["figures"][k] == v for k, v in want.items() if k in got["figures"]
            )
            results.append(got)
            log.info(
                "command at %d rows: %.1f s (%.1f s without the kNN), peak %.0f MB above "
                "baseline, figures equal: %s",
                n,
                got["seconds"],
                got["seconds_without_knn"],
                got["peak_above_baseline_mb"],
                got["figures_equal_accumulator"],
            )
        shutil.rmtree(root, ignore_errors=True)
    out: dict[str, Any] = {"command": results, "exact_knn": knn}
    if len(results) > 1:
        out["command_growth_exponent"] = {
            k: exponent(results, k)
            for k in ("seconds", "seconds_without_knn", "cpu_seconds", "peak_above_baseline_mb")
        }
    if len(knn) > 1:
        out |= knn_growth(knn)
    return out


def knn_growth(knn: list[dict[str, Any]]) -> dict[str, Any]:
    """The exact search's growth exponents (wall and CPU seconds, memory) and the largest
    size's wall time projected to 1M rows at the CPU exponent (the steadier figure on a shared
    machine; the search is O(N^2) by construction)."""
    e = {k: exponent(knn, k) for k in ("seconds", "cpu_seconds", "peak_above_baseline_mb")}
    out: dict[str, Any] = {"exact_knn_growth_exponent": e}
    if e["cpu_seconds"] is not None:
        last = knn[-1]
        projected = last["seconds"] * (1_000_000 / last["rows"]) ** e["cpu_seconds"]
        out["exact_knn_projected_1m_seconds"] = round(projected, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--knn-sizes", default="25000,50000,100000")
    for flag in ("--generate", "--command", "--knn"):
        ap.add_argument(flag, type=int, help=argparse.SUPPRESS)
    ap.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--acts", default="False", help=argparse.SUPPRESS)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.generate:
        print(json.dumps(generate(args.root, args.generate, args.acts == "True"), default=float))
    elif args.command:
        print(json.dumps(command(args.command, args.root), default=float))
    elif args.knn:
        print(json.dumps(exact_knn_time(args.knn, args.root), default=float))
    else:
        with tempfile.TemporaryDirectory(dir=os.environ.get("ATLAS_BENCH_TMP")) as tmp:
            result = run(_ints(args.sizes), _ints(args.knn_sizes), Path(tmp))
        print(json.dumps(result, indent=2, default=float))


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


if __name__ == "__main__":
    main()
