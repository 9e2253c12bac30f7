"""The diff of two runs at 100k and 1M samples: time, peak memory, growth, and a brute check.

Synthetic pairs shaped like two runs over the same images, generated block by block (nothing of
size N is ever built except the two (N,) bool masks the diff keeps): 200 clusters laid out in
2-D, rows sorted by cluster; run B keeps each sample near its place in A (as aligned layouts
would) but moves 30% of the clusters elsewhere on the map; holes (NaN layouts) in 1% of the rows
of each run; kNN graphs k=10 of nearby rows (|i - j| <= 40), B's redrawn for 70% of the
neighbours in moved clusters and 15% elsewhere; predictions one class per cluster with 3% noise,
half of a moved cluster's flipping; labels on 80% of the rows. Levels 20, 40, 80 and 160.

Per size, in a fresh process (so each peak is its own): the streamed diff (pass 1 the kept mask,
pass 2 the accumulator, blocks of 65,536 rows) against the same diff over all rows in one block
(every array in memory at once: the peer); wall and CPU seconds of the diff alone (generation
excluded), peak resident memory above the process's baseline, the accumulator's own bytes. Then
the growth exponents (log f2/f1 over log n2/n1) and a brute-force check: the per-sample figures
of 2,000 random rows and every figure of three random cells of levels 20 and 160, recomputed by
Python loops over their rows.

Then the command's whole path on run stores of the same sizes, and the exact kNN graph timed
apart (benchmarks/diff_command_bench.py), into the same file under ``command``.

    python -m benchmarks.diff_bench [--sizes 100000,1000000] [--knn-sizes 25000,50000,100000]
        -> benchmarks/results/diff.json
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from benchmarks.common import peak_rss_mb, write

log = logging.getLogger("benchmarks.diff")
LEVELS = (20, 40, 80, 160)
K = 10
BLOCK = 65_536
CLUSTERS = 200
SEED = 0


def _centres() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cluster centres in A and B (B moves 30% of them), the moved flags: (C, 2), (C, 2), (C,)."""
    rng = np.random.default_rng(SEED)
    a = rng.uniform(0.1, 0.9, (CLUSTERS, 2))
    moved = rng.random(CLUSTERS) < 0.3
    b = np.where(moved[:, None], rng.uniform(0.1, 0.9, (CLUSTERS, 2)), a)
    return a, b, moved


def block(n: int, start: int, stop: int) -> dict[str, np.ndarray]:
    """Rows start..stop-1 of the synthetic pair of n rows (the same rows whatever the blocking
    of the caller, as long as generation blocks are BLOCK-aligned)."""
    rng = np.random.default_rng([SEED, start])
    ca, cb, moved = _centres()
    rows = np.arange(start, stop)
    c = rows * CLUSTERS // n
    m = moved[c]
    la = np.clip(ca[c] + rng.normal(0, 0.03, (len(rows), 2)), 0, 1)
    lb = np.clip(la - ca[c] + cb[c] + rng.normal(0, 0.004, (len(rows), 2)), 0, 1)
    la[rng.random(len(rows)) < 0.01] = np.nan
    lb[rng.random(len(rows)) < 0.01] = np.nan
    ka = np.clip(rows[:, None] + rng.integers(-40, 41, (len(rows), K)), 0, n - 1)
    redraw = rng.random((len(rows), K)) < np.where(m, 0.7, 0.15)[:, None]
    kb = np.where(
        redraw, np.clip(rows[:, None] + rng.integers(-40, 41, (len(rows), K)), 0, n - 1), ka
    )
    pa = np.where(rng.random(len(rows)) < 0.03, rng.integers(0, 1000, len(rows)), c % 1000)
    pb = np.where(m & (rng.random(len(rows)) < 0.5), (c + 1) % 1000, pa)
    y = np.where(rng.random(len(rows)) < 0.8, c % 1000, -1)
    return {"la": la, "lb": lb, "ka": ka, "kb": kb, "pa": pa, "pb": pb, "y": y}


