"""The application: the run's pages and the compute endpoints, one FastAPI app for uvicorn on a
laptop and for Ray Serve on a cluster (``serve.ingress``).

Routes (every one behind :mod:`pipelines.server.guards`):

- ``GET|HEAD /<file>``: a file a page reads (:mod:`pipelines.server.files`); ``/`` redirects to
  ``/viewer/index.html``.
- ``GET /api/health``: ``{"status": "ok", "compute": bool, "jobs": {workers, queue, running,
  waiting}}``.
- ``POST /api/locate?top=5[&acts=1]``: an image (raw body or one multipart file) -> the
  backend's JSON (with ``acts=1``, each position's activation, for its icon); a
  ``Server-Timing`` header splits read, decode and compute.
- ``POST /api/render``: a JSON :class:`~pipelines.server.backend.Selection` -> ``image/png``.
- ``GET /api/neighbours?row=R | rows=R1,R2 | level=G&ix=I&iy=J, k=10`` -> JSON.
- ``POST /api/export``: a JSON :class:`~pipelines.server.backend.ExportRequest` -> the file.

Compute runs on :class:`~pipelines.server.jobs.Jobs` (503 + Retry-After when full, 504 past the
deadline). Errors are ``{"error": "..."}`` with the status that names them; a backend's own
fault is a 500 whose traceback stays in the server's log.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.middleware import Middleware
from fastapi.responses import JSONResponse, RedirectResponse, StreamingResponse
from pydantic import TypeAdapter, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from atlas_core.errors import ConfigError
from pipelines.server.backend import (
    EXPORT_TYPES,
    Backend,
    ExportRequest,
    NoBackend,
    QueryError,
    Selection,
)
from pipelines.server.files import Refused, RunFiles, chunks
from pipelines.server.guards import Guard, SecurityHeaders
from pipelines.server.jobs import Busy, Jobs, JobTimeout, Slot
from pipelines.server.settings import ServerSettings
from pipelines.server.uploads import decode_upload, read_body, read_image_bytes

log = logging.getLogger(__name__)
PNG = b"\x89PNG\r\n\x1a\n"
MAX_ROWS_QUERY = 1000
_SELECTION = TypeAdapter(Selection)
_EXPORT = TypeAdapter(ExportRequest)


def settings_of(request: Request) -> ServerSettings:
    return request.app.state.settings


def backend_of(request: Request) -> Backend:
    return request.app.state.backend


def jobs_of(request: Request) -> Jobs:
    return request.app.state.jobs


Settings = Annotated[ServerSettings, Depends(settings_of)]
TheBackend = Annotated[Backend, Depends(backend_of)]
TheJobs = Annotated[Jobs, Depends(jobs_of)]
api = APIRouter(prefix="/api")
pages = APIRouter()


def _busy(exc: Busy) -> HTTPException:
    return HTTPException(503, str(exc), {"retry-after": str(exc.retry_after)})


def reserve(jobs: Jobs) -> Slot:
    """A compute slot for a request that reads a large body first (503 when none is free)."""
    try:
        return jobs.reserve()
    except Busy as exc:
        raise _busy(exc) from None


async def compute(jobs: Jobs, fn: Callable[..., Any], *args: Any, slot: Slot | None = None) -> Any:
    """``fn(*args)`` on a worker; every failure becomes the HTTPException that names it."""
    try:
        return await jobs.run(fn, *args, slot=slot)
    except Busy as exc:
        raise _busy(exc) from None
    except JobTimeout as exc:
        raise HTTPException(504, str(exc)) from None
    except HTTPException:
        raise
    except (QueryError, ConfigError) as exc:
        raise HTTPException(422, str(exc)) from None
    except NotImplementedError as exc:
        raise HTTPException(501, str(exc) or "not implemented by this backend") from None
    except Exception as exc:
        log.exception("serve: the backend failed")
        raise HTTPException(
            500, f"the backend failed ({type(exc).__name__}); the server's log has the details"
        ) from None


def _json(result: Any, what: str) -> bytes:
    """The backend's answer as JSON (finite numbers only), on the worker thread."""
    try:
        return json.dumps(result, allow_nan=False, separators=(",", ":")).encode()
    except (TypeError, ValueError) as exc:
        raise RuntimeError(f"{what} returned something that is not JSON: {exc}") from None


def _parse(adapter: TypeAdapter, body: bytes) -> Any:
    try:
        return adapter.validate_json(body)
    except ValidationError as exc:
        raise HTTPException(422, _errors(exc.errors())) from None


def _errors(errors: Any) -> str:
    """Validation errors as one line: where, what; never the input itself."""
    return "; ".join(
        f"{'.'.join(str(x) for x in e.get('loc', ())) or 'body'}: {e.get('msg', '')}"
        for e in errors[:10]
    )


@api.get("/health")
async def health(backend: TheBackend, jobs: TheJobs) -> dict[str, Any]:
    """``compute``: whether a backend answers the compute endpoints (the page offers its
    questions only then)."""
    return {"status": "ok", "compute": not isinstance(backend, NoBackend), "jobs": jobs.stats()}


