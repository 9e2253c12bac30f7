"""Compose benchmark: peak memory of the tile pyramid (ours) against drawing each level as one
canvas in one process (the peer: what compose did before, ``compose_canvas`` of every icon and one
PNG), on the same synthetic stores: the demo's levels (16 and 32, 64 px icons) and one 320 x 320
level of 80 px icons (R3's icon size). Icons are random pixels (smoothed, so PNG and JPEG sizes
are realistic); every cell is kept at 320.

Ours is the real compose stage (Ray tasks: every tile of every zoom, the overviews, the card
sheets, the viewer) with density sizing off, so both sides draw the same pixels; its figure is the
largest resident set of the driver and of any one Ray worker. The peer runs in a fresh process
(its figure: that process's peak). Quality: our overview ``atlas-<G>.png`` against the peer's
canvas downsampled to the same size (mean absolute difference, 0-255). Store creation is left out
of both timings.

    python -m benchmarks.compose_bench [--big 320] [--px 80]
"""

from __future__ import annotations

import argparse
import logging
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.common import RayRssSampler, report, settings, synthetic_run, write

log = logging.getLogger("benchmarks.compose")
LAYER = "blocks.2"


def make_store(run_dir: Path, levels: dict[int, float], px: int, seed: int = 0) -> None:
    """A run store holding only what compose reads (per level kept cells, counts, top classes
    and icons): :func:`benchmarks.common.synthetic_run`."""
    synthetic_run(run_dir, levels, px, seed=seed)


PEER = """
import sys, resource, numpy as np
from PIL import Image
from atlas_core.compose import compose_canvas
from atlas_core.store import RunStore
store = RunStore.open(sys.argv[1])
g = int(sys.argv[2])
cells, _ = store.level("blocks.2", g).cells()
icons, _, _ = store.level("blocks.2", g).icons()
canvas = compose_canvas(cells, icons, g)
Image.fromarray(canvas).save(sys.argv[3], compress_level=6)
w = int(sys.argv[4])
Image.fromarray(canvas).resize((w, w), Image.Resampling.BOX).save(sys.argv[3] + ".small.png")
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def peer(run_dir: Path, g: int, width: int) -> tuple[float, float, np.ndarray]:
    """(seconds, peak MB, the canvas downsampled to ``width``) of one-canvas compose."""
    t0 = time.perf_counter()
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            PEER,
            str(run_dir / "atlas.zarr"),
            str(g),
            str(run_dir / f"peer-{g}.png"),
            str(width),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - t0
    small = np.asarray(Image.open(run_dir / f"peer-{g}.png.small.png").convert("RGB"))
    return seconds, float(out.stdout.split()[-1]), small


def ours(run_dir: Path, sizes: list[int], px: int) -> tuple[float, dict]:
    from pipelines.commands.run import stage_run
    from pipelines.core import ray_ops
    from pipelines.stages import compose

    s = settings(
        "model=tiny",
        f"run_dir={run_dir}",
        f"grid.sizes=[{','.join(map(str, sizes))}]",
        f"render.icon_px={px}",
        "compose.density=false",
    )
    ray_ops.init(s.cluster)
    with RayRssSampler() as rss:
        t0 = time.perf_counter()
        res = compose.run(stage_run(s, "compose"))
        seconds = time.perf_counter() - t0
    ray_ops.shutdown()
    return seconds, {
        **res.details,
        "counts": res.counts,
        "worker_peak_rss_mb": rss.peak_mb,
        "driver_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def case(name: str, levels: dict[int, float], px: int) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix=f"compose-{name}-"))
    try:
        make_store(tmp, levels, px)
        sizes = sorted(levels)
        seconds, det = ours(tmp, sizes, px)
        big = sizes[-1]
        width = min(big * px, 4096)
        p_seconds, p_mb, p_small = peer(tmp, big, width)
        mine = np.asarray(Image.open(tmp / f"atlas-{big}.png").convert("RGB")).astype(int)
        diff = float(np.abs(mine - p_small.astype(int)).mean())
        ours_mb = max(det["worker_peak_rss_mb"], det["driver_peak_rss_mb"])
        report(f"compose {name} peak MB", ours_mb, p_mb, "MB", f"overview diff {diff:.2f}/255")
        return {
            "levels": {str(g): levels[g] for g in sizes},
            "icon_px": px,
            "ours": {
                "seconds": round(seconds, 2),
                "tiles": det["counts"]["tiles"],
                "driver_peak_rss_mb": round(det["driver_peak_rss_mb"], 1),
                "worker_peak_rss_mb": det["worker_peak_rss_mb"],
                "task_peak_rss_mb": det["peak_rss_mb_tasks"],
                "zooms": det["zooms"],
            },
            "peer": {
                "method": f"compose_canvas of level {big} in one process + one PNG",
                "seconds": round(p_seconds, 2),
                "peak_rss_mb": round(p_mb, 1),
                "canvas_px": big * px,
            },
            "ratio_peak_memory": round(p_mb / ours_mb, 2),
            "overview_mean_abs_diff": round(diff, 3),
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--big", type=int, default=320)
    ap.add_argument("--px", type=int, default=80)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    result = {
        "demo_levels": case("demo levels 16+32", {16: 0.42, 32: 0.2}, 64),
        "big_level": case(f"{args.big}x{args.big}", {args.big: 1.0}, args.px),
        "note": "ours: the largest of the driver's and any Ray worker's peak RSS (workers "
        "hold a Python with torch, zarr and Ray imported before any work: the "
        "demo-level figures)",
    }
    write("compose", result)


if __name__ == "__main__":
    main()