def _spans(n: int, size: int) -> list[tuple[int, int]]:
    return [(a, min(a + size, n)) for a in range(0, n, size)]


class _Clock:
    """Wall and CPU seconds summed over the timed parts (the diff's own work only): the machine
    is shared, so the CPU seconds are the steadier figure."""

    def __init__(self) -> None:
        self.seconds = self.cpu = 0.0

    @contextmanager
    def timed(self) -> Iterator[None]:
        t0, c0 = time.perf_counter(), time.process_time()
        yield
        self.seconds += time.perf_counter() - t0
        self.cpu += time.process_time() - c0


class _Run:
    """One diff, timed and checked row by row on a sample."""

    def __init__(self, n: int, kept: np.ndarray, clock: _Clock) -> None:
        from atlas_core.compare import DiffAccumulator

        self.n, self.kept, self.clock = n, kept, clock
        self.sample = np.sort(np.random.default_rng(1).choice(n, 2000, replace=False))
        self.mismatches = 0
        with clock.timed():
            self.acc = DiffAccumulator(kept, LEVELS, k=K, min_count=10)

    def add(self, a: int, blk: dict[str, np.ndarray]) -> None:
        with self.clock.timed():
            part = self.acc.add(
                a,
                blk["la"],
                blk["lb"],
                knn_a=blk["ka"],
                knn_b=blk["kb"],
                pred_a=blk["pa"],
                pred_b=blk["pb"],
                label=blk["y"],
            )
        for i in self.sample[(self.sample >= a) & (self.sample < a + len(blk["la"]))]:
            want = _brute_row(int(i), i - a, blk, self.kept)
            got = (part.preservation[i - a], int(part.flip[i - a]), int(part.transition[i - a]))
            same = (math.isnan(got[0]) and math.isnan(want[0])) or abs(got[0] - want[0]) < 1e-6
            self.mismatches += not (same and got[1:] == want[1:])

    def finish(self) -> Any:
        with self.clock.timed():
            return self.acc.finish()


def _brute_row(i: int, j: int, blk: dict[str, np.ndarray], kept: np.ndarray) -> tuple:
    """(p_i, flip, transition code) of row i (row j of its block) by the definitions, in loops."""
    if not kept[i]:
        return (math.nan, -1, -1)
    va = {int(x) for x in blk["ka"][j] if x >= 0 and x != i and kept[x]}
    vb = {int(x) for x in blk["kb"][j] if x >= 0 and x != i and kept[x]}
    p = len(va & vb) / len(va) if va else math.nan
    a, b, y = int(blk["pa"][j]), int(blk["pb"][j]), int(blk["y"][j])
    if a < 0 or b < 0:
        return (p, -1, -1)
    if y < 0:
        code = -1
    elif a == y:
        code = 0 if b == y else 1
    else:
        code = 2 if b == y else 3 if a == b else 4
    return (p, int(a != b), code)


def streamed(n: int) -> tuple[Any, _Run]:
    """Pass 1: the kept mask; pass 2: the accumulator; blocks of BLOCK rows, made on the fly."""
    from atlas_core.compare import both_kept

    clock, parts = _Clock(), []
    for a, b in _spans(n, BLOCK):
        blk = block(n, a, b)
        with clock.timed():
            parts.append(both_kept(blk["la"], blk["lb"]))
    run = _Run(n, np.concatenate(parts), clock)
    for a, b in _spans(n, BLOCK):
        run.add(a, block(n, a, b))
    return run.finish(), run


def in_memory(n: int) -> tuple[Any, _Run]:
    """The peer: every array of every row in memory, one block."""
    from atlas_core.compare import both_kept

    blocks = [block(n, a, b) for a, b in _spans(n, BLOCK)]
    whole = {k: np.concatenate([x[k] for x in blocks]) for k in blocks[0]}
    del blocks
    clock = _Clock()
    with clock.timed():
        kept = both_kept(whole["la"], whole["lb"])
    run = _Run(n, kept, clock)
    run.add(0, whole)
    return run.finish(), run


