"""A sweep in two phases, so that its runs over the same images get one aligned layout without
extra commands (``sweep.align``, on by default).

Phase 1, each job as Hydra runs it (:func:`first_phase`): the job records its overrides, its
number in the sweep and its folders in ``<sweep>/sweep-jobs/<number>.json``; when alignment
applies to it (it asks for the reduce stage and sets neither ``reduce.align_with`` nor
``reduce.joint_layers``) it only extracts.

Phase 2, when the multirun ends (:func:`finish`, called by the sweep's Hydra callback): every
recorded job whose extraction finished is composed again from its overrides and grouped with the
others over the same images (the same data settings, ``extract.samples_per_image`` and seed, then
the same images row for row in their stores); each job then runs the stages it asked for with
``reduce.align_with`` listing the other runs of its group, as the manual recipe does
(docs/how-to/aligned-layouts.md). The reduce stage orders the feature blocks canonically, so
every run of a group fits the same features with the same seed and gets the same layout,
whatever order the jobs ran in; a job alone in its group runs unaligned. Last, with
``sweep.compare``, each run is diffed against the sweep's first and the comparison page is
written at the sweep's root (:mod:`pipelines.commands.compare_runs`).
"""

from __future__ import annotations

import json
import logging
import os
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from atlas_core.compare.runs import check_same_images
from atlas_core.errors import ConfigError, StoreError
from atlas_core.store import RunLocation
from pipelines.commands.index import record_failure, write_index
from pipelines.core.settings import AlignConf, Settings

log = logging.getLogger("atlas.sweep")
JOBS = "sweep-jobs"  # <sweep>/sweep-jobs/<num>.json: each job as phase 1 recorded it
Compose = Callable[[list[str]], tuple[Settings, dict[str, Any]]]


def aligns(s: Settings) -> bool:
    """Whether ``sweep.align`` applies to this job: it lays out (reduce among its stages) and
    chose no alignment of its own."""
    lays_out = not s.stages or "reduce" in s.stages
    return s.sweep.align and lays_out and not s.reduce.align_with and not s.reduce.joint_layers


def first_phase(
    s: Settings, resolved: dict[str, Any], overrides: list[str], num: int, sweep_dir: str
) -> tuple[Settings, dict[str, Any]]:
    """Record the job (``<sweep_dir>/sweep-jobs/<num>.json``) and return what it runs now: the
    extraction alone when alignment applies, else the job as it is."""
    align = aligns(s)
    record = {
        "overrides": list(overrides),
        "num": int(num),
        "run_dir": s.run_dir,
        "extractions": s.extractions,
        "align": align,
        "time": time.time(),
    }
    root = RunLocation.of(sweep_dir, s.storage_options)
    root.write_json(root.url(JOBS, f"{int(num):06d}.json"), record)
    if not align:
        return s, resolved
    log.info("sweep job %d: extracting now, laying out with the sweep's other runs at its end", num)
    return s.with_(stages=("extract",)), {**resolved, "stages": ["extract"]}


@dataclass(frozen=True)
class Job:
    """A recorded job composed again: its folder's name, number, settings and config."""

    name: str
    num: int
    s: Settings
    resolved: dict[str, Any]
    align: bool

    @property
    def images(self) -> str:
        """What decides the images and the samples: the data settings, samples per image and
        seed (stores are checked too)."""
        key = [self.s.data.identity(), self.s.extract.samples_per_image, self.s.seed]
        return json.dumps(key, sort_keys=True, default=str)


def recorded_jobs(
    sweep_dir: str, compose: Compose, storage_options: dict[str, Any] | None = None
) -> list[Job]:
    """Every job of the sweep that recorded itself, in the sweep's order (job number)."""
    root = RunLocation.of(sweep_dir, storage_options)
    fs, base = root.fs()
    folder = f"{base}/{JOBS}"
    out = []
    for path in sorted(fs.ls(folder, detail=False)) if fs.exists(folder) else []:
        rec = root.read_json(root.url(JOBS, path.rstrip("/").rsplit("/", 1)[-1]))
        if rec is None:
            continue
        run_dir = str(rec["run_dir"])
        name = os.path.relpath(run_dir, sweep_dir) if root.is_local else run_dir.rsplit("/", 1)[-1]
        try:
            s, resolved = compose(list(rec["overrides"]))
        except (ConfigError, KeyError) as exc:  # its failure is already recorded by phase 1
            log.warning("sweep job %s: its settings do not compose again (%s); skipped", name, exc)
            continue
        s = s.with_(run_dir=run_dir, extractions=rec.get("extractions"))
        resolved = {**resolved, "run_dir": s.run_dir, "extractions": s.extractions}
        out.append(Job(name, int(rec.get("num", 0)), s, resolved, bool(rec.get("align"))))
    return sorted(out, key=lambda j: (j.num, j.name))


