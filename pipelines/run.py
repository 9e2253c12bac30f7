"""Run the stages in order, skipping each one whose commit marker matches its settings.

Every stage has a fingerprint chained from the stages before it, so changing a setting redoes
that stage and everything after it, and nothing else. ``manifest.json`` is written last.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from importlib import metadata
from typing import Any

import fsspec

from atlas_core.errors import ConfigError
from atlas_core.models.layers import resolve_layer
from atlas_core.reduce import choose_backend
from atlas_core.store import Markers, fingerprint
from pipelines import classes, compose, exemplars, extract, grid, patches, reduce, render
from pipelines.common import StageResult, cached_model, inject_fault, redact, test_fault
from pipelines.settings import STAGES, Settings, setting

log = logging.getLogger(__name__)

_RUNNERS: dict[str, Callable[[Settings, str], StageResult]] = {
    "extract": extract.run,
    "reduce": reduce.run,
    "grid": grid.run,
    "render": render.run,
    "exemplars": exemplars.run,
    "compose": compose.run,
    "classes": classes.run,
    "patches": patches.run,
}
_PACKAGES = (
    "torch",
    "torchvision",
    "timm",
    "zarr",
    "ray",
    "umap-learn",
    "numpy",
    "hydra-core",
    "scikit-learn",
    "pillow",
)


def needs(later: str, stage: str) -> bool:
    """Whether requesting ``later`` needs ``stage`` done first: every stage needs the ones before
    it, except that class views (``classes``, ``patches``) need only the extraction (and
    ``patches`` the views)."""
    if STAGES.index(later) <= STAGES.index(stage):
        return False
    if later in ("classes", "patches"):
        return stage == "extract" or (later == "patches" and stage == "classes")
    return True


def check(s: Settings) -> None:
    """Every check that needs no work done: run_dir writable, model and layer exist."""
    if s.is_local:
        path = s.run_dir.removeprefix("file://")
        try:
            os.makedirs(path, exist_ok=True)
            probe = os.path.join(path, f".write-test-{uuid.uuid4().hex}")
            with open(probe, "w") as f:
                f.write("ok")
            os.remove(probe)
        except OSError as exc:
            raise ConfigError(
                "run_dir", s.run_dir, fix=f"choose a directory you can write to ({exc.strerror})."
            ) from exc
    model = cached_model(s.model.spec, "cpu")
    for name in s.extracted_layers:
        resolve_layer(model.module, name, model_name=s.model.name)
    if s.reduce.backend == "cuml" and not s.cluster.address:  # local: the fit runs here
        with setting("reduce"):
            choose_backend("cuml")


def _aligned_extractions(s: Settings) -> list[list[str]]:
    """(run_dir, layer, extract fingerprint) of each run in reduce.align_with: a re-extracted
    aligned run changes this run's reduce fingerprint, so the layout is refitted."""
    out = []
    for a in s.reduce.align_with:
        marker = Markers(a.run_dir, s.storage_options).read("stage-extract")
        if marker is None:
            raise ConfigError(
                "reduce.align_with",
                a.run_dir,
                fix="that run has no finished extraction: run it with stages=[extract] first.",
            )
        out.append([a.run_dir, a.layer, str(marker.get("fingerprint"))])
    return out


def extraction_of(s: Settings) -> Settings:
    """The settings whose extraction this run uses: its own, or, when the run's finished
    extraction holds a superset of its layers (same model, data and extract settings), that
    one, so changing ``layer`` to an extracted layer redoes nothing upstream."""
    prior = Markers(s.run_dir, s.storage_options).read("stage-extract")
    stored = ((prior or {}).get("details") or {}).get("layers")
    shared = s.extractions or s.extraction_from
    if shared or not stored or not set(s.extracted_layers) < set(stored):
        return s
    alt = replace(s, extract=replace(s.extract, layers=tuple(stored)))
    same = prior is not None and fingerprint(["", alt.stage_config("extract")]) == prior.get(
        "fingerprint"
    )
    return alt if same else s


def fingerprints(s: Settings, ex: Settings | None = None) -> dict[str, str]:
    """Each stage's fingerprint, chained; ``ex``: the settings whose extraction the run uses
    (:func:`extraction_of`, computed here when not given)."""
    fps, prev = {}, ""
    ex = ex or extraction_of(s)
    for stage in STAGES:
        parts: list[Any] = [prev, (ex if stage == "extract" else s).stage_config(stage)]
        if stage == "reduce" and s.reduce.align_with:
            parts.append(_aligned_extractions(s))
        prev = fingerprint(parts)
        fps[stage] = prev
    return fps


def run(s: Settings, resolved_config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the requested stages; returns the manifest (also written to run_dir/manifest.json)."""
    t0 = time.perf_counter()
    inject_fault(test_fault(), "run", 0, s.run_dir)
    check(s)
    markers = Markers(s.run_dir, s.storage_options)
    ex = extraction_of(s)
    fps = fingerprints(s, ex)
    report: dict[str, Any] = {}
    for stage in STAGES:
        prior = markers.read(f"stage-{stage}")
        complete = prior is not None and prior.get("fingerprint") == fps[stage]
        if complete and prior is not None:
            report[stage] = {**prior, "status": "skipped (complete)"}
            log.info("%s: complete, skipped", stage)
            continue
        if stage not in s.stages:
            if any(needs(r, stage) for r in s.stages):
                raise ConfigError(
                    "stages",
                    list(s.stages),
                    fix=f"stage {stage} has not run with "
                    f"these settings yet; add it: stages=[{stage},...].",
                )
            report[stage] = {"status": "not requested"}
            continue
        log.info("%s: running", stage)
        t = time.perf_counter()
        result = _RUNNERS[stage](ex if stage == "extract" else s, fps[stage])
        record = {
            "status": result.status,
            "seconds": round(time.perf_counter() - t, 2),
            "counts": result.counts,
            "details": result.details,
            "fingerprint": fps[stage],
        }
        markers.write(f"stage-{stage}", record)
        report[stage] = record
        log.info("%s: done in %.1f s %s", stage, record["seconds"], result.counts)
    manifest = {
        "format": "activation-atlas-manifest",
        "format_version": 1,
        "run_dir": s.run_dir,
        "model": s.model.name,
        "layer": s.layer,
        "preset": s.preset_name,
        "seeds": {"seed": s.seed, "umap": s.reduce.seed},
        "config": redact(resolved_config or {}),
        "versions": _versions(),
        "git_revision": _git_rev(),
        "stages": report,
        "seconds_total": round(time.perf_counter() - t0, 2),
        "time": time.time(),
        "date": s.date,
    }
    with fsspec.open(f"{s.run_dir.rstrip('/')}/manifest.json", "w", **s.storage_options) as f:
        json.dump(manifest, f, indent=2, sort_keys=True, default=str)
    return manifest


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for p in _PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            pass
    return out


def _git_rev() -> str | None:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
        return rev.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None