def check_cells(n: int, diff: Any, kept: np.ndarray, per_level: int = 3) -> dict[str, int]:
    """Every figure of a few random A cells of levels 20 and 160, recomputed in loops over the
    rows in them (a second streamed pass): returns cells checked and mismatches."""
    from collections import Counter

    from atlas_core.grid.binning import cell_index

    rng = np.random.default_rng(2)
    chosen = {}
    for g in (20, 160):
        t = diff.levels[g].a
        found = np.flatnonzero(t.both > 0)
        rows = rng.choice(found, min(per_level, len(found)), replace=False)
        chosen[g] = {int(t.cell[r]): int(r) for r in rows}
    acc: dict[tuple[int, int], dict[str, Any]] = {
        (g, c): {"count": 0, "flows": Counter(), "p": [], "flips": [], "trans": Counter()}
        for g, cells in chosen.items()
        for c in cells
    }
    for a, b in _spans(n, BLOCK):
        blk = block(n, a, b)
        for g, cells in chosen.items():
            ca, cb = cell_index(blk["la"], g), cell_index(blk["lb"], g)
            for j in np.flatnonzero(np.isin(ca, list(cells))):
                s = acc[(g, int(ca[j]))]
                s["count"] += 1
                if not kept[a + j]:
                    continue
                s["flows"][int(cb[j])] += 1
                p, f, code = _brute_row(a + j, j, blk, kept)
                s["p"] += [] if math.isnan(p) else [p]
                s["flips"] += [] if f < 0 else [f]
                s["trans"][code] += code >= 0
    bad = 0
    for (g, c), s in acc.items():
        t, r = diff.levels[g].a, chosen[g][c]
        top = sorted(s["flows"].items(), key=lambda kv: (-kv[1], kv[0]))[:5]
        got_top = [
            (int(x), int(m)) for x, m in zip(t.flow_cell[r], t.flow_count[r], strict=True) if x >= 0
        ]
        checks = [
            t.count[r] == s["count"],
            t.both[r] == sum(s["flows"].values()),
            got_top == top,
            abs(t.preservation[r] - np.mean(s["p"])) < 1e-6,
            abs(t.flip_rate[r] - np.mean(s["flips"])) < 1e-6,
            t.transitions[r].tolist() == [s["trans"][i] for i in range(5)],
        ]
        bad += not all(checks)
    return {"cells_checked": len(acc), "cell_mismatches": bad}


def _state_mb(acc: Any) -> float:
    """Bytes the accumulator holds: masks, per-cell sums, pair and triple tables."""
    total = acc.kept.nbytes + acc.seen.nbytes
    for lv in (*acc.levels.values(), acc.total):
        for side in (lv.a, lv.b):
            total += sum(v.nbytes for v in vars(side).values() if isinstance(v, np.ndarray))
        total += sum(x.nbytes for x in lv.pairs.table())
    total += sum(x.nbytes for x in acc.triples.table())
    return round(total / 2**20, 1)


def one(n: int, mode: str) -> dict[str, Any]:
    """One size, one mode, in this process: the figures main() collects."""
    baseline = peak_rss_mb()
    t0 = time.perf_counter()
    diff, run = (streamed if mode == "streamed" else in_memory)(n)
    wall = time.perf_counter() - t0
    out: dict[str, Any] = {
        "rows": n,
        "mode": mode,
        "seconds": round(run.clock.seconds, 2),
        "cpu_seconds": round(run.clock.cpu, 2),
        "wall_seconds_with_generation": round(wall, 2),
        "baseline_rss_mb": baseline,
        "peak_rss_mb": peak_rss_mb(),
        "peak_above_baseline_mb": round(peak_rss_mb() - baseline, 1),
        "accumulator_mb": _state_mb(run.acc),
        "pairs_at_160": len(run.acc.levels[160].pairs.table()[0]),
        "sample_rows_checked": len(run.sample),
        "sample_mismatches": run.mismatches,
        "figures": {k: v for k, v in diff.figures.items() if k != "transitions"},
    }
    if mode == "streamed":
        out.update(check_cells(n, diff, run.kept))
        out["summary_levels"] = {
            g: {k: v for k, v in lv.items() if k != "largest"}
            for g, lv in diff.summary()["levels"].items()
        }
    return out


