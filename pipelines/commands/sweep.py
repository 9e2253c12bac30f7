"""Sweeps (``atlas -m model=a,b layer=x,y``) and scheduled runs, around the single run.

A sweep's job runs in its own directory, ``<sweep dir>/<its overrides>``; jobs with the same
model, data, extract settings and set of layers share one extraction under
``<sweep dir>/extractions`` (list the swept layers in ``extract.layers`` so every job extracts the
same set). A failed job writes ``failed.json`` and the sweep goes on; after every job the sweep's
``index.json`` and ``index.html`` are rebuilt, and when the multirun ends a Hydra callback
(:class:`SweepSummary`) reads that index: ``atlas`` exits 1 when any job failed. No state is
kept in the process between jobs. Runs over the same images get one aligned layout and a
comparison page when the multirun ends (``sweep.align``, ``sweep.compare``:
:mod:`pipelines.commands.sweep_phases`).

A scheduled run (``run_root=...``) writes ``<run_root>/<date>`` (today, UTC, unless ``date=``),
resumes when the same date runs again, diffs itself against the previous date
(``<date>/diff-prev/``) and rebuilds ``<run_root>/index.html``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import traceback
from dataclasses import replace
from typing import Any

import fsspec
from hydra.experimental.callback import Callback

from atlas_core.errors import AtlasError, ConfigError
from atlas_core.store.lease import LeaseHeld
from atlas_core.store.location import RunLocation
from pipelines.commands.index import record_failure, write_index
from pipelines.core.settings import Settings

log = logging.getLogger("atlas.sweep")


def for_job(s: Settings, overrides: list[str], output_dir: str, sweep_dir: str) -> Settings:
    """A sweep job's settings: its own run directory (unless ``run_dir`` was swept or set) and
    the sweep's shared extractions (unless ``extractions`` was set)."""
    given = {o.split("=", 1)[0].lstrip("+~") for o in overrides}
    run_dir = s.run_dir if "run_dir" in given else output_dir
    extractions = s.extractions if "extractions" in given else f"{sweep_dir}/extractions"
    return replace(s, run_dir=run_dir, extractions=extractions)


def run_job(s: Settings, resolved: dict[str, Any], overrides: list[str], sweep_dir: str) -> str:
    """Run one job; a failure is recorded, never raised (the other jobs go on)."""
    from pipelines.commands.run import run

    try:
        run(s, {**resolved, "run_dir": s.run_dir, "extractions": s.extractions})
        status = "done"
    except Exception as exc:  # a sweep records every failure and goes on
        return job_failed(s.run_dir, sweep_dir, exc, overrides, s.storage_options)
    write_index(sweep_dir, f"sweep {sweep_dir}", s.storage_options)
    return status


def job_failed(
    run_dir: str, sweep_dir: str, exc: Exception, overrides: list[str], opts: dict[str, Any]
) -> str:
    """Record a failed job (``failed.json`` and the sweep's index); the sweep goes on."""
    log.error("sweep job %s failed: %s", run_dir, exc)
    extra = {"overrides": overrides, "traceback": traceback.format_exc(limit=8)}
    record_failure(run_dir, f"{type(exc).__name__}: {exc}", extra, opts)
    write_index(sweep_dir, f"sweep {sweep_dir}", opts)
    return "failed"


_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def scheduled(s: Settings, run_root: str, date: str | None) -> Settings:
    """A scheduled run's settings: ``<run_root>/<date>`` (today in UTC by default), with the
    extraction and the icon cache shared under the run root (unless set), so a run whose
    images and settings did not change since last week re-extracts and re-renders nothing."""
    day = date or dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
    if not _DATE.match(day):
        raise ConfigError("date", day, valid="YYYY-MM-DD", fix="give the run's date as 2026-01-31.")
    root = run_root.rstrip("/")
    render = s.render if s.render.cache_dir else replace(s.render, cache_dir=f"{root}/icon-cache")
    return s.with_(
        run_dir=f"{root}/{day}",
        date=day,
        extractions=s.extractions or f"{root}/extractions",
        render=render,
    )


def record_refused(run_root: str, date: str | None, opts: dict[str, Any], exc: Exception) -> None:
    """A scheduled run whose settings were refused before it could start (a bad data path, a
    typo): recorded as ``<run_root>/<date>/failed.json`` and in the root's index, so a weekly
    run that never started is seen. Never raises (the refusal is the error to report)."""
    day = date or dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
    if not _DATE.match(str(day)):
        return
    try:
        run_dir = RunLocation.of(run_root, opts).child(str(day)).root
        extra = {"date": day, "started": False, "refused": True}
        record_failure(run_dir, f"{type(exc).__name__}: {exc}", extra, opts)
        write_index(run_root, f"scheduled runs {run_root}", opts)
    except Exception as err:  # an unreachable run root: the refusal is reported anyway
        log.warning("could not record the refused run under %s: %s", run_root, err)


