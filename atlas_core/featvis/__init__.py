"""Featvis: objectives, parameterizations and transforms as small composable values, an optimizer
loop with no display or file I/O, an icon recipe (the settings a person writes turned into those
values, once), and a batched icon renderer that takes the recipe (one objective per batch index)."""

from atlas_core.featvis.objectives import Objective, channel, direction, direction_cossim, neuron
from atlas_core.featvis.param import (
    Fourier,
    Parameterization,
    PhaseOnly,
    Pixels,
    fft_image,
    maco_image,
    pixel_image,
    to_valid_rgb,
)
from atlas_core.featvis.recipe import IconRecipe, IconSettings
from atlas_core.featvis.render import IconRenderer, Rendered, whitening_matrix
from atlas_core.featvis.transforms import icon_transforms

__all__ = [
    "Fourier",
    "IconRecipe",
    "IconRenderer",
    "IconSettings",
    "Objective",
    "Parameterization",
    "PhaseOnly",
    "Pixels",
    "Rendered",
    "channel",
    "direction",
    "direction_cossim",
    "fft_image",
    "icon_transforms",
    "maco_image",
    "neuron",
    "pixel_image",
    "to_valid_rgb",
    "whitening_matrix",
]
