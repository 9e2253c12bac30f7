"""The diffs a sweep and a schedule make by themselves, and what the index reads of them.

- A sweep (:func:`compare_sweep`, at the end of its second phase): each finished run over the
  first run's images is diffed against the sweep's first run (``<run>/diffs/<first>/``), and
  ``<sweep>/compare.html`` shows every such run in a grid of linked maps
  (:mod:`atlas_core.compose.sweep_page`).
- A schedule (:func:`compare_with_previous`, after each dated run): the diff of the previous
  finished date against this one, in ``<run_root>/<date>/diff-prev/``.

Each diffed run gets ``compare.json`` (:data:`COMPARE_FILE`): which run it was compared against,
where the diff's page is (relative to the run) and the diff's overall figures; the index of the
sweep or run root reads it into the run's row (and a schedule's trends). A pair over other
images is not diffed: its ``compare.json`` says why.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any

from atlas_core.errors import ConfigError, StoreError
from atlas_core.store import RunLocation
from pipelines.commands.diff import run_diff

log = logging.getLogger("atlas.compare")
COMPARE_FILE = "compare.json"
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
FIGURES = ("neighbourhood_preservation", "flip_rate", "k", "kept_both", "flips")


def _finished(loc: RunLocation) -> bool:
    manifest = loc.read_json(loc.manifest_url)
    failed = loc.read_json(loc.failed_url)
    if manifest is None or manifest.get("status") != "done":
        return False
    return failed is None or float(failed.get("time", 0)) < float(manifest.get("time", 0))


def diff_into(
    against: tuple[str, str], run_dir: str, out: str, opts: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Diff run ``against`` = (name, run_dir) -> ``run_dir`` into ``out`` and write the run's
    ``compare.json``; returns that record (``error`` set when the runs cannot be diffed)."""
    loc = RunLocation.of(run_dir, opts)
    name, other = against
    record: dict[str, Any] = {"against": name}
    try:
        diff_loc, result = run_diff(other, run_dir, out=out, storage_options=opts)
    except (ConfigError, StoreError) as exc:
        log.warning("no diff of %s against %s: %s", run_dir, name, exc)
        record["error"] = str(exc)
    except Exception as exc:  # the runs are done: a diff that fails is reported, not raised
        log.exception("the diff of %s against %s failed", run_dir, name)
        record["error"] = f"{type(exc).__name__}: {exc}"
    else:
        page = diff_loc.diff_page_url
        record["diff"] = _relative(page, loc.root) if loc.is_local else page
        record |= {key: result.report.get(key) for key in FIGURES}
    loc.write_json(loc.url(COMPARE_FILE), record)
    return record


def _relative(target: str, root: str) -> str:
    rel = os.path.relpath(target.removeprefix("file://"), root.removeprefix("file://"))
    return rel.replace(os.sep, "/")


def compare_sweep(
    sweep_dir: str, runs: list[tuple[str, str]], opts: dict[str, Any] | None = None
) -> list[str]:
    """Diff each finished run of ``runs`` ((name, run_dir) in the sweep's order) against the
    first finished one, then write ``<sweep_dir>/compare.html`` over those that share its
    images. Returns the names on the page."""
    from atlas_core.compose.sweep_page import PageRun, write_sweep_page

    done = [(n, d) for n, d in runs if _finished(RunLocation.of(d, opts))]
    if len(done) < 2:
        log.info("sweep: %d finished runs, nothing to compare", len(done))
        return []
    first, shown = done[0], [done[0]]
    folder = first[1].rstrip("/").rsplit("/", 1)[-1]
    for name, run_dir in done[1:]:
        rec = diff_into(first, run_dir, RunLocation.of(run_dir, opts).diff_of(folder).root, opts)
        if "error" not in rec:
            shown.append((name, run_dir))
    if len(shown) < 2:
        return []
    root = RunLocation.of(sweep_dir, opts)
    page = [
        PageRun(name, run_dir, row_figures(RunLocation.of(run_dir, opts)))
        for name, run_dir in shown
    ]
    write_sweep_page(root, page, first=first[0])
    log.info("sweep: %d runs compared on %s", len(shown), root.url("compare.html"))
    return [n for n, _ in shown]


def row_figures(loc: RunLocation) -> dict[str, Any]:
    """A run's figures for the comparison page and the index: its own (trustworthiness, icon
    fidelity, plausibility, from its manifest) and its diff's (``compare.json``)."""
    from atlas_core.compose.index import run_row

    row = run_row(loc.root.rstrip("/").rsplit("/", 1)[-1], loc.read_json(loc.manifest_url))
    out = {k: row.get(k) for k in ("model", "layer", "trustworthiness", "fidelity", "plausibility")}
    return out | compare_fields(loc.read_json(loc.url(COMPARE_FILE)))


def compare_fields(record: dict[str, Any] | None) -> dict[str, Any]:
    """What an index row shows of a run's ``compare.json`` (nothing without one)."""
    if not record:
        return {}
    out = {"against": record.get("against"), "diff": record.get("diff")}
    out |= {k: record.get(k) for k in ("neighbourhood_preservation", "flip_rate")}
    if record.get("error"):
        out["diff_error"] = str(record["error"])
    return out


def compare_with_previous(
    run_root: str, date: str, opts: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """A scheduled run's diff with the previous finished date under ``run_root`` (into
    ``<date>/diff-prev/``); None when there is no earlier finished run."""
    root = RunLocation.of(run_root, opts)
    earlier = [d for d in dated_runs(run_root, opts) if d < date]
    earlier = [d for d in earlier if _finished(root.child(d))]
    if not earlier:
        return None
    prev = earlier[-1]
    here = root.child(date)
    log.info("schedule: diffing %s against the previous run, %s", date, prev)
    return diff_into((prev, root.child(prev).root), here.root, here.child("diff-prev").root, opts)


def dated_runs(run_root: str, opts: dict[str, Any] | None = None) -> list[str]:
    """The dated runs' folder names (YYYY-MM-DD) under ``run_root``, ascending."""
    fs, base = RunLocation.of(run_root, opts).fs()
    if not fs.exists(base):
        return []
    names = (p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(base, detail=False))
    return sorted(n for n in names if _DATE.match(n))
