"""The index of runs under one folder (a sweep's folder, a schedule's root): ``index.json`` and
``index.html`` (atlas_core/compose/index.py), rebuilt from every run's ``manifest.json`` (or its
``failed.json``), so it is correct however the runs were launched and can be rebuilt any time.
A run's ``compare.json`` (its diff against the sweep's first run or the previous date) joins its
row; a schedule's rows give each figure's trend over the dates (``trends``)."""

from __future__ import annotations

import json
import logging
from typing import Any

import fsspec

from atlas_core.compose.index import index_html, run_row
from atlas_core.compose.sweep_page import PAGE as SWEEP_PAGE
from atlas_core.compose.trend import trends
from pipelines.commands.compare_runs import COMPARE_FILE, compare_fields

log = logging.getLogger(__name__)
SKIP = ("extractions", "icon-cache")


def _read_json(fs: Any, path: str) -> dict[str, Any] | None:
    try:
        with fs.open(path, "r") as f:
            value = json.load(f)
    except (FileNotFoundError, json.JSONDecodeError, OSError):
        return None
    return value if isinstance(value, dict) else None


def write_index(
    root: str, title: str, storage_options: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Rebuild ``<root>/index.json`` and ``<root>/index.html``; returns the index."""
    fs, base = fsspec.core.url_to_fs(root, **(storage_options or {}))
    base = base.rstrip("/")
    rows = []
    children = (
        sorted(p for p in fs.ls(base, detail=False) if fs.isdir(p)) if fs.exists(base) else []
    )
    for path in children:
        name = path.rstrip("/").rsplit("/", 1)[-1]
        if name in SKIP:
            continue
        manifest = _read_json(fs, f"{path}/manifest.json")
        failed = _read_json(fs, f"{path}/failed.json")
        if manifest is None and failed is None:
            continue  # not a run (yet)
        if failed is not None and (
            manifest is None or failed.get("time", 0) > manifest.get("time", 0)
        ):
            rows.append(run_row(name, None, str(failed.get("error", ""))))
        else:
            rows.append(run_row(name, manifest))
        rows[-1] |= compare_fields(_read_json(fs, f"{path}/{COMPARE_FILE}"))
    index = {"title": title, "runs": rows, "failed": sum(r["status"] == "failed" for r in rows)}
    index["trends"] = trends(rows)
    compare = SWEEP_PAGE if fs.exists(f"{base}/{SWEEP_PAGE}") else None
    with fs.open(f"{base}/index.json", "w") as f:
        json.dump(index, f, indent=2, default=str)
    with fs.open(f"{base}/index.html", "w") as f:
        f.write(index_html(title, rows, compare=compare))
    log.info(
        "index of %d runs (%d failed) written to %s/index.html", len(rows), index["failed"], root
    )
    return index


def record_failure(run_dir: str, error: str, extra: dict[str, Any], opts: dict[str, Any]) -> None:
    """``<run_dir>/failed.json``: why a run (a sweep's job) failed; the index shows it."""
    import time

    from atlas_core.store.location import RunLocation
    from pipelines.core.common import redact, redact_overrides

    loc = RunLocation.of(run_dir, opts)
    record = redact({"error": error, "time": time.time(), **extra})
    if isinstance(record.get("overrides"), list):
        record["overrides"] = redact_overrides(record["overrides"])
    loc.write_json(loc.failed_url, record)  # whole or not at all
