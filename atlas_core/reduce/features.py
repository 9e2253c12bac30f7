"""Feature assembly for aligned layouts: several layers, or several runs, laid out as one."""

from __future__ import annotations

import numpy as np


def joint_features(blocks: list[np.ndarray]) -> np.ndarray:
    """Aligned layouts: each block (N, C_i) L2-normalized per row, concatenated, scaled by
    1 / sqrt(len(blocks)). The cosine of two joint rows is then the mean of the per-block cosines,
    so one fit lays out several layers (or two models on the same images) at once."""
    out = []
    for b in blocks:
        n = np.linalg.norm(b, axis=1, keepdims=True)
        out.append(b / np.maximum(n, 1e-12))
    return (np.concatenate(out, axis=1) / np.sqrt(len(blocks))).astype(np.float32)