def run_one(s: Settings, resolved: dict[str, Any]) -> tuple[Settings, dict[str, Any]]:
    """One run; a scheduled one (``run_root``) goes to ``<run_root>/<date>`` and rebuilds the
    root's index. Returns the settings it ran with and the manifest."""
    from pipelines.commands.run import run

    if s.layers:
        return s, per_layer(s, resolved)
    if s.run_root:
        s = scheduled(s, s.run_root, s.date)
        resolved = {
            **resolved,
            "run_dir": s.run_dir,
            "date": s.date,
            "extractions": s.extractions,
            "render": {**resolved.get("render", {}), "cache_dir": s.render.cache_dir},
        }
    try:
        manifest = run(s, resolved)
    except LeaseHeld:  # another run owns run_dir: nothing of its is touched
        raise
    except Exception:  # run() recorded it in failed.json; a scheduled run's index shows it
        if s.run_root:
            write_index(s.run_root, f"scheduled runs {s.run_root}", s.storage_options)
        raise
    if s.run_root:
        from pipelines.commands.compare_runs import compare_with_previous

        compare_with_previous(s.run_root, str(s.date), s.storage_options)
        expire(s.run_root, s.keep_runs, s.storage_options)
        write_index(s.run_root, f"scheduled runs {s.run_root}", s.storage_options)
    return s, manifest


def expire(run_root: str, keep: int | None, opts: dict[str, Any]) -> list[str]:
    """Delete all but the newest ``keep`` dated runs under ``run_root`` (their names sort by
    date); returns what was deleted. Only a run that has ended (its ``manifest.json`` written,
    done or failed) is deleted: one still going is left alone. The shared extractions and icon
    cache stay."""
    if keep is None:
        return []
    fs, base = fsspec.core.url_to_fs(run_root, **opts)
    base = base.rstrip("/")
    dated = sorted(
        p.rstrip("/").rsplit("/", 1)[-1]
        for p in fs.ls(base, detail=False)
        if _DATE.match(p.rstrip("/").rsplit("/", 1)[-1])
    )
    gone = []
    for name in dated[: max(0, len(dated) - keep)]:
        if not fs.exists(f"{base}/{name}/manifest.json"):
            log.info("scheduled runs: %s has not ended; not expired", name)
            continue
        fs.rm(f"{base}/{name}", recursive=True)
        gone.append(name)
        log.info("scheduled runs: %s expired (keep_runs=%d)", name, keep)
    return gone


def per_layer(s: Settings, resolved: dict[str, Any]) -> dict[str, Any]:
    """``layers=[a, b, c]``: one atlas per layer, ``<run_dir>/<layer>``, from one extraction of
    every listed layer (``<run_dir>/extractions``); ``<run_dir>/index.html`` compares them.
    A layer that fails is recorded and the others go on; then the first failure is raised."""
    from pipelines.commands.run import run

    wanted = tuple(sorted(set(s.extract.layers) | set(s.layers)))
    dirs = {layer: _under(s, layer) for layer in s.layers}  # every folder checked first
    failed: list[str] = []
    for layer in s.layers:
        one = s.with_(
            layer=layer,
            layers=(),
            run_dir=dirs[layer],
            extractions=f"{s.run_dir.rstrip('/')}/extractions",
            extract=replace(s.extract, layers=wanted),
        )
        try:
            run(one, {**resolved, "layer": layer, "layers": [], "run_dir": one.run_dir})
        except Exception as exc:  # the other layers go on
            failed.append(layer)
            log.error("layer %s failed: %s", layer, exc)
            record_failure(
                one.run_dir, f"{type(exc).__name__}: {exc}", {"layer": layer}, s.storage_options
            )
    index = write_index(s.run_dir, f"layers of {s.model.name}", s.storage_options)
    if failed:
        raise AtlasError(
            f"layers {failed} failed (the others finished): see "
            f"{s.run_dir}/<layer>/failed.json and {s.run_dir}/index.html"
        )
    return index


def _under(s: Settings, layer: str) -> str:
    """``<run_dir>/<layer>``, refused when the name would leave ``run_dir``."""
    try:
        return s.location.child(layer).root
    except ValueError:
        raise ConfigError(
            "layers",
            list(s.layers),
            fix=f"{layer!r} would name a folder outside {s.run_dir}; give layer names.",
        ) from None


class SweepSummary(Callback):
    """When a multirun ends: the sweep's summary from its index, and exit 1 when a job failed
    (configured in conf/config.yaml under ``hydra.callbacks``). A job whose ``run_dir`` is
    outside the sweep's folder is not in its index: each job's own outcome is counted too."""

    def __init__(self) -> None:
        self.jobs_failed: list[str] = []
        self.jobs = 0

    def on_job_end(self, config: Any, job_return: Any, **kwargs: Any) -> None:
        from hydra.core.utils import JobStatus

        self.jobs += 1
        value = getattr(job_return, "_return_value", None)
        if job_return.status == JobStatus.FAILED or value == "failed":
            self.jobs_failed.append(",".join(getattr(job_return, "overrides", None) or []))

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        from pipelines.commands.composed import compose_job
        from pipelines.commands.sweep_phases import finish

        sweep_dir = str(config.hydra.sweep.dir)
        finish(sweep_dir, compose_job)  # aligned layouts, diffs, the comparison page
        try:
            with fsspec.open(f"{sweep_dir.rstrip('/')}/index.json", "r") as f:
                index = json.load(f)
        except (FileNotFoundError, json.JSONDecodeError):
            index = {}
        failed = [r["run"] for r in index.get("runs", []) if r.get("status") == "failed"]
        if len(self.jobs_failed) > len(failed):
            log.error("sweep jobs failed outside the sweep's index: %s", self.jobs_failed)
            failed = self.jobs_failed
        log.info(
            "sweep %s: %d jobs, %d failed%s",
            sweep_dir,
            max(self.jobs, len(index.get("runs", []))),
            len(failed),
            f" ({', '.join(failed)})" if failed else "",
        )
        log.info("sweep index: %s/index.html", sweep_dir)
        if failed:
            raise SystemExit(1)
