"""What changed between two runs over the same images: the diff's pure core.

Given both runs' arrays row for row (layouts, kNN graphs in activation space, predictions,
labels), handed over in blocks of sample rows so a caller can stream a 1M-sample store with
flat memory, it computes per grid level and cell: where a cell's samples land in the other run
(flows), how many of each sample's k nearest neighbours stay neighbours (preservation), top-1
prediction flips and label -> prediction transitions, cells kept in one run only, and a ranked
list of the largest changes. Nothing here reads a store: the caller reads, this sums.

- :class:`DiffAccumulator` (accumulate.py): add blocks, merge partials, finish;
- :class:`Diff`, :class:`LevelDiff`, :class:`CellTable` (result.py): the tables and figures;
- neighbours.py: the preservation definition and an exact cosine kNN for small runs;
- predictions.py: flip and transition codes.

Beside the core, reading stores (not imported here, so the core stays store-free):

- knn.py: :func:`~atlas_core.compare.knn.knn_graph`, a run's kNN graph in activation space
  streamed block by block from its store: the one function a neighbour index replaces;
- runs.py: the driver of ``atlas diff``: :func:`~atlas_core.compare.runs.open_pair` (two runs
  over the same images, else a ConfigError naming what differs) and
  :func:`~atlas_core.compare.runs.diff_runs` (both stores streamed in blocks, the diff written
  as its own Zarr group and ``diff.json``).
"""

from atlas_core.compare.accumulate import DiffAccumulator
from atlas_core.compare.neighbours import exact_knn, preservation, valid_neighbours
from atlas_core.compare.predictions import TRANSITIONS, flip_codes, transition_codes
from atlas_core.compare.result import (
    SCORES,
    CellTable,
    Diff,
    LevelDiff,
    change_score,
    largest_changes,
    rows_in_cells,
)
from atlas_core.compare.sums import BlockDiff, both_kept

__all__ = [
    "SCORES",
    "TRANSITIONS",
    "BlockDiff",
    "CellTable",
    "Diff",
    "DiffAccumulator",
    "LevelDiff",
    "both_kept",
    "change_score",
    "exact_knn",
    "flip_codes",
    "largest_changes",
    "preservation",
    "rows_in_cells",
    "transition_codes",
    "valid_neighbours",
]
