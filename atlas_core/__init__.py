"""atlas_core: the pure-compute library behind activation atlases.

One subpackage per artifact, in flow order: models, data, extract, store, reduce, grid, featvis,
compose. It never imports ray, hydra or omegaconf; only ``atlas_core.store`` imports zarr.
"""

__version__ = "0.1.0"
