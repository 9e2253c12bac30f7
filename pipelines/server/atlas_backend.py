"""The server's answers, from the atlas API (:class:`atlas_core.explore.Atlas`): thin.

Built once per app (or per Ray Serve replica): the run is opened read-only and the model is
loaded on the first question that needs it, then kept warm. The API's calls are not made for
several threads at once (one model, one renderer), so this backend serializes them; the server
bounds how many wait.
"""

from __future__ import annotations

import io
import threading
from typing import Any

import numpy as np
from PIL import Image

from atlas_core.errors import ConfigError
from atlas_core.explore import Atlas, Where
from pipelines.server.backend import ExportRequest, QueryError, Selection


class AtlasBackend:
    """:class:`pipelines.server.backend.Backend` over a finished run."""

    def __init__(self, run_dir: str, storage_options: dict[str, Any] | None = None) -> None:
        self.atlas = Atlas.open(run_dir, storage_options=storage_options)
        self.lock = threading.Lock()

    def locate(self, image: Image.Image, *, top: int = 5, acts: bool = False) -> dict[str, Any]:
        """The API's answer (:meth:`Located.to_json`): with ``acts``, each position's
        activation, which the page sends back as the ``direction`` of its icon."""
        with self.lock, _query():
            located = self.atlas.locate([image])[0]
        out = located.to_json(acts=acts)
        out["top"] = out["top"][:top]
        return out

    def render(self, selection: Selection) -> bytes:
        with self.lock, _query():
            icon = self.atlas.render(self._direction(selection))
        buf = io.BytesIO()
        Image.fromarray(icon).save(buf, format="PNG")
        return buf.getvalue()

    def neighbours(self, query: Selection, k: int) -> dict[str, Any]:
        with self.lock, _query():
            if query.rows and len(query.rows) == 1:
                rows, cos = self.atlas.neighbours(row=query.rows[0], k=k)
            else:
                rows, cos = self.atlas.neighbours(direction=self._direction(query), k=k)
        return {"rows": rows.tolist(), "cosine": [round(float(c), 6) for c in cos]}

    def export(self, request: ExportRequest) -> bytes:
        with self.lock, _query():
            where = [Where.parse(w) for w in (request.where or "").split(",") if w.strip()]
            polygon = np.asarray(request.polygon, np.float64)
            rows = self.atlas.select(polygon, where=where, level=request.level)
            return self.atlas.export(rows, fmt=request.format)

    def _direction(self, s: Selection) -> np.ndarray:
        """A selection's direction: its rows' mean, a cell's mean, a polygon's samples' mean,
        or the direction itself."""
        if s.direction:
            return np.asarray(s.direction, np.float32)
        if s.cell is not None:
            return self.atlas.direction(cell=(s.cell.level, s.cell.ix, s.cell.iy))
        rows = np.asarray(s.rows, np.int64)
        if s.polygon:
            rows = self.atlas.select(np.asarray(s.polygon, np.float64), level=s.level)
        if len(rows) and rows.max() >= self.atlas.n_samples:
            raise QueryError(f"rows: this run has {self.atlas.n_samples} sample rows")
        return self.atlas.direction(rows=rows)


class _query:
    """The API's ConfigError (a level or cell the run lacks, a bad filter) is the client's
    mistake: a QueryError (422) with the same message."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> None:
        if isinstance(exc, ConfigError):
            raise QueryError(str(exc)) from exc


def backend(run_dir: str) -> AtlasBackend:
    """The factory ``atlas serve`` uses (``--backend pipelines.server.atlas_backend:backend``)."""
    return AtlasBackend(run_dir)
