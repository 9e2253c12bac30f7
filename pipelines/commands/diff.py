"""``atlas diff RUN_A RUN_B [--k 10] [--out DIR] [--json]``: what changed between two runs over
the same images.

Per grid level both runs hold: where the samples of each of A's cells land in B (the cells
receiving most, with fractions), how many of each sample's k nearest neighbours in activation
space stay neighbours (neighbourhood preservation, per cell and overall), top-1 prediction flips
and label -> prediction transitions, cells kept in one run only, and A's cells that changed
most. Written into a folder of its own (default ``RUN_B/diffs/<name of RUN_A>``): ``diff.zarr``
(docs/run-store.md, "The diff of two runs"), ``diff.json`` (the overall figures) and
``diff.html`` (both maps side by side, heat layers, the largest changes; opens from disk).
``--json`` prints diff.json. Two runs over different images are refused (exit 2, naming what
differs). Thin over :mod:`atlas_core.compare.runs` and :mod:`atlas_core.compose.diff_page`;
docs/compare.md tells how to read it.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from atlas_core.compare.knn import KnnGraph, stored_or_exact
from atlas_core.compare.result import SCORES
from atlas_core.compare.runs import DiffResult, diff_runs, open_pair
from atlas_core.compose.diff_page import write_diff_page
from atlas_core.errors import ConfigError
from atlas_core.store import RunLocation

log = logging.getLogger(__name__)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="atlas diff", description=__doc__.split("\n\n")[0])
    ap.add_argument("run_a", help="the earlier run (a finished run directory)")
    ap.add_argument("run_b", help="the later run, over the same images")
    ap.add_argument("--k", type=int, default=10, help="neighbours per sample (default 10)")
    ap.add_argument("--out", help="the diff's folder (default RUN_B/diffs/<name of RUN_A>)")
    ap.add_argument("--json", action="store_true", help="print the overall figures as JSON")
    ap.add_argument("--largest", type=int, default=50, help="changes listed per level")
    ap.add_argument("--score", choices=SCORES, default="auto", help="how changes are ranked")
    return ap


def run_diff(
    run_a: str,
    run_b: str,
    *,
    k: int = 10,
    out: str | None = None,
    largest: int = 50,
    score: str = "auto",
    knn: KnnGraph = stored_or_exact,
    rows_per_block: int | None = None,
    storage_options: dict[str, Any] | None = None,
) -> tuple[RunLocation, DiffResult]:
    """The command's whole path: check, diff, page. Returns (the diff's folder, the result).
    ``storage_options`` serve both runs and the diff's folder (one object store)."""
    pair = open_pair(run_a, run_b, storage_options=storage_options)
    loc = RunLocation.of(out, storage_options) if out else pair.b.loc.diff_of(pair.names[0])
    result = diff_runs(
        pair, loc, k=k, largest=largest, score=score, knn=knn, rows_per_block=rows_per_block
    )
    write_diff_page(loc, pair, result)
    return loc, result


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        loc, result = run_diff(
            args.run_a,
            args.run_b,
            k=args.k,
            out=args.out,
            largest=args.largest,
            score=args.score,
        )
    except ConfigError as exc:
        print(f"atlas diff: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result.report, indent=2, sort_keys=True, default=_plain))
    f = result.report
    log.info(
        "neighbourhood preservation at k=%d: %s, flip rate: %s; open %s",
        args.k,
        _fmt(f.get("neighbourhood_preservation")),
        _fmt(f.get("flip_rate")),
        loc.diff_page_url,
    )
    return 0


def _fmt(v: Any) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def _plain(v: Any) -> Any:
    return v.tolist() if hasattr(v, "tolist") else str(v)
