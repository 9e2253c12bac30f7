"""Extract: seeded spatial sampling, a set-up-once extractor of activations there, and the
buffers one task fills before it writes."""

from atlas_core.extract.buffers import ShardBuffers
from atlas_core.extract.extractor import ActivationExtractor, ExtractBatch
from atlas_core.extract.sampling import map_positions, sample_positions

__all__ = [
    "ActivationExtractor",
    "ExtractBatch",
    "ShardBuffers",
    "map_positions",
    "sample_positions",
]
