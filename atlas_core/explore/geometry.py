"""Selections in the layout: polygons (the lasso, a box) and filters, as plain numpy.

Coordinates are the normalized layout the store holds (``layers/<L>/layout``): x and y in
[0, 1], x to the right and y up, the square every level of the atlas covers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from atlas_core.errors import ConfigError

FIELDS = ("pred", "label", "correct", "conf", "source")


def parse_polygon(text: str) -> np.ndarray:
    """``"x1,y1 x2,y2 x3,y3 ..."`` -> (V, 2) float64; three vertices at least."""
    try:
        pts = np.array([[float(v) for v in p.split(",")] for p in text.split()], np.float64)
    except ValueError:
        pts = np.zeros((0, 0))
    if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) < 3 or not np.isfinite(pts).all():
        raise ConfigError(
            "polygon",
            text,
            fix='give at least three vertices in layout coordinates: "0.1,0.1 0.5,0.1 0.3,0.4".',
        )
    return pts


def points_in_polygon(xy: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """(N,) bool: which points (N, 2) lie inside ``polygon`` (V, 2) (even-odd rule; a point on
    an edge may fall either way). NaN points are outside. Vectorised over points, a loop over
    the polygon's edges."""
    x, y = xy[:, 0], xy[:, 1]
    inside = np.zeros(len(xy), bool)
    px, py = polygon[:, 0], polygon[:, 1]
    for i in range(len(polygon)):
        x0, y0, x1, y1 = px[i - 1], py[i - 1], px[i], py[i]
        with np.errstate(invalid="ignore", divide="ignore"):
            crosses = (y0 > y) != (y1 > y)
            at = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
        inside ^= crosses & (x < at)
    return inside & np.isfinite(xy).all(axis=1)


@dataclass(frozen=True)
class Where:
    """One filter ``field op value``: ``pred=285``, ``label=285``, ``correct=false``,
    ``conf>=0.5``, ``source=3`` (a source's index in the samples table)."""

    field: str
    op: str
    value: float

    @classmethod
    def parse(cls, text: str) -> Where:
        for op in (">=", "<=", "!=", "=", ">", "<"):
            name, sep, value = text.partition(op)
            if sep:
                break
        name = name.strip()
        if not sep or name not in FIELDS:
            raise ConfigError(
                "where",
                text,
                choices=FIELDS,
                fix="write FIELD=VALUE (or >=, <=, !=, >, <), e.g. pred=285 or conf>=0.5.",
            )
        raw = value.strip().lower()
        number = {"true": 1.0, "false": 0.0}.get(raw)
        try:
            number = float(raw) if number is None else number
        except ValueError:
            raise ConfigError("where", text, fix="compare with a number (or true/false).") from None
        return cls(name, op, number)

    def mask(self, column: np.ndarray) -> np.ndarray:
        c = np.asarray(column, np.float64)
        ops = {
            "=": c == self.value,
            "!=": c != self.value,
            ">=": c >= self.value,
            "<=": c <= self.value,
            ">": c > self.value,
            "<": c < self.value,
        }
        return ops[self.op]
