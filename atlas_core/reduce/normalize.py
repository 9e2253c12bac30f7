"""Layout normalization (DESIGN.md section 4): per axis, clip to the 1st-99th percentile range
widened by a 10% margin on each side, then rescale to [0, 1]."""

from __future__ import annotations

import numpy as np


def normalize_layout(
    xy: np.ndarray, *, lo_pct: float = 1.0, hi_pct: float = 99.0, margin: float = 0.1
) -> tuple[np.ndarray, np.ndarray]:
    """xy: (N, 2) float; NaN rows are ignored and stay NaN.

    Returns (normalized (N, 2) float32 in [0, 1],
             bounds (2, 2) float64 [[lo_x, lo_y], [hi_x, hi_y]])
    so the same mapping can be applied to rows transformed later.
    """
    ok = ~np.isnan(xy).any(axis=1)
    lo = np.percentile(xy[ok], lo_pct, axis=0)
    hi = np.percentile(xy[ok], hi_pct, axis=0)
    span = np.maximum(hi - lo, 1e-12)
    bounds = np.stack([lo - margin * span, hi + margin * span])
    return apply_bounds(xy, bounds), bounds


def apply_bounds(xy: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    lo, hi = bounds
    out = (np.clip(xy, lo, hi) - lo) / np.maximum(hi - lo, 1e-12)
    return out.astype(np.float32)
