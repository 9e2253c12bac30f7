"""What the model thinks a class is: the rows a class atlas or a two-class comparison keeps,
the comparison's x axis, per-cell class heat, and failure-mode patches pasted into images."""

from atlas_core.classes.patching import (
    CORNERS,
    count_flips,
    noise_patch,
    paste,
    patch_origin,
    resized,
)
from atlas_core.classes.select import (
    attribution_to,
    class_rows,
    comparison_x,
    top_attribution_class,
)

__all__ = [
    "CORNERS",
    "attribution_to",
    "class_rows",
    "comparison_x",
    "count_flips",
    "noise_patch",
    "paste",
    "patch_origin",
    "resized",
    "top_attribution_class",
]
