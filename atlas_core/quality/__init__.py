"""How readable icons are: plausibility against the cells' own exemplars, in a judge network."""

from atlas_core.quality.plausibility import (
    Plausibility,
    choose_pool,
    exemplar_reference,
    feature_dim,
    plausibility,
    pooled_features,
    prototypes,
    score,
)

__all__ = [
    "Plausibility",
    "choose_pool",
    "exemplar_reference",
    "feature_dim",
    "plausibility",
    "pooled_features",
    "prototypes",
    "score",
]
