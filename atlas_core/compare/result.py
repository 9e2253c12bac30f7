"""The diff of two runs as tables: per level, one row per kept cell of each run; overall figures.

Cells are flat indices ``iy * G + ix`` (atlas_core.grid.binning). A run's kept cells at a level
are those where it has at least ``min_count`` samples, in ascending flat order: the rows of that
run's ``layers/<L>/grid/<G>/cell`` array, so a table's columns are heat layers over the grid
the viewer already draws. Side ``a`` lists A's cells and where their samples land in B; side
``b`` lists B's cells and where their samples came from in A. Every figure is over the samples
both runs kept; the preservation, flip and transition definitions are in
atlas_core.compare.neighbours and atlas_core.compare.predictions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from atlas_core.compare.counts import SparseCounts
from atlas_core.compare.predictions import TRANSITIONS, unpack_triples
from atlas_core.compare.sums import LevelSums, SideSums
from atlas_core.errors import ConfigError
from atlas_core.grid.binning import cell_index

SCORES = ("auto", "neighbours", "flips", "moved")


@dataclass(frozen=True)
class CellTable:
    """One run's kept cells at one grid size and the diff's figures over them (M rows).

    cell (M,) int64: flat cell, ascending. count (M,) int64: this run's samples in it (the grid's
    ``count``). both (M,) int64: those kept in both runs.
    flow_cell, flow_count (M, top) int64: the other run's cells receiving most of ``both``, most
    first (ties: lower cell first), -1 / 0 padded; flow_frac (M, top) float32 = count / both.
    destinations (M,) int64: distinct cells of the other run they spread over.
    spread (M,) float32: 1 - sum of squared fractions over all destinations (0 = all in one cell;
    the chance that two of its samples land apart). stay (M,) float32: fraction landing in the
    same flat cell (a figure for runs that share one map, e.g. aligned layouts).
    preservation (M,) float32: mean p_i of its samples with one (preservation_n (M,) int64;
    preservation_sum (M,) float64: the sum of their p_i).
    flips, flip_n (M,) int64: flipped and counted samples; flip_rate (M,) float32.
    transitions (M, 5) int64: samples per predictions.TRANSITIONS code.
    NaN wherever a rate has no samples.
    """

    size: int
    cell: np.ndarray
    count: np.ndarray
    both: np.ndarray
    flow_cell: np.ndarray
    flow_count: np.ndarray
    flow_frac: np.ndarray
    destinations: np.ndarray
    spread: np.ndarray
    stay: np.ndarray
    preservation: np.ndarray
    preservation_n: np.ndarray
    preservation_sum: np.ndarray
    flips: np.ndarray
    flip_n: np.ndarray
    flip_rate: np.ndarray
    transitions: np.ndarray

    @property
    def ix_iy(self) -> np.ndarray:
        """(M, 2) int32 (ix, iy) of each cell: the store's ``grid/<G>/cell`` layout."""
        return np.stack([self.cell % self.size, self.cell // self.size], axis=1).astype(np.int32)


@dataclass(frozen=True)
class LevelDiff:
    """One grid size: A's cells (flows to B), B's cells (flows from A), and the cells kept in one
    run but not the other: appeared (K1,) int64 flat cells kept in B only, emptied (K2,) kept in
    A only."""

    size: int
    a: CellTable
    b: CellTable
    appeared: np.ndarray
    emptied: np.ndarray


@dataclass(frozen=True)
class Diff:
    """The whole diff. levels: by grid size. figures: the overall numbers (:func:`_figures`).
    triples (T, 3) int64 (label, pred_a, pred_b; label -1 where none) and triple_count (T,)
    int64: every prediction transition that occurred, over the samples counted for flips."""

    k: int
    min_count: int
    levels: dict[int, LevelDiff]
    figures: dict[str, Any]
    triples: np.ndarray
    triple_count: np.ndarray

    def arrays(self, largest: int = 50, score: str = "auto") -> dict[str, np.ndarray]:
        """Every table as named arrays, ready to store (paths relative to the diff's group):
        ``levels/<G>/<a|b>/<column>`` for each CellTable column (``cell`` as (M, 2) int32
        (ix, iy), like the grid's; ``flow_cell`` flat), ``levels/<G>/appeared`` and
        ``emptied`` (K, 2) int32 (ix, iy), ``levels/<G>/largest`` (L,) int64 rows of side a
        with ``largest_score`` (L,) float64, and ``triples`` (T, 3) / ``triple_count`` (T,)."""
        out: dict[str, np.ndarray] = {"triples": self.triples, "triple_count": self.triple_count}
        for g, lv in self.levels.items():
            for name, table in (("a", lv.a), ("b", lv.b)):
                for col, v in vars(table).items():
                    if col != "size":
                        out[f"levels/{g}/{name}/{col}"] = table.ix_iy if col == "cell" else v
            for col, cells in (("appeared", lv.appeared), ("emptied", lv.emptied)):
                out[f"levels/{g}/{col}"] = np.stack([cells % g, cells // g], 1).astype(np.int32)
            rows = largest_changes(lv.a, largest, score)
            out[f"levels/{g}/largest"] = rows
            out[f"levels/{g}/largest_score"] = change_score(lv.a, score)[rows]
        return out

    def summary(self, largest: int = 5, score: str = "auto") -> dict[str, Any]:
        """JSON-ready: the overall figures, per level the cell counts, appeared and emptied
        cells, the mean spread and stay, and the ``largest`` changes of A's cells."""
        out = dict(self.figures)
        out["levels"] = {
            str(g): _level_summary(lv, largest, score) for g, lv in self.levels.items()
        }
        flipped = self.triples[:, 1] != self.triples[:, 2]
        order = np.lexsort((self.triples[flipped, 0], -self.triple_count[flipped]))[:10]
        out["top_flips"] = [
            {"label": int(t[0]), "pred_a": int(t[1]), "pred_b": int(t[2]), "samples": int(n)}
            for t, n in zip(
                self.triples[flipped][order], self.triple_count[flipped][order], strict=True
            )
        ]
        return out


def build_diff(
    levels: dict[int, LevelSums],
    total: LevelSums,
    triples: SparseCounts,
    *,
    k: int,
    min_count: int,
    top: int,
    rows: int,
) -> Diff:
    """Tables from the sums a DiffAccumulator holds (``rows``: the rows added)."""
    out = {g: _level(lv, min_count, top) for g, lv in levels.items()}
    keys, counts = triples.table()
    figures = {
        "rows": rows,
        "kept_a": int(total.a.count[0]),
        "kept_b": int(total.b.count[0]),
        **_figures(total.a, k),
    }
    return Diff(k, min_count, out, figures, unpack_triples(keys), counts)


def _level(lv: LevelSums, min_count: int, top: int) -> LevelDiff:
    keys, counts = lv.pairs.table()
    g2 = lv.size * lv.size
    src, dst = keys // g2, keys % g2
    mc = max(min_count, 1)
    a = _table(lv.a, np.flatnonzero(lv.a.count >= mc), src, dst, counts, top)
    b = _table(lv.b, np.flatnonzero(lv.b.count >= mc), dst, src, counts, top)
    in_a, in_b = lv.a.count >= mc, lv.b.count >= mc
    return LevelDiff(lv.size, a, b, np.flatnonzero(in_b & ~in_a), np.flatnonzero(in_a & ~in_b))


def _table(
    side: SideSums,
    cells: np.ndarray,
    src: np.ndarray,
    dst: np.ndarray,
    counts: np.ndarray,
    top: int,
) -> CellTable:
    m = len(cells)
    pos = np.minimum(np.searchsorted(cells, src), max(m - 1, 0))
    ok = (cells[pos] == src) if m else np.zeros(len(src), bool)
    row, d, n = pos[ok], dst[ok], counts[ok]
    both = side.both[cells]
    flow_cell, flow_count = _top_flows(row, d, n, m, top)
    share = n / np.maximum(both[row], 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        spread = 1.0 - np.bincount(row, weights=share**2, minlength=m)
        stay = np.bincount(row, weights=n * (d == src[ok]), minlength=m) / both
        nan_if_empty = np.where(both > 0, 1.0, np.nan)
        ks = np.arange(1, side.k + 1, dtype=np.float64)  # |V_A| = d: hits / d each
        p_sum = (side.pres_hits[cells, 1:] / ks).sum(axis=1)
        pres_n, flip_n = side.pres_n[cells], side.flip_n[cells]
        return CellTable(
            size=side.size,
            cell=cells.astype(np.int64),
            count=side.count[cells],
            both=both,
            flow_cell=flow_cell,
            flow_count=flow_count,
            flow_frac=(flow_count / both[:, None] * nan_if_empty[:, None]).astype(np.float32),
            destinations=np.bincount(row, minlength=m).astype(np.int64),
            spread=(spread * nan_if_empty).astype(np.float32),
            stay=stay.astype(np.float32),
            preservation=np.where(pres_n > 0, p_sum / pres_n, np.nan).astype(np.float32),
            preservation_n=pres_n,
            preservation_sum=p_sum,
            flips=side.flips[cells],
            flip_n=flip_n,
            flip_rate=np.where(flip_n > 0, side.flips[cells] / flip_n, np.nan).astype(np.float32),
            transitions=side.trans[cells],
        )


def _top_flows(
    row: np.ndarray, dst: np.ndarray, n: np.ndarray, m: int, top: int
) -> tuple[np.ndarray, np.ndarray]:
    """The ``top`` destinations of each row by count (ties: lower cell), -1 / 0 padded."""
    order = np.lexsort((dst, -n, row))
    row, dst, n = row[order], dst[order], n[order]
    first = np.flatnonzero(np.r_[True, row[1:] != row[:-1]]) if len(row) else row[:0]
    rank = np.arange(len(row)) - np.repeat(first, np.diff(np.r_[first, len(row)]))
    sel = rank < top
    cell = np.full((m, top), -1, np.int64)
    count = np.zeros((m, top), np.int64)
    cell[row[sel], rank[sel]] = dst[sel]
    count[row[sel], rank[sel]] = n[sel]
    return cell, count


def _figures(total: SideSums, k: int) -> dict[str, Any]:
    """The overall figures from the one-cell sums (cell 0 holds every sample)."""
    p_sum = sum(total.pres_hits[0, d] / d for d in range(1, k + 1)) if k else 0.0
    pres_n, flip_n = int(total.pres_n[0]), int(total.flip_n[0])
    trans = {name: int(total.trans[0, i]) for i, name in enumerate(TRANSITIONS)}
    labelled = sum(trans.values())
    rr, rw, wr = trans["right_to_right"], trans["right_to_wrong"], trans["wrong_to_right"]
    return {
        "k": k,
        "kept_both": int(total.both[0]),
        "neighbourhood_preservation": float(p_sum / pres_n) if pres_n else None,
        "preservation_samples": pres_n,
        "flip_rate": float(total.flips[0] / flip_n) if flip_n else None,
        "flips": int(total.flips[0]),
        "flip_samples": flip_n,
        "labelled_samples": labelled,
        "accuracy_a": (rr + rw) / labelled if labelled else None,
        "accuracy_b": (rr + wr) / labelled if labelled else None,
        "transitions": trans,
    }


def change_score(table: CellTable, score: str = "auto") -> np.ndarray:
    """How much each cell changed, (M,) float64, in samples (so larger cells weigh more):

    - ``neighbours``: sum over its samples of 1 - p_i (neighbours lost, in samples);
    - ``flips``: its flipped samples;
    - ``moved``: its samples that did not land in its main destination cell (both - top flow);
    - ``auto``: neighbours where any sample has a p_i, else flips where any counted, else moved.
    """
    if score not in SCORES:
        raise ConfigError("score", score, choices=SCORES, fix="pick one of the choices.")
    if score == "auto":
        score = (
            "neighbours"
            if table.preservation_n.sum()
            else "flips"
            if table.flip_n.sum()
            else "moved"
        )
    if score == "neighbours":  # rounded: the same fractions summed in another order tie
        return np.round(table.preservation_n - table.preservation_sum, 9)
    if score == "flips":
        return table.flips.astype(np.float64)
    return (table.both - table.flow_count[:, 0]).astype(np.float64)


def largest_changes(table: CellTable, n: int = 20, score: str = "auto") -> np.ndarray:
    """Rows of ``table`` with the ``n`` largest :func:`change_score` (> 0), largest first,
    ties by lower cell: (<= n,) int64."""
    s = change_score(table, score)
    order = np.lexsort((table.cell, -s))
    return order[s[order] > 0][:n].astype(np.int64)


def rows_in_cells(layout: np.ndarray, size: int, cells: np.ndarray) -> np.ndarray:
    """(b,) bool: the block's rows whose layout (b, 2) falls in one of the flat ``cells`` at grid
    ``size`` (NaN rows never): a change's samples, gathered block by block."""
    return np.isin(cell_index(np.asarray(layout), size), np.asarray(cells, np.int64))


def _level_summary(lv: LevelDiff, largest: int, score: str) -> dict[str, Any]:
    a = lv.a
    both = a.both.sum()
    rows = largest_changes(a, largest, score)
    s = change_score(a, score)
    return {
        "cells_a": len(a.cell),
        "cells_b": len(lv.b.cell),
        "appeared": len(lv.appeared),
        "emptied": len(lv.emptied),
        "stay": _num(np.nansum(a.stay * a.both) / both) if both else None,
        "spread": _num(np.nansum(a.spread * a.both) / both) if both else None,
        "largest": [
            {
                "cell": [int(a.cell[r] % a.size), int(a.cell[r] // a.size)],
                "samples": int(a.both[r]),
                "score": round(float(s[r]), 4),
                "preservation": _num(a.preservation[r]),
                "flip_rate": _num(a.flip_rate[r]),
                "to": [int(a.flow_cell[r, 0] % a.size), int(a.flow_cell[r, 0] // a.size)],
                "to_frac": _num(a.flow_frac[r, 0]),
            }
            for r in rows
        ],
    }


def _num(x: float) -> float | None:
    return None if np.isnan(x) else round(float(x), 4)
