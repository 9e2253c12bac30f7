"""The diff of two finished runs over the same images, read from their stores: the driver.

:func:`open_pair` opens both runs (``Atlas.open``: each run's atlas layer) and refuses two runs
that do not share their images: the same ``n_images`` and samples per image, the same
``images/uri`` and ``images/crop`` row for row, and the same places sampled (``samples/pos``:
equal on one position grid; across two grids, as two models of different input sizes have,
each sample's cell centre within one cell of the coarser grid, which the seeded draw gives).
It also takes the grid sizes both runs hold, at one ``grid.min_count``.

:func:`diff_runs` then streams both stores in chunk-aligned blocks of sample rows, holding no
array of all rows but two (N,) masks: pass 1 the samples both runs kept; then each run's kNN
graph in its own activation space (:func:`~atlas_core.compare.knn.knn_graph` or any function
with its signature, written block by block into the diff's store); pass 2 the accumulator over
layouts, graphs, predictions (``images/top_class[:, 0]``) and labels (``images/label``, A's,
else B's), writing the per-sample figures beside the rows. Last the cell tables, the largest
changes with the exemplar patches of their samples, and ``diff.json``. Nothing here draws a
page (atlas_core.compose.diff_page does, from :attr:`DiffResult.changes`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from atlas_core.compare.accumulate import DiffAccumulator
from atlas_core.compare.knn import KnnGraph, knn_graph
from atlas_core.compare.result import SCORES, Diff, change_score, largest_changes
from atlas_core.compare.sums import both_kept
from atlas_core.errors import ConfigError
from atlas_core.explore import Atlas
from atlas_core.grid.binning import cell_index
from atlas_core.store import RunLocation, RunStore
from atlas_core.store.diff_store import DiffStore

log = logging.getLogger(__name__)
BLOCK_ROWS = 65_536  # sample rows per block (rounded to both stores' storage objects)
PATCHES = 12  # exemplar patches listed per change


@dataclass(frozen=True)
class RunPair:
    """Two runs over the same images (checked by :func:`open_pair`): A the earlier, B the later.

    names: the runs' folder names; levels: the grid sizes both hold, ascending; min_count: their
    grid.min_count; positions: how the samples' places were matched (for the record)."""

    a: Atlas
    b: Atlas
    names: tuple[str, str]
    levels: tuple[int, ...]
    min_count: int
    positions: str

    @property
    def rows(self) -> int:
        """Sample rows of either run (n_images x samples per image)."""
        return self.a.n_samples

    def title(self, side: str) -> str:
        at = self.a if side == "a" else self.b
        model = at.manifest.get("model") or at.store.attrs.get("model") or "model"
        return f"{model} {at.layer}"


@dataclass
class DiffResult:
    """What :func:`diff_runs` wrote: the diff, its report (``diff.json``), per level the
    largest changes as plain records for the page, and seconds per phase."""

    diff: Diff
    report: dict[str, Any]
    changes: dict[int, list[dict[str, Any]]]
    seconds: dict[str, float] = field(default_factory=dict)


def _refuse(run_b: str, what: str) -> ConfigError:
    return ConfigError(
        "RUN_B",
        run_b,
        fix=f"{what}. A diff needs two runs over the same images: the same data settings, "
        "data.n_images, extract.samples_per_image and seed; run B again with A's.",
    )


def open_pair(run_a: str, run_b: str, *, storage_options: dict[str, Any] | None = None) -> RunPair:
    """Open two finished runs and check that they share their images (module docstring);
    a ConfigError names what differs."""
    a = Atlas.open(run_a, storage_options=storage_options)
    b = Atlas.open(run_b, storage_options=storage_options)
    positions = check_same_images(a.store, b.store, run_b)
    levels = tuple(sorted(set(a.levels) & set(b.levels)))
    if not levels:
        raise _refuse(
            run_b,
            f"the runs share no grid size (A has {a.levels}, B has {b.levels}); run B's grid "
            "stage with one of A's grid.sizes",
        )
    counts = {
        (side, g): int(at.store.level(at.layer, g).attrs.get("min_count", 1))
        for side, at in (("A", a), ("B", b))
        for g in levels
    }
    if len(set(counts.values())) > 1:
        raise _refuse(run_b, f"the runs kept cells at different grid.min_count ({counts})")
    names = (_name(a.loc.root), _name(b.loc.root))
    return RunPair(a, b, names, levels, next(iter(counts.values())), positions)


def _name(root: str) -> str:
    return root.rstrip("/").rsplit("/", 1)[-1] or "run"


