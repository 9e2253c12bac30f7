"""``make bench-scale``: the R3 shape at three sizes, and how every cost grows with the work.

The Distill build's shape (levels 20, 40, 80, 160 and 320, R3's UMAP, grid and whitening) with
the toy model and tiny icons (16 px, 2 steps, 1 attempt), over seeded crops of the demo photos,
at ``SIZES`` images, each in a fresh process (so each driver's peak memory is its own). Per size:
each stage's seconds, the driver's and the largest Ray worker's peak resident memory, the run
directory's bytes and storage objects (files) by array group, the viewer's bytes and what its page
fetches to open (headless chromium over ``atlas serve``, when chromium is installed). Then the
growth exponent of every figure between the two larger sizes (log f2/f1 over log n2/n1: 1.0 is
linear) and its projection to ImageNet's 1.28M images. Results: benchmarks/results/scale.json,
which the README and docs/scale.md quote.

What it leaves out: the toy model makes extraction and rendering far cheaper than a real model's
(the GPU figures of the throughput benchmarks stand for those); Ray's own start-up is inside
each size's total but not in any stage.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks.common import write

log = logging.getLogger("benchmarks.scale")
SIZES = tuple(int(x) for x in os.environ.get("SCALE_SIZES", "10000,50000,200000").split(","))
IMAGENET = 1_281_167
OVERRIDES = (
    "model=tiny",
    "preset=r3",
    "grid.sizes=[20,40,80,160,320]",
    "grid.min_count=1",
    "render.steps=2",
    "render.icon_px=16",
    "render.attempts=1",
    "cluster.render.actors=auto",
)
GROUPS = (
    ("extraction: images, samples", ("atlas.zarr/images", "atlas.zarr/samples")),
    (
        "extraction: activations and moments",
        ("atlas.zarr/layers/blocks.2/acts", "atlas.zarr/layers/blocks.2/moment"),
    ),
    ("layout", ("atlas.zarr/layers/blocks.2/layout",)),
    ("levels: cells", ("atlas.zarr/layers/blocks.2/grid",)),
    ("exemplars: index", ("atlas.zarr/layers/blocks.2/exemplars",)),
    ("exemplars: sheets", ("exemplars/",)),
    ("markers", ("markers",)),
    ("icon cache", ("icon-cache",)),
    ("viewer", ("viewer",)),
    ("overviews", ("atlas.png", "atlas-")),
)


def _group(rel: str) -> str:
    for name, prefixes in GROUPS:
        if rel.startswith(prefixes):
            if name == "levels: cells" and "/icon" in rel:
                return "levels: icons"
            return name
    return "other"


def disk(run_dir: Path) -> dict[str, Any]:
    """Bytes and files of the run directory, in all and by group."""
    size: Counter[str] = Counter()
    files: Counter[str] = Counter()
    for p in run_dir.rglob("*"):
        if p.is_file():
            g = _group(str(p.relative_to(run_dir)))
            size[g] += p.stat().st_size
            files[g] += 1
    return {
        "bytes": sum(size.values()),
        "files": sum(files.values()),
        "bytes_by_group": dict(size),
        "files_by_group": dict(files),
    }


def one_size(n: int, root: Path) -> dict[str, Any]:
    """Run the rehearsal at ``n`` images in a fresh process; its figures."""
    run_dir = root / f"n{n}"
    out = root / f"n{n}.json"
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.scale_run",
        str(out),
        f"run_dir={run_dir}",
        f"data.n_images={n}",
        *OVERRIDES,
    ]
    log.info("scale: %d images: %s", n, " ".join(cmd[3:]))
    subprocess.run(cmd, check=True)
    figures = json.loads(out.read_text())
    figures |= disk(run_dir)
    figures["viewer_open"] = page_open(run_dir)
    return figures


def page_open(run_dir: Path) -> dict[str, Any] | None:
    """What the page fetches to open, and how long until it is interactive (data-ready), in
    headless chromium over ``atlas serve``; None without chromium."""
    from benchmarks.viewer_probe import probe

    return probe(run_dir)


def exponents(results: dict[int, dict[str, Any]]) -> dict[str, float]:
    """Growth exponent of every figure between the two largest sizes (none with one size)."""
    if len(results) < 2:
        return {}
    (n1, a), (n2, b) = sorted(results.items())[-2:]
    out = {}
    for key in _figures(a):
        x, y = _get(a, key), _get(b, key)
        if x and y and x > 0 and y > 0:
            out[key] = round(math.log(y / x) / math.log(n2 / n1), 3)
    return out


def _figures(r: dict[str, Any]) -> list[str]:
    keys = [f"seconds.{k}" for k in r["seconds"]]
    keys += ["bytes", "files", "peak_rss_mb_driver", "peak_rss_mb_worker"]
    keys += [f"bytes_by_group.{k}" for k in r["bytes_by_group"]]
    keys += [f"files_by_group.{k}" for k in r["files_by_group"]]
    if r.get("viewer_open"):
        keys += ["viewer_open.bytes", "viewer_open.seconds"]
    return keys


def _get(r: dict[str, Any], key: str) -> float | None:
    cur: Any = r
    for part in key.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return float(cur) if isinstance(cur, (int, float)) else None


def projection(results: dict[int, dict[str, Any]], exps: dict[str, float]) -> dict[str, float]:
    """Every figure at ImageNet's 1.28M images, from the largest size and its exponent."""
    n, last = max(results.items())
    out = {}
    for key, e in exps.items():
        v = _get(last, key)
        if v is not None:
            out[key] = round(v * (IMAGENET / n) ** e, 1)
    return out


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    keep = os.environ.get("SCALE_KEEP")
    root = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="atlas-scale-"))
    root.mkdir(parents=True, exist_ok=True)
    results = {n: one_size(n, root) for n in SIZES}
    exps = exponents(results)
    proj = projection(results, exps)
    for n, r in results.items():
        log.info(
            "%d images: %s s, store %.1f MB in %d files, driver %.0f MB, worker %.0f MB, "
            "page open %s",
            n,
            r["seconds"],
            r["bytes"] / 1e6,
            r["files"],
            r["peak_rss_mb_driver"],
            r["peak_rss_mb_worker"],
            r.get("viewer_open"),
        )
    log.info("growth exponents (between the two largest sizes): %s", exps)
    log.info("projected to %d images: %s", IMAGENET, proj)
    write(
        "scale",
        {
            "sizes": list(SIZES),
            "overrides": list(OVERRIDES),
            "results": {str(n): r for n, r in results.items()},
            "exponents": exps,
            "projection_imagenet": proj,
            "imagenet_images": IMAGENET,
        },
    )


if __name__ == "__main__":
    main()
