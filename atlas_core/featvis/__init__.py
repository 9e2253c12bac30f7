"""Featvis: objectives, parameterizations and transforms as small composable values, an optimizer
loop with no display or file I/O, and a batched icon renderer (one objective per batch index)."""

from atlas_core.featvis.objectives import Objective, channel, direction, direction_cossim, neuron
from atlas_core.featvis.param import fft_image, pixel_image, to_valid_rgb
from atlas_core.featvis.render import IconRenderer, RenderSettings, whitening_matrix
from atlas_core.featvis.transforms import icon_transforms

__all__ = [
    "IconRenderer",
    "Objective",
    "RenderSettings",
    "channel",
    "direction",
    "direction_cossim",
    "fft_image",
    "icon_transforms",
    "neuron",
    "pixel_image",
    "to_valid_rgb",
    "whitening_matrix",
]