@api.post("/locate")
async def locate(
    request: Request,
    s: Settings,
    backend: TheBackend,
    jobs: TheJobs,
    top: Annotated[int, Query(ge=1, le=50)] = 5,
    acts: bool = False,
) -> Response:
    times: dict[str, float] = {}
    with reserve(jobs) as slot:  # before the body: uploads in memory are bounded by the slots
        t0 = time.perf_counter()
        data = await read_image_bytes(request, s.upload_bytes, s.body_timeout_s)
        t1 = time.perf_counter()

        def work() -> bytes:
            a = time.perf_counter()
            image = decode_upload(data, s.upload_pixels)
            b = time.perf_counter()
            # acts only when asked: a backend without the keyword answers everything else
            answer = (
                backend.locate(image, top=top, acts=True)
                if acts
                else backend.locate(image, top=top)
            )
            out = _json(answer, "locate")
            times.update(decode=b - a, compute=time.perf_counter() - b)
            return out

        body = await compute(jobs, work, slot=slot)
    timing = f"read;dur={(t1 - t0) * 1e3:.1f}, " + ", ".join(
        f"{k};dur={v * 1e3:.1f}" for k, v in times.items()
    )
    return Response(body, media_type="application/json", headers={"server-timing": timing})


@api.post("/render")
async def render(request: Request, s: Settings, backend: TheBackend, jobs: TheJobs) -> Response:
    selection = _parse(_SELECTION, await read_body(request, s.json_bytes, s.body_timeout_s))

    def work() -> bytes:
        png = backend.render(selection)
        if not isinstance(png, bytes) or not png.startswith(PNG):
            raise RuntimeError("render returned something that is not a PNG")
        return png

    return Response(await compute(jobs, work), media_type="image/png")


@api.get("/neighbours")
async def neighbours(
    s: Settings,
    backend: TheBackend,
    jobs: TheJobs,
    k: Annotated[int, Query(ge=1)] = 10,
    row: Annotated[int | None, Query(ge=0)] = None,
    rows: Annotated[str | None, Query(max_length=12 * MAX_ROWS_QUERY)] = None,
    level: Annotated[int | None, Query(ge=1)] = None,
    ix: Annotated[int | None, Query(ge=0)] = None,
    iy: Annotated[int | None, Query(ge=0)] = None,
) -> Response:
    if k > s.neighbours_k:
        raise HTTPException(422, f"k: at most {s.neighbours_k} (got {k})")
    query = _neighbour_query(row, rows, level, ix, iy)
    body = await compute(jobs, lambda: _json(backend.neighbours(query, k), "neighbours"))
    return Response(body, media_type="application/json")


def _neighbour_query(
    row: int | None, rows: str | None, level: int | None, ix: int | None, iy: int | None
) -> Selection:
    cell = (level, ix, iy)
    given = sum(x is not None for x in (row, rows)) + (any(c is not None for c in cell))
    if given != 1 or (any(c is not None for c in cell) and None in cell):
        raise HTTPException(422, "give one of row=R, rows=R1,R2,... or level=G&ix=I&iy=J")
    if row is not None:
        return Selection(rows=(row,))
    if rows is not None:
        parts = rows.split(",")
        if len(parts) > MAX_ROWS_QUERY or not all(p.strip().isdigit() for p in parts):
            raise HTTPException(422, f"rows: up to {MAX_ROWS_QUERY} row numbers, comma-separated")
        return Selection(rows=tuple(int(p) for p in parts))
    return _parse(_SELECTION, json.dumps({"cell": {"level": level, "ix": ix, "iy": iy}}).encode())


@api.post("/export")
async def export(request: Request, s: Settings, backend: TheBackend, jobs: TheJobs) -> Response:
    req = _parse(_EXPORT, await read_body(request, s.json_bytes, s.body_timeout_s))
    data = await compute(jobs, backend.export, req)
    if not isinstance(data, bytes):
        raise HTTPException(500, "the backend's export returned no bytes")
    disposition = f'attachment; filename="atlas-export.{req.format}"'
    return Response(
        data, media_type=EXPORT_TYPES[req.format], headers={"content-disposition": disposition}
    )


@pages.api_route("/{path:path}", methods=["GET", "HEAD"])
async def page_file(request: Request) -> Response:
    path = request.scope["path"]
    if path == "/":
        return RedirectResponse("/viewer/index.html", status_code=307)
    try:
        f = await run_in_threadpool(request.app.state.files.open, path)
    except Refused as exc:
        raise HTTPException(exc.status, exc.reason) from None
    headers = {"etag": f.etag, "cache-control": "no-cache", "content-security-policy": f.csp}
    if request.headers.get("if-none-match") == f.etag or request.method == "HEAD":
        f.file.close()
        status = 304 if request.method == "GET" else 200
        size = {} if status == 304 else {"content-length": str(f.size)}
        return Response(status_code=status, headers={**headers, **size}, media_type=f.media_type)
    headers["content-length"] = str(f.size)
    return StreamingResponse(chunks(f.file), media_type=f.media_type, headers=headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    return JSONResponse({"error": exc.detail}, exc.status_code, headers=exc.headers)


async def _invalid(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return JSONResponse({"error": _errors(exc.errors())}, 422)


def create_app(settings: ServerSettings, backend: Backend | None = None) -> FastAPI:
    """The app over ``settings.run_dir``; ``backend`` (built once by the caller, the model
    loaded and warm) answers the compute endpoints, :class:`NoBackend` when None."""
    jobs = Jobs(settings.workers, settings.queue, settings.job_timeout_s)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        jobs.close()

    app = FastAPI(
        title="atlas serve",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,  # only what the page needs: no schema, no docs pages
        redirect_slashes=False,
        lifespan=lifespan,
        middleware=[Middleware(SecurityHeaders), Middleware(Guard, settings=settings)],
        exception_handlers={StarletteHTTPException: _http_error, RequestValidationError: _invalid},
    )
    app.state.settings = settings
    app.state.backend = backend if backend is not None else NoBackend()
    app.state.jobs = jobs
    app.state.files = RunFiles(settings.run_dir)
    app.include_router(api)
    app.include_router(pages)
    return app
