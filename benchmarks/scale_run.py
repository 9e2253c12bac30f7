"""One size of the scale benchmark, in its own process: ``python -m benchmarks.scale_run OUT
key=value ...`` runs the pipeline with those overrides and writes each stage's seconds, the
driver's peak resident memory (this process) and the largest Ray worker's to OUT (JSON)."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

from benchmarks.common import RayRssSampler, peak_rss_mb, settings


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out, overrides = Path(sys.argv[1]), sys.argv[2:]
    from pipelines.commands.run import run
    from pipelines.core import ray_ops

    s = settings(*overrides)
    t0 = time.perf_counter()
    with RayRssSampler(every=0.5) as workers:
        manifest = run(s, {})
    total = time.perf_counter() - t0
    ray_ops.shutdown()
    stages = manifest["stages"]
    result = {
        "seconds": {k: v["seconds"] for k, v in stages.items() if "seconds" in v},
        "seconds_total": round(total, 1),
        "peak_rss_mb_driver": peak_rss_mb(),
        "peak_rss_mb_worker": workers.peak_mb,
        "counts": {k: v.get("counts", {}) for k, v in stages.items()},
    }
    out.write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
