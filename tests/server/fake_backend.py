"""A tiny deterministic backend for the server's tests: no model, answers computed from the
inputs so a test can compute the same answer independently."""

from __future__ import annotations

import io
import threading
from typing import Any

import numpy as np
from PIL import Image

from pipelines.server.backend import ExportRequest, QueryError, Selection

N_ROWS = 100
GRID = 4  # the fake run has one level of 4 x 4 cells
SIDE = 3  # the fake layer's feature map: 3 x 3 positions


def points() -> np.ndarray:
    """The fake run's layout: (N_ROWS, 2) float, deterministic, in [0, 1)."""
    return np.random.default_rng(0).random((N_ROWS, 2))


def locate_reference(image: Image.Image, top: int) -> dict[str, Any]:
    """The answer :meth:`FakeBackend.locate` must give, computed directly: the image cut into
    SIDE x SIDE blocks, each block placed at (mean red, mean green) / 255."""
    a = np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0
    h, w = a.shape[:2]
    positions = []
    for r in range(SIDE):
        for c in range(SIDE):
            block = a[r * h // SIDE : (r + 1) * h // SIDE, c * w // SIDE : (c + 1) * w // SIDE]
            x, y = float(block[..., 0].mean()), float(block[..., 1].mean())
            cell = [min(int(x * GRID), GRID - 1), min(int(y * GRID), GRID - 1)]
            positions.append({"row": r, "col": c, "x": x, "y": y, "cells": {str(GRID): cell}})
    classes = [int(i) for i in np.argsort(-a.mean(axis=(0, 1)))[:top]]
    return {"size": [w, h], "classes": classes, "positions": positions}


class FakeBackend:
    """The backend protocol over the fake run. ``gate``: when set, render waits on it (a test
    holds compute slots with it)."""

    def __init__(self, run_dir: str = "", gate: threading.Event | None = None) -> None:
        self.gate = gate
        self.calls = 0
        self.points = points()

    def locate(self, image: Image.Image, *, top: int = 5) -> dict[str, Any]:
        self.calls += 1
        return locate_reference(image, min(top, 3))

    def render(self, selection: Selection) -> bytes:
        self.calls += 1
        if self.gate is not None:
            self.gate.wait(30)
        if selection.kind == "direction" and selection.direction[0] < 0:
            raise QueryError("direction: this fake run renders non-negative directions only")
        if selection.kind == "direction" and selection.direction[0] == 13:
            raise RuntimeError("a bug in the backend: /secret/path/model.pt")
        shade = len(repr(selection)) % 256
        buf = io.BytesIO()
        Image.new("RGB", (8, 8), (shade, 255 - shade, 0)).save(buf, "PNG")
        return buf.getvalue()

    def neighbours(self, query: Selection, k: int) -> dict[str, Any]:
        self.calls += 1
        if query.cell is not None:
            if query.cell.level != GRID:
                raise QueryError(f"level {query.cell.level}: this run has level {GRID} only")
            cells = np.minimum((self.points * GRID).astype(int), GRID - 1)
            centre = (np.array([query.cell.ix, query.cell.iy]) + 0.5) / GRID
        else:
            if max(query.rows) >= N_ROWS:
                raise QueryError(f"row {max(query.rows)}: this run has rows 0..{N_ROWS - 1}")
            centre, cells = self.points[list(query.rows)].mean(axis=0), None
        d = np.linalg.norm(self.points - centre, axis=1)
        order = np.argsort(d, kind="stable")[:k]
        out = {"rows": order.tolist(), "distances": d[order].round(6).tolist()}
        if cells is not None:
            out["in_cell"] = int(
                ((cells[:, 0] == query.cell.ix) & (cells[:, 1] == query.cell.iy)).sum()
            )  # type: ignore[union-attr]
        return out

    def export(self, request: ExportRequest) -> bytes:
        self.calls += 1
        if request.format == "parquet":
            raise NotImplementedError("the fake backend writes csv and json only")
        inside = [i for i, p in enumerate(self.points) if _inside(p, request.polygon)]
        rows = "".join(f"{i},{self.points[i, 0]:.6f},{self.points[i, 1]:.6f}\n" for i in inside)
        return ("row,x,y\n" + rows).encode()


def _inside(p: np.ndarray, polygon: tuple[tuple[float, float], ...]) -> bool:
    """Even-odd rule: is point p inside the polygon?"""
    x, y, inside = float(p[0]), float(p[1]), False
    for (x1, y1), (x2, y2) in zip(polygon, polygon[1:] + polygon[:1], strict=True):
        if (y1 > y) != (y2 > y) and x < x1 + (y - y1) * (x2 - x1) / (y2 - y1):
            inside = not inside
    return inside


def make(run_dir: str) -> FakeBackend:
    """The factory ``--backend tests.server.fake_backend:make`` names."""
    return FakeBackend(run_dir)
