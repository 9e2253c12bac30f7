"""Grid: vectorised binning of the layout, partial sums, merge, and finalize into kept cells."""

from atlas_core.grid.binning import (
    CellSums,
    SparseSums,
    add_sparse,
    attribution_per_cell,
    cell_index,
    class_heat,
    empty_sums,
    finalize,
    merge,
    partial_sums,
    sparse_partial_sums,
    top_classes_per_cell,
)

__all__ = [
    "CellSums",
    "SparseSums",
    "add_sparse",
    "attribution_per_cell",
    "cell_index",
    "class_heat",
    "empty_sums",
    "finalize",
    "merge",
    "partial_sums",
    "sparse_partial_sums",
    "top_classes_per_cell",
]