def _exponent(rows: list[dict[str, Any]], key: str) -> float | None:
    (a, b) = rows[0], rows[-1]
    if a[key] <= 0 or b[key] <= 0 or a["rows"] == b["rows"]:
        return None
    return round(math.log(b[key] / a[key]) / math.log(b["rows"] / a["rows"]), 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--knn-sizes", default="25000,50000,100000", help="exact kNN timed at")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="streamed", help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.one:
        sys.stdout.write(json.dumps(one(args.one, args.mode)) + "\n")
        return
    results: dict[str, list[dict[str, Any]]] = {"streamed": [], "in_memory": []}
    for n in (int(x) for x in args.sizes.split(",")):
        for mode in results:
            cmd = [sys.executable, "-m", "benchmarks.diff_bench", "--one", str(n), "--mode", mode]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            results[mode].append(json.loads(out.strip().splitlines()[-1]))
            r = results[mode][-1]
            log.info(
                "%s %d rows: %.2f s (cpu %.2f s), peak %.0f MB above baseline (accumulator "
                "%.1f MB), sample mismatches %d, cell mismatches %s",
                mode,
                n,
                r["seconds"],
                r["cpu_seconds"],
                r["peak_above_baseline_mb"],
                r["accumulator_mb"],
                r["sample_mismatches"],
                r.get("cell_mismatches"),
            )
    growth = {
        mode: {
            "seconds": _exponent(rows, "seconds"),
            "cpu_seconds": _exponent(rows, "cpu_seconds"),
            "peak_above_baseline_mb": _exponent(rows, "peak_above_baseline_mb"),
            "accumulator_mb": _exponent(rows, "accumulator_mb"),
        }
        for mode, rows in results.items()
    }
    ratios = _ratios(results)
    log.info("growth exponents %s; peer ratios %s", growth, ratios)
    write(
        "diff",
        {
            "levels": list(LEVELS),
            "k": K,
            "block_rows": BLOCK,
            "results": results,
            "growth_exponent": growth,
            "peer_ratios": ratios,
            "command": _command(args.sizes, args.knn_sizes),
        },
    )


def _ratios(results: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The peer (every row in memory) over the streamed diff, per size."""
    return [
        {
            "rows": s["rows"],
            "time_in_memory_over_streamed": round(m["seconds"] / s["seconds"], 2),
            "cpu_in_memory_over_streamed": round(m["cpu_seconds"] / s["cpu_seconds"], 2),
            "memory_in_memory_over_streamed": round(
                m["peak_above_baseline_mb"] / max(s["peak_above_baseline_mb"], 1e-9), 2
            ),
        }
        for s, m in zip(results["streamed"], results["in_memory"], strict=True)
    ]


def _command(sizes: str, knn_sizes: str) -> dict[str, Any]:
    """The command's whole path and the exact kNN (diff_command_bench), stores in a temporary
    folder (``ATLAS_BENCH_TMP`` to choose its disk)."""
    import os
    import tempfile
    from pathlib import Path

    from benchmarks import diff_command_bench as cb

    ints = [int(x) for x in sizes.split(",") if x]
    knn = [int(x) for x in knn_sizes.split(",") if x]
    with tempfile.TemporaryDirectory(dir=os.environ.get("ATLAS_BENCH_TMP")) as tmp:
        return cb.run(ints, knn, Path(tmp))


if __name__ == "__main__":
    main()
