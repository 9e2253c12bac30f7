"""``atlas neighbours RUN_DIR --row N [--k 10] [--json]``: the samples nearest one sample (or a
cell's mean: ``--cell G,IX,IY``) in activation space, by cosine on the stored activations.

Prints one line per neighbour (row, cosine, image URI), nearest first, or with ``--json`` one
document: ``{"rows": [...], "cosine": [...], "uris": [...]}``. Thin over
:meth:`atlas_core.explore.Atlas.neighbours`.
"""

from __future__ import annotations

import argparse
import json
import sys

from atlas_core.errors import ConfigError
from atlas_core.explore import Atlas


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="atlas neighbours", description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", help="a finished run directory (or object-store prefix)")
    query = ap.add_mutually_exclusive_group(required=True)
    query.add_argument("--row", type=int, help="a sample row")
    query.add_argument("--cell", help="G,IX,IY: the mean of a cell of level G")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--json", action="store_true", help="one JSON document")
    args = ap.parse_args(argv)
    try:
        atlas = Atlas.open(args.run_dir)
        cell = tuple(int(v) for v in args.cell.split(",")) if args.cell else None
        if cell is not None and len(cell) != 3:
            raise ConfigError("cell", args.cell, fix="give G,IX,IY, e.g. 16,3,7.")
        rows, cos = atlas.neighbours(row=args.row, cell=cell, k=args.k)
    except (ConfigError, ValueError) as exc:
        print(f"atlas neighbours: {exc}", file=sys.stderr)
        return 2
    uris = atlas.samples(rows).column("uri").to_pylist()
    if args.json:
        print(json.dumps({"rows": rows.tolist(), "cosine": [float(c) for c in cos], "uris": uris}))
    else:
        for r, c, u in zip(rows, cos, uris, strict=True):
            print(f"{r}\t{c:.6f}\t{u}")
    return 0
