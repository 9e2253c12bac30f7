"""Layout quality: trustworthiness (k = 10 by default) on a seeded sample of rows."""

from __future__ import annotations

import numpy as np


def trustworthiness(
    high: np.ndarray,
    low: np.ndarray,
    *,
    k: int = 10,
    metric: str = "cosine",
    sample: int = 5000,
    seed: int = 0,
) -> float:
    """Trustworthiness of ``low`` (N, 2) against ``high`` (N, C) on <= ``sample`` rows."""
    from sklearn.manifold import trustworthiness as tw

    n = len(high)
    idx = np.random.default_rng(seed).choice(n, size=min(n, sample), replace=False)
    return float(tw(high[idx], low[idx], n_neighbors=min(k, len(idx) // 2 - 1), metric=metric))
