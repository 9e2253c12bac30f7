"""What the server asks of a finished run: the :class:`Backend` protocol and its small values.

The server decodes uploads, parses and bounds queries, and runs every call on a worker thread;
a backend only answers. Its methods are blocking and may be slow (a forward pass, a render);
they are called from at most ``workers`` threads at once, so a backend that holds one model
either serializes its calls or is safe to share. Build it once (load the model, open the store
read-only) and pass it to :func:`pipelines.server.app.create_app`; under Ray Serve each replica
builds its own.

Errors: raise :class:`QueryError` for a query the run cannot answer (a row out of range, a level
it lacks: the client gets 422 and the message), ``NotImplementedError`` for a question this
backend does not answer (501); anything else is a server fault (500, logged with its traceback,
never sent).
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

from PIL import Image

from atlas_core.errors import AtlasError, ConfigError

MAX_ROWS = 100_000
MAX_VERTICES = 1_000
MAX_DIMS = 65_536
MAX_WHERE = 500
EXPORT_TYPES = {
    "csv": "text/csv; charset=utf-8",
    "json": "application/json",
    "parquet": "application/vnd.apache.parquet",
}


class QueryError(AtlasError, ValueError):
    """A well-formed query this run cannot answer; the message says why and what it has."""


# Parsed from JSON by pydantic (the app): unknown keys are refused.
_STRICT: dict[str, Any] = {"extra": "forbid"}


@dataclass(frozen=True)
class Cell:
    """Cell (ix, iy) of the level ``level`` (a G x G grid: 0 <= ix, iy < G)."""

    __pydantic_config__: ClassVar[dict[str, Any]] = _STRICT
    level: int
    ix: int
    iy: int

    def __post_init__(self) -> None:
        if min(self.level, self.ix, self.iy) < 0 or self.level < 1:
            raise ValueError(f"cell {self}: level >= 1 and ix, iy >= 0")


@dataclass(frozen=True)
class Selection:
    """One thing the page points at; exactly one field is set.

    rows: sample rows of the run (ints >= 0, at most 100k); cell: one cell of a level;
    polygon: vertices (x, y) in the normalized layout (at least 3, at most 1000); direction: a
    vector in the layer's activation space (floats, at most 65536); level: for a polygon, the
    level whose cells it selects (None: rows, not cells).
    """

    __pydantic_config__: ClassVar[dict[str, Any]] = _STRICT
    rows: tuple[int, ...] = ()
    cell: Cell | None = None
    polygon: tuple[tuple[float, float], ...] = ()
    direction: tuple[float, ...] = ()
    level: int | None = None

    def __post_init__(self) -> None:
        given = [k for k in ("rows", "cell", "polygon", "direction") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of rows, cell, polygon, direction (got {given or 'none'})"
            )
        if len(self.rows) > MAX_ROWS or any(r < 0 for r in self.rows):
            raise ValueError(f"rows: at most {MAX_ROWS} row numbers, each >= 0")
        _check_polygon(self.polygon)
        if len(self.direction) > MAX_DIMS or not all(map(math.isfinite, self.direction)):
            raise ValueError(f"direction: at most {MAX_DIMS} finite numbers")
        if self.level is not None and self.level < 1:
            raise ValueError("level: a grid size >= 1")

    @property
    def kind(self) -> str:
        return next(k for k in ("rows", "cell", "polygon", "direction") if getattr(self, k))


@dataclass(frozen=True)
class ExportRequest:
    """What to export: the rows inside ``polygon`` (normalized layout), optionally their cells
    at ``level``, filtered by ``where`` (the backend's filter expression, at most 500
    characters), written as ``format`` (csv, json or parquet)."""

    __pydantic_config__: ClassVar[dict[str, Any]] = _STRICT
    polygon: tuple[tuple[float, float], ...]
    level: int | None = None
    where: str | None = None
    format: Literal["csv", "json", "parquet"] = "csv"

    def __post_init__(self) -> None:
        _check_polygon(self.polygon, required=True)
        if self.where is not None and len(self.where) > MAX_WHERE:
            raise ValueError(f"where: at most {MAX_WHERE} characters")
        if self.level is not None and self.level < 1:
            raise ValueError("level: a grid size >= 1")


def _check_polygon(polygon: tuple[tuple[float, float], ...], required: bool = False) -> None:
    if not polygon and not required:
        return
    if not 3 <= len(polygon) <= MAX_VERTICES:
        raise ValueError(f"polygon: 3 to {MAX_VERTICES} vertices (got {len(polygon)})")
    if not all(math.isfinite(v) for xy in polygon for v in xy):
        raise ValueError("polygon: vertices must be finite numbers")


@runtime_checkable
class Backend(Protocol):
    """The questions a finished run answers (DESIGN section 10); every method blocks."""

    def locate(self, image: Image.Image, *, top: int = 5, acts: bool = False) -> dict[str, Any]:
        """Where ``image`` (RGB, decoded by the server) lands: its ``top`` classes and, per
        position of the layer's feature map, its grid position (row, col), layout x and y
        and cell (ix, iy) at every level. A JSON-ready dict (finite numbers only).

        ``acts=True`` (passed only when the client asks, ``?acts=1``, so a backend without the
        keyword answers every other request): each position also carries its activation,
        ``acts`` (C floats), which the page sends back as the ``direction`` of its icon."""
        ...

    def render(self, selection: Selection) -> bytes:
        """An icon for ``selection`` with the run's own render recipe: PNG bytes."""
        ...

    def neighbours(self, query: Selection, k: int) -> dict[str, Any]:
        """The ``k`` nearest samples to ``query`` (rows or a cell): a JSON-ready dict."""
        ...

    def export(self, request: ExportRequest) -> bytes:
        """The rows ``request`` selects, encoded as ``request.format``."""
        ...


class NoBackend:
    """The server of a run without a compute backend: the page's files only; every compute
    endpoint answers 501 and says how to plug one in."""

    _WHY = (
        "this server has no compute backend: start it with --backend MODULE:FACTORY "
        "(FACTORY(run_dir) returns a pipelines.server.backend.Backend)"
    )

    def locate(self, image: Image.Image, *, top: int = 5, acts: bool = False) -> dict[str, Any]:
        raise NotImplementedError(self._WHY)

    def render(self, selection: Selection) -> bytes:
        raise NotImplementedError(self._WHY)

    def neighbours(self, query: Selection, k: int) -> dict[str, Any]:
        raise NotImplementedError(self._WHY)

    def export(self, request: ExportRequest) -> bytes:
        raise NotImplementedError(self._WHY)


def load_backend(spec: str | None, run_dir: str) -> Backend:
    """The backend ``spec`` names (``module:factory``, called with ``run_dir``), built once;
    None: :class:`NoBackend`."""
    if not spec:
        return NoBackend()
    module, _, attr = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(
            "backend",
            spec,
            valid="MODULE:FACTORY, an importable module and a callable in it",
            fix=f"check the name ({type(exc).__name__}: {exc})",
        ) from None
    backend = factory(run_dir)
    if not isinstance(backend, Backend):
        raise ConfigError(
            "backend",
            spec,
            fix="its factory must return an object with locate, render, "
            "neighbours and export (pipelines.server.backend.Backend)",
        )
    return backend
