"""How readable icons are: plausibility against the cells' own exemplars, in a judge network."""

from atlas_core.quality.plausibility import (
    Plausibility,
    exemplar_reference,
    plausibility,
    pooled_features,
)

__all__ = ["Plausibility", "exemplar_reference", "plausibility", "pooled_features"]