def extracted(job: Job) -> bool:
    """The job's extraction finished and it has not failed since."""
    loc = job.s.location
    failed = loc.read_json(loc.failed_url)
    marker = loc.markers().read("stage-extract")
    return marker is not None and (failed is None or not _after(failed, loc))


def _after(failed: dict[str, Any], loc: RunLocation) -> bool:
    manifest = loc.read_json(loc.manifest_url) or {}
    return float(failed.get("time", 0)) >= float(manifest.get("time", 0))


def groups(jobs: list[Job]) -> list[list[Job]]:
    """The jobs to align, grouped by their images: the same settings key, and the same images,
    crops and sample places in their stores as the group's first job (else a group of its own,
    with a warning). Each group keeps the sweep's order."""
    by_key: dict[str, list[Job]] = {}
    for job in jobs:
        by_key.setdefault(job.images, []).append(job)
    out: list[list[Job]] = []
    for members in by_key.values():
        first, same, apart = members[0], [members[0]], []
        for job in members[1:]:
            try:
                a = first.s.location.open_store("r")
                check_same_images(a, job.s.location.open_store("r"), job.s.run_dir)
                same.append(job)
            except (ConfigError, StoreError) as exc:
                log.warning(
                    "sweep: %s is not over %s's images (%s); not aligned", job.name, first.name, exc
                )
                apart.append(job)
        out += [same, *([j] for j in apart)]
    return out


def aligned(job: Job, group: list[Job]) -> tuple[Settings, dict[str, Any]]:
    """The job's settings and config with ``reduce.align_with`` = the other runs of its group."""
    others = tuple(AlignConf(run_dir=o.s.run_dir, layer=o.s.layer) for o in group if o is not job)
    s = job.s.with_(reduce=replace(job.s.reduce, align_with=others))
    reduce = {**job.resolved.get("reduce", {})}
    reduce["align_with"] = [{"run_dir": a.run_dir, "layer": a.layer} for a in others]
    return s, {**job.resolved, "reduce": reduce}


def finish(
    sweep_dir: str, compose: Compose, storage_options: dict[str, Any] | None = None
) -> list[Job]:
    """Phase 2 (module docstring): lay out every job that only extracted, aligned with the
    other runs over its images; then the sweep's diffs and comparison page. Returns the jobs
    recorded. A job that fails here is recorded (``failed.json``, the index) and the others go
    on."""
    from pipelines.commands.compare_runs import compare_sweep
    from pipelines.commands.run import run

    opts = storage_options or {}
    jobs = recorded_jobs(sweep_dir, compose, opts)
    waiting = [j for j in jobs if j.align and extracted(j)]
    title = f"sweep {sweep_dir}"
    for group in groups(waiting):
        for job in group:
            s, resolved = aligned(job, group) if len(group) > 1 else (job.s, job.resolved)
            log.info(
                "sweep job %d (%s): laying out with %d other runs",
                job.num,
                job.name,
                len(group) - 1,
            )
            try:
                run(s, resolved)
            except Exception as exc:  # a sweep records every failure and goes on
                log.error("sweep job %s failed: %s", job.name, exc)
                extra = {"overrides": [], "traceback": traceback.format_exc(limit=8)}
                record_failure(s.run_dir, f"{type(exc).__name__}: {exc}", extra, opts)
            write_index(sweep_dir, title, opts)
    if jobs and any(j.s.sweep.compare for j in jobs):
        compare_sweep(sweep_dir, [(j.name, j.s.run_dir) for j in jobs], opts)
        write_index(sweep_dir, title, opts)
    return jobs
