"""Extract: seeded spatial sampling, and a set-up-once extractor of activations there."""

from atlas_core.extract.extractor import ActivationExtractor, ExtractBatch
from atlas_core.extract.sampling import map_positions, sample_positions

__all__ = ["ActivationExtractor", "ExtractBatch", "map_positions", "sample_positions"]
