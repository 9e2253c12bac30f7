"""Rows for class analyses, from the stored attribution of every sample.

Attribution is stored per sample as ``A`` columns: every class in order (``extract.attr_classes
=-1``), or the image's top ``A`` predicted classes (then ``classes`` gives each column's class).
A class that is not among a sample's columns has no stored attribution there; it counts as 0
(the same convention as the grid's per-cell mean attribution).
"""

from __future__ import annotations

import numpy as np


def attribution_to(classes: np.ndarray, values: np.ndarray, c: int) -> np.ndarray:
    """Each sample's attribution to class ``c``: (S,) float32; 0 where ``c`` is not among its
    columns, NaN for holes (samples without attribution)."""
    hit = classes == c
    out = np.where(hit, values, 0.0).sum(axis=1).astype(np.float32)
    out[np.isnan(values).any(axis=1)] = np.nan
    return out


def top_attribution_class(classes: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The class of each sample's largest attribution column: (S,) int64, -1 for holes."""
    hole = np.isnan(values).any(axis=1)
    best = np.argmax(np.where(np.isnan(values), -np.inf, values), axis=1)
    out = np.take_along_axis(classes, best[:, None], axis=1)[:, 0].astype(np.int64)
    out[hole] = -1
    return out


def class_rows(classes: np.ndarray, values: np.ndarray, c: int, top_n: int) -> np.ndarray:
    """The samples a class atlas of ``c`` keeps (sorted): those whose top attribution class is
    ``c``, plus the ``top_n`` with the largest positive attribution to ``c`` (ties: lower row)."""
    own = np.flatnonzero(top_attribution_class(classes, values) == c)
    a = attribution_to(classes, values, c)
    pos = np.flatnonzero(np.nan_to_num(a, nan=0.0) > 0)
    order = pos[np.lexsort((pos, -a[pos]))][:top_n]
    return np.union1d(own, order).astype(np.int64)


def comparison_x(attr_a: np.ndarray, attr_b: np.ndarray, pct: float = 99.0) -> np.ndarray:
    """x of a two-class comparison: ``(b - a) / P_pct(|b - a|)``, clipped to [-1, 1]
    (0 where every difference is 0)."""
    d = np.asarray(attr_b, np.float64) - np.asarray(attr_a, np.float64)
    scale = float(np.percentile(np.abs(d), pct)) if len(d) else 0.0
    if scale <= 0:
        return np.zeros(len(d), np.float32)
    return np.clip(d / scale, -1.0, 1.0).astype(np.float32)
