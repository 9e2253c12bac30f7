"""``atlas export RUN_DIR --polygon "x1,y1 x2,y2 ..." [--level G] [--where pred=285] --format
csv|parquet|json -o FILE``: the samples inside a polygon of the layout, as a file.

The polygon is in layout coordinates: the normalized layout the store holds, x and y in [0, 1]
(x to the right, y up), the square every level covers; level G's cell (ix, iy) is
[ix/G, (ix+1)/G) x [iy/G, (iy+1)/G). ``--level G`` keeps only samples in cells that level
keeps (the cells with an icon). ``--where`` filters (repeat it): ``pred=285``, ``label=285``,
``correct=false``, ``conf>=0.5``, ``source=3``. Columns: row, image, uri, pos_y, pos_x, x, y, the
cell (ix_G, iy_G) at every level, pred, pred_name, prob, top_classes, top_probs, label,
label_name, correct, source, ok. Thin over :meth:`atlas_core.explore.Atlas.export`.
"""

from __future__ import annotations

import argparse
import logging
import sys

from atlas_core.errors import ConfigError
from atlas_core.explore import FORMATS, Atlas, parse_polygon

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="atlas export", description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", help="a finished run directory (or object-store prefix)")
    ap.add_argument("--polygon", help='"x1,y1 x2,y2 x3,y3 ...", layout coordinates in [0, 1]')
    ap.add_argument("--level", type=int, help="only samples in cells this level keeps")
    ap.add_argument("--where", action="append", default=[], help="a filter, e.g. pred=285")
    ap.add_argument("--format", choices=FORMATS, default="csv")
    ap.add_argument("-o", "--output", required=True, help="the file to write")
    ap.add_argument("--view", default="", help="a class view's slug (default: the main atlas)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        atlas = Atlas.open(args.run_dir, view=args.view)
        polygon = parse_polygon(args.polygon) if args.polygon else None
        rows = atlas.select(polygon, where=args.where, level=args.level)
        atlas.export(rows, args.output, args.format)
    except ConfigError as exc:
        print(f"atlas export: {exc}", file=sys.stderr)
        return 2
    log.info("%d samples written to %s", len(rows), args.output)
    return 0