def check_same_images(a: RunStore, b: RunStore, run_b: str) -> str:
    """Raise (a ConfigError naming the first difference) unless ``a`` and ``b`` hold the same
    images, crops and sampled places; returns how the places matched. Reads block by block."""
    for key in ("n_images", "k"):
        if a.attrs[key] != b.attrs[key]:
            raise _refuse(run_b, f"{key} is {b.attrs[key]} in B and {a.attrs[key]} in A")
    chunk = max(int(a.attrs.get("chunk_images", 1024)), 1)
    n, step = a.n_images, chunk * max(1, BLOCK_ROWS // chunk)  # whole objects, ~65k images
    for name in ("uri", "crop"):
        for s in range(0, n, step):
            x, y = a.images.read(name, s, s + step), b.images.read(name, s, s + step)
            bad = np.flatnonzero(_rows_differ(x, y))
            if len(bad):
                i = s + int(bad[0])
                raise _refuse(
                    run_b,
                    f"images/{name} differ from image {i} on ({len(bad)} of images {s}.."
                    f"{min(s + step, n) - 1}): {_show(x[bad[0]])} in A, {_show(y[bad[0]])} in B",
                )
    return _check_positions(a, b, run_b, step * a.k)


def _rows_differ(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    d = np.asarray(x != y)
    return np.asarray(d.reshape(len(d), -1).any(axis=1))


def _show(v: Any) -> str:
    return repr(v.tolist() if hasattr(v, "tolist") else v)


def _check_positions(a: RunStore, b: RunStore, run_b: str, step: int) -> str:
    """samples/pos: equal on one grid; on two grids, cell centres within one coarser cell."""
    ga = np.array(a.attrs["position_grid"], np.float64)
    gb = np.array(b.attrs["position_grid"], np.float64)
    same = np.array_equal(ga, gb)
    tol = 1.0 / min(ga.min(), gb.min())
    total = a.n_images * a.k
    for s in range(0, total, step):
        pa = a.samples.read("pos", s, s + step).astype(np.float64)
        pb = b.samples.read("pos", s, s + step).astype(np.float64)
        if same:
            bad = np.flatnonzero((pa != pb).any(axis=1))
        else:
            off = np.abs((pa + 0.5) / ga - (pb + 0.5) / gb)
            bad = np.flatnonzero((off > tol + 1e-9).any(axis=1))
        if len(bad):
            r = int(bad[0])
            raise _refuse(
                run_b,
                f"samples/pos differ from sample row {s + r} on ({len(bad)} of rows {s}.."
                f"{min(s + step, total) - 1}): {pa[r].astype(int).tolist()} on A's "
                f"{ga.astype(int).tolist()} grid, {pb[r].astype(int).tolist()} on B's "
                f"{gb.astype(int).tolist()}: the runs sampled other places of the images",
            )
    if same:
        return "equal"
    return (
        f"within one cell of the coarser grid (A {ga.astype(int).tolist()}, "
        f"B {gb.astype(int).tolist()})"
    )


def block_rows(pair: RunPair, target: int = BLOCK_ROWS) -> int:
    """Rows per block: a multiple of both runs' layout storage objects near ``target`` (one
    object when that is larger), so every read is whole objects."""
    steps = []
    for at in (pair.a, pair.b):
        arr = at.store.layout_node(at.layer).array("layout")
        steps.append(int((arr.shards or arr.chunks)[0]))
    step = math.lcm(*steps)
    if step > 4 * target:  # objects of incommensurable sizes: read some twice, never all
        return target
    return max(step, (target // step) * step)


def _spans(n: int, size: int) -> Iterator[tuple[int, int]]:
    for a in range(0, n, size):
        yield a, min(a + size, n)


class _Clock:
    """Seconds per phase of a diff (wall time)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.t0 = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = round(self.seconds.get(name, 0.0) + now - self.t0, 3)
        self.t0 = now


def diff_runs(
    pair: RunPair,
    out: RunLocation,
    *,
    k: int = 10,
    top: int = 5,
    largest: int = 50,
    score: str = "auto",
    knn: KnnGraph = knn_graph,
    rows_per_block: int | None = None,
) -> DiffResult:
    """The diff of ``pair`` written into the folder ``out`` (its ``diff.zarr`` and
    ``diff.json``; any previous diff there replaced). k: neighbours per sample in each run's
    kNN graph (>= 1); top: destinations kept per cell; largest: changes kept per level, ranked
    by ``score`` (atlas_core.compare.change_score); knn: the graph function (module docstring);
    rows_per_block: sample rows per block (default :func:`block_rows`)."""
    if k < 1:
        raise ConfigError("k", k, valid=">= 1", fix="give the neighbours per sample, e.g. 10.")
    if largest < 0 or top < 1:
        raise ConfigError(
            "largest" if largest < 0 else "top",
            largest if largest < 0 else top,
            valid="largest >= 0, top >= 1",
            fix="give how many changes to list per level (e.g. 50) and destinations per cell.",
        )
    if score not in SCORES:
        raise ConfigError("score", score, choices=SCORES, fix="pick one of the choices.")
    clock = _Clock()
    block = rows_per_block or block_rows(pair)
    kept = np.concatenate(
        [both_kept(*_layouts(pair, a, b)) for a, b in _spans(pair.rows, block)]
        or [np.zeros(0, bool)]
    )
    clock.lap("kept")
    store = DiffStore.create_diff(
        out.diff_store_url, _attrs(pair, k, top, block), out.storage_options
    )
    store.rows.create(None, {"ns": pair.rows, "cs": block, "k": k})
    for side, at in (("a", pair.a), ("b", pair.b)):
        _write_graph(store, knn(at.store, at.layer, k, kept, block_rows=block), side, k, pair.rows)
        clock.lap(f"knn_{side}")
    acc = DiffAccumulator(kept, pair.levels, k=k, min_count=pair.min_count, top=top)
    for a, b in _spans(pair.rows, block):
        _add_block(pair, store, acc, a, b)
    diff = acc.finish()
    clock.lap("accumulate")
    write_tables(store, diff, largest, score)
    changes = _changes(pair, diff, largest, score)
    report = _report(pair, diff, k, score)
    report["seconds"] = clock.seconds
    store.set_group_attrs("", {"figures": _plain_figures(diff)})
    clock.lap("write")
    report["seconds"] = dict(clock.seconds, total=round(sum(clock.seconds.values()), 3))
    out.write_json(out.diff_json_url, report)
    log.info("diff of %s -> %s written to %s", pair.names[0], pair.names[1], out.root)
    return DiffResult(diff, report, changes, report["seconds"])


def _layouts(pair: RunPair, a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows [a, b) of both layouts as stored (float32: cells by the grid stage's own rule)."""
    la, lb = (at.store.layout_node(at.layer).read("layout", a, b) for at in (pair.a, pair.b))
    return la, lb


def _attrs(pair: RunPair, k: int, top: int, block: int) -> dict[str, Any]:
    return {
        "run_a": pair.a.loc.root,
        "run_b": pair.b.loc.root,
        "layer_a": pair.a.layer,
        "layer_b": pair.b.layer,
        "n_images": pair.a.store.n_images,
        "samples_per_image": pair.a.store.k,
        "k": k,
        "top": top,
        "levels": list(pair.levels),
        "min_count": pair.min_count,
        "positions": pair.positions,
        "block_rows": block,
    }


def _write_graph(
    store: DiffStore, blocks: Iterator[tuple[int, np.ndarray]], side: str, k: int, n: int
) -> None:
    """Write a graph's blocks as they come (each a whole chunk of ``samples/knn_<side>``)."""
    expect = 0
    for row0, ids in blocks:
        ids = np.asarray(ids)
        if row0 != expect or ids.ndim != 2 or ids.shape[1] != k:
            raise ValueError(
                f"the kNN graph gave rows {row0}.. shaped {ids.shape}; expected rows {expect}.. "
                f"with {k} columns, in order (atlas_core/compare/knn.py)"
            )
        if len(ids) and (ids.min() < -1 or ids.max() >= n):
            raise ValueError(f"kNN ids must be sample rows in [-1, {n}), got {ids.min()}..")
        store.rows.write(f"knn_{side}", row0, ids.astype(np.int32))
        expect = row0 + len(ids)
    if expect != n:
        raise ValueError(f"the kNN graph of run {side} covered {expect} of {n} rows")


def _add_block(pair: RunPair, store: DiffStore, acc: DiffAccumulator, a: int, b: int) -> None:
    """Pass 2 over rows [a, b): the accumulator, and the per-sample figures written beside."""
    la, lb = _layouts(pair, a, b)
    image = pair.a.store.samples.read("image", a, b).astype(np.int64)
    i0, i1 = int(image.min()), int(image.max()) + 1
    pred = [
        at.store.images.read("top_class", i0, i1)[:, 0].astype(np.int64)[image - i0]
        for at in (pair.a, pair.b)
    ]
    label = None
    for at in (pair.a, pair.b):
        if label is None and at.store.images.has("label"):
            label = at.store.images.read("label", i0, i1).astype(np.int64)[image - i0]
    rows = store.rows
    part = acc.add(
        a,
        la,
        lb,
        knn_a=rows.read("knn_a", a, b),
        knn_b=rows.read("knn_b", a, b),
        pred_a=pred[0],
        pred_b=pred[1],
        label=label,
    )
    rows.write("kept", a, part.kept.astype(np.uint8))
    rows.write("preservation", a, part.preservation)
    rows.write("flip", a, part.flip)
    rows.write("transition", a, part.transition)


def write_tables(store: DiffStore, diff: Diff, largest: int = 50, score: str = "auto") -> None:
    """Every table of ``diff`` into its group (``Diff.arrays`` names, on the store's nodes)."""
    cells = {"cells": 16384}
    for path, data in diff.arrays(largest, score).items():
        parts = path.split("/")
        if parts[0] == "levels" and len(parts) == 4:
            store.cells(int(parts[1]), parts[2]).put(parts[3], data, cells)
        elif parts[0] == "levels":
            store.diff_level(int(parts[1])).put(parts[2], data)
        else:
            store.totals.put(path, data)


def _exemplars(pair: RunPair) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every sample row that is an exemplar in A's run or B's (patch in its sheet), A's first:
    (rows (R,) int64 ascending, side (R,) int8 0 = A 1 = B, e (R,) int64 its index in that
    run's exemplar index, i.e. its place in the patch sheets)."""
    rows, side, e = [], [], []
    for s, at in enumerate((pair.a, pair.b)):
        ex = at.store.exemplars(at.layer).index()
        if ex is None:
            continue
        good = np.flatnonzero(ex["ok"] == 1)
        rows.append(ex["row"][good].astype(np.int64))
        side.append(np.full(len(good), s, np.int8))
        e.append(good.astype(np.int64))
    if not rows:
        return np.zeros(0, np.int64), np.zeros(0, np.int8), np.zeros(0, np.int64)
    r, sd, ei = np.concatenate(rows), np.concatenate(side), np.concatenate(e)
    order = np.lexsort((sd, r))  # by row, A before B
    r, sd, ei = r[order], sd[order], ei[order]
    first = np.r_[True, r[1:] != r[:-1]]
    return r[first], sd[first], ei[first]


def _changes(
    pair: RunPair, diff: Diff, largest: int, score: str
) -> dict[int, list[dict[str, Any]]]:
    """Per level, A's cells that changed most as plain records: the cell, its figures, where its
    samples went (B's cells, fractions) and up to PATCHES exemplar patches of its samples."""
    rows, side, e = _exemplars(pair)
    lay = [
        at.store.layout_node(at.layer).take("layout", rows)
        if len(rows)
        else np.zeros((0, 2), np.float32)
        for at in (pair.a, pair.b)
    ]
    out: dict[int, list[dict[str, Any]]] = {}
    for g, lv in diff.levels.items():
        t = lv.a
        s = change_score(t, score)
        ca, cb = cell_index(lay[0], g), cell_index(lay[1], g)
        out[g] = []
        for r in largest_changes(t, largest, score):
            c = int(t.cell[r])
            mine = np.flatnonzero(ca == c)[:PATCHES]
            out[g].append(
                {
                    "cell": [c % g, c // g],
                    "count": int(t.count[r]),
                    "samples": int(t.both[r]),
                    "score": round(float(s[r]), 4),
                    "preservation": _num(t.preservation[r]),
                    "flip_rate": _num(t.flip_rate[r]),
                    "spread": _num(t.spread[r]),
                    "to": [
                        [int(x % g), int(x // g), round(float(f), 4)]
                        for x, f in zip(t.flow_cell[r], t.flow_frac[r], strict=True)
                        if x >= 0
                    ],
                    "patches": [
                        {
                            "side": "ab"[int(side[j])],
                            "e": int(e[j]),
                            "row": int(rows[j]),
                            "to": [int(cb[j] % g), int(cb[j] // g)] if cb[j] >= 0 else None,
                        }
                        for j in mine
                    ],
                }
            )
    return out


def _num(x: Any) -> float | None:
    return None if not np.isfinite(x) else round(float(x), 4)


def _plain_figures(diff: Diff) -> dict[str, Any]:
    return {k: v for k, v in diff.figures.items() if not isinstance(v, np.generic)}


def _report(pair: RunPair, diff: Diff, k: int, score: str) -> dict[str, Any]:
    """``diff.json``: the runs, how they were matched, the overall figures, per level the
    summaries (Diff.summary) and the most frequent prediction changes."""
    runs = {
        side: {
            "path": at.loc.root,
            "name": pair.names[i],
            "title": pair.title(side),
            "layer": at.layer,
            "levels": at.levels,
        }
        for i, (side, at) in enumerate((("a", pair.a), ("b", pair.b)))
    }
    return {
        "runs": runs,
        "images": pair.a.store.n_images,
        "samples_per_image": pair.a.store.k,
        "positions": pair.positions,
        "min_count": pair.min_count,
        "score": score,
        **diff.summary(largest=5, score=score),
    }
