"""Prediction flips and label -> prediction transitions between two runs, per sample.

A sample's prediction is its image's top-1 class (``images/top_class[:, 0]`` of the sample's
image; -1 where the image has none). A sample *counts* for flips where both runs kept it and both
predictions are >= 0; it *flips* where the two differ. Where its image's label is >= 0 too, it
falls in one of the :data:`TRANSITIONS`, by code:

    0 right_to_right         pred_a == label == pred_b
    1 right_to_wrong         pred_a == label != pred_b
    2 wrong_to_right         pred_a != label == pred_b
    3 wrong_to_same_wrong    label != pred_a == pred_b
    4 wrong_to_other_wrong   label != pred_a != pred_b != label
"""

from __future__ import annotations

import numpy as np

TRANSITIONS = (
    "right_to_right",
    "right_to_wrong",
    "wrong_to_right",
    "wrong_to_same_wrong",
    "wrong_to_other_wrong",
)
_BITS = 21  # a (label, pred_a, pred_b) triple packs into one int64: classes below 2^21 - 1
_MASK = (1 << _BITS) - 1


def flip_codes(pred_a: np.ndarray, pred_b: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """(b,) int8: 1 flipped, 0 same, -1 not counted (not kept in both, or a prediction < 0).

    pred_a, pred_b: (b,) integer top-1 class per sample; kept: (b,) bool, kept in both runs.
    """
    a, b = np.asarray(pred_a, np.int64), np.asarray(pred_b, np.int64)
    counted = np.asarray(kept, bool) & (a >= 0) & (b >= 0)
    return np.where(counted, (a != b).astype(np.int8), np.int8(-1)).astype(np.int8)


def transition_codes(
    label: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray, kept: np.ndarray
) -> np.ndarray:
    """(b,) int8 code of :data:`TRANSITIONS` per sample; -1 where not counted or unlabelled."""
    y = np.asarray(label, np.int64)
    a, b = np.asarray(pred_a, np.int64), np.asarray(pred_b, np.int64)
    counted = (flip_codes(a, b, kept) >= 0) & (y >= 0)
    ra, rb = a == y, b == y
    code = np.select(
        [ra & rb, ra & ~rb, ~ra & rb, a == b],
        [0, 1, 2, 3],
        default=4,
    )
    return np.where(counted, code, -1).astype(np.int8)


def pack_triples(label: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray) -> np.ndarray:
    """One int64 key per (label, pred_a, pred_b); label -1 (none) is allowed, predictions >= 0."""
    y = np.asarray(label, np.int64) + 1
    a, b = np.asarray(pred_a, np.int64), np.asarray(pred_b, np.int64)
    if len(a) and max(int(y.max()), int(a.max()), int(b.max())) >= _MASK:
        raise ValueError(f"class ids must be below {_MASK} to be counted as triples")
    return (y << (2 * _BITS)) | (a << _BITS) | b


def unpack_triples(keys: np.ndarray) -> np.ndarray:
    """(T, 3) int64 (label, pred_a, pred_b) of packed keys; label -1 where there was none."""
    k = np.asarray(keys, np.int64)
    return np.stack([(k >> (2 * _BITS)) - 1, (k >> _BITS) & _MASK, k & _MASK], axis=1)
