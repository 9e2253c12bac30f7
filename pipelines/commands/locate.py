"""``atlas locate RUN_DIR IMAGE [IMAGE ...] [--json]``: where new images land in a finished atlas.

Per image: its top classes and, per position of the layer's feature map (every patch token of a
transformer), its grid position (row, col), its place in the layout (x, y: the normalized layout
the store holds, as ``atlas export`` takes it) and its cell (ix, iy) at every level, placed by
the layout's own out-of-sample placement against the stored landmarks. A folder stands for the
images in it. Without ``--json``: per image its top classes and how many of its positions land
in each cell of the finest level (a summary heat). Thin over
:meth:`atlas_core.explore.Atlas.locate`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from atlas_core.data.sources import IMAGE_EXTENSIONS
from atlas_core.errors import ConfigError
from atlas_core.explore import Atlas


def _images(paths: list[str]) -> list[str]:
    out: list[str] = []
    for p in paths:
        if Path(p).is_dir():
            out += sorted(
                str(f) for f in Path(p).rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS
            )
        else:
            out.append(p)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="atlas locate", description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", help="a finished run directory (or object-store prefix)")
    ap.add_argument("images", nargs="+", help="image files or folders of them")
    ap.add_argument("--json", action="store_true", help="one JSON document: a list per image")
    args = ap.parse_args(argv)
    try:
        atlas = Atlas.open(args.run_dir)
        paths = _images(args.images)
        found = atlas.locate(paths)
    except ConfigError as exc:
        print(f"atlas locate: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([{"image": p, **f.to_json()} for p, f in zip(paths, found, strict=True)]))
        return 0
    finest = max(atlas.levels)
    for p, f in zip(paths, found, strict=True):
        top = ", ".join(f"{name or c} ({prob:.2f})" for c, name, prob in f.top[:3])
        heat = Counter(pos.cells[finest] for pos in f.positions)
        cells = " ".join(f"{ix},{iy}:{n}" for (ix, iy), n in heat.most_common(5))
        print(f"{p}: {top}; cells of {finest}x{finest} (ix,iy:positions) {cells}")
    return 0
