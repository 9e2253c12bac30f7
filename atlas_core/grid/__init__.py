"""Grid: vectorised binning of the layout, partial sums, merge, and finalize into kept cells."""

from atlas_core.grid.binning import (
    CellSums,
    attribution_per_cell,
    cell_index,
    finalize,
    merge,
    partial_sums,
    top_classes_per_cell,
)

__all__ = [
    "CellSums",
    "attribution_per_cell",
    "cell_index",
    "finalize",
    "merge",
    "partial_sums",
    "top_classes_per_cell",
]
