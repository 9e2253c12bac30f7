"""Exemplars: the real image patches behind each cell of the atlas."""

from atlas_core.exemplars.patches import (
    patch_box,
    source_box,
    take_patch,
    thumbnail,
    thumbnail_jpeg,
)
from atlas_core.exemplars.select import cosine_to_cells, merge_top_k, top_k_per_cell

__all__ = [
    "cosine_to_cells",
    "merge_top_k",
    "patch_box",
    "source_box",
    "take_patch",
    "thumbnail",
    "thumbnail_jpeg",
    "top_k_per_cell",
]
