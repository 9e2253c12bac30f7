"""Run the stages in order, in every view, skipping each one whose marker matches its settings.

The runner expands the settings into views (the atlas of every activation, then each class
view: :mod:`pipelines.core.views`) and runs every stage the registry declares where it applies:
the extraction once, the per-view stages in each view. A stage's fingerprint covers its own
settings and the fingerprints of the stages it needs (transitively), so a changed setting
redoes exactly the stages that depend on it. After the stages, the runner writes the viewers'
links (one declared output, :func:`pipelines.stages._viewer.write_links`), then
``manifest.json``.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from importlib import metadata
from typing import Any

import fsspec

import atlas_core
from atlas_core.errors import ConfigError
from atlas_core.models.layers import layer_shapes, resolve_layer
from atlas_core.reduce import choose_backend
from atlas_core.store import Markers, fingerprint
from pipelines.core import ray_ops
from pipelines.core.common import cached_model, hardware, inject_fault, redact, test_fault
from pipelines.core.schema import identity, setting
from pipelines.core.stage import Stage, StageRun
from pipelines.core.views import MAIN, View, plan_views
from pipelines.settings import REGISTRY, Settings
from pipelines.stages._viewer import write_links

log = logging.getLogger(__name__)
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
Fingerprints = dict[tuple[str, str], str]  # (view slug, stage) -> fingerprint


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
    layer_shapes(model.module, s.extracted_layers, model.preprocess.size)  # a map or tokens
    if not model.num_classes:
        _needs_no_logits(s)
    if s.reduce.backend == "cuml" and not s.cluster.address:  # local: the fit runs here
        with setting("reduce"):
            choose_backend("cuml")


def _needs_no_logits(s: Settings) -> None:
    """A model without a class head (a CLIP tower, DINOv2) runs without predictions: the
    settings that need class logits stop the run before any work."""
    why = f"{s.model.name} has no class head (its outputs are features, not class logits)"
    if s.extract.attr_classes:
        raise ConfigError(
            "extract.attr_classes",
            s.extract.attr_classes,
            fix=f"{why}: attribution needs logits; set extract.attr_classes=0.",
        )
    if s.classes.atlases or s.classes.pairs:
        raise ConfigError(
            "classes",
            {"atlases": list(s.classes.atlases), "pairs": [list(p) for p in s.classes.pairs]},
            fix=f"{why}: class views need logits; leave classes empty.",
        )
    if "patches" in s.stages:
        raise ConfigError("stages", list(s.stages), fix=f"{why}: drop the patches stage.")


def views_of(s: Settings) -> list[View]:
    """The views the settings ask for (class names resolved by the model)."""
    model = cached_model(s.model.spec, "cpu")
    views = plan_views(s, model.class_index, model.class_name)
    if any(not v.is_main for v in views) and not s.extract.attr_classes:
        raise ConfigError(
            "extract.attr_classes",
            0,
            fix="class views need attribution: extract.attr_classes=5 (the images' top 5 "
            "classes) or -1 (every class).",
        )
    return views


def extraction_of(s: Settings) -> Settings:
    """The settings whose extraction this run uses: its own, or, when the run's finished
    extraction holds a superset of its layers (same model, data and extract settings), that
    one, so changing ``layer`` to an extracted layer redoes nothing upstream."""
    prior = Markers(s.run_dir, s.storage_options).read("stage-extract")
    stored = ((prior or {}).get("details") or {}).get("layers")
    if s.extractions or not stored or not set(s.extracted_layers) < set(stored):
        return s
    alt = s.with_(extract=replace(s.extract, layers=tuple(stored)))
    same = prior is not None and _fingerprint(alt, MAIN, REGISTRY["extract"], {}) == prior.get(
        "fingerprint"
    )
    return alt if same else s


def stage_inputs(st: Stage, s: Settings, view: View) -> dict[str, Any]:
    """What a stage's output depends on besides the stages it needs: its settings group (as
    the view sees it), the groups it reads, the seed, and for per-view stages the layer and
    the view. Never resources, batch sizes or worker counts."""
    out: dict[str, Any] = {"seed": s.seed, "atlas_core": atlas_core.__version__}
    if st.scope == "view":
        out |= {"layer": s.layer, **view.identity()}
    if st.group:
        out[st.group] = identity(view.group(s, st.group))
    for g in st.inputs:
        out[g] = identity(getattr(s, g))
    if st.extra is not None:
        out["extra"] = st.extra(StageRun(st.name, s, view, ""))
    return out


def _fingerprint(s: Settings, view: View, st: Stage, fps: Fingerprints) -> str:
    deps = [fps[(_scope_of(d, view), d)] for d in st.needs]
    return fingerprint([stage_inputs(st, s, view), deps])


def _scope_of(name: str, view: View) -> str:
    return "" if REGISTRY[name].scope == "run" else view.slug


def fingerprints(s: Settings, views: list[View], ex: Settings | None = None) -> Fingerprints:
    """Every stage's fingerprint in every view it applies to; ``ex``: the settings whose
    extraction the run uses (:func:`extraction_of`, computed here when not given)."""
    ex = ex or extraction_of(s)
    fps: Fingerprints = {}
    for st in REGISTRY:
        if st.scope == "run":
            fps[("", st.name)] = _fingerprint(ex, MAIN, st, fps)
    for view in views:
        for st in REGISTRY:
            if st.applies_to(view):
                fps[(view.slug, st.name)] = _fingerprint(s, view, st, fps)
    return fps


def _stages_in(view: View | None) -> list[Stage]:
    """The run-scoped stages (``view`` None), or the stages that run in ``view``."""
    if view is None:
        return [st for st in REGISTRY if st.scope == "run"]
    return [st for st in REGISTRY if st.applies_to(view)]


def _run_stages(
    s: Settings, ex: Settings, view: View | None, fps: Fingerprints, markers: Markers
) -> dict[str, Any]:
    """Run (or skip) the stages of one view; returns their records by stage."""
    v = view or MAIN
    report: dict[str, Any] = {}
    for st in _stages_in(view):
        fp = fps[(_scope_of(st.name, v), st.name)]
        name = f"{v.marker_prefix}stage-{st.name}"
        where = f"{st.name}" + (f" [{v.slug}]" if v.slug else "")
        prior = markers.read(name)
        if prior is not None and prior.get("fingerprint") == fp:
            report[st.name] = {**prior, "status": "skipped (complete)"}
            log.info("%s: complete, skipped", where)
            continue
        if st.name not in s.stages:
            _not_requested(s, st, v)
            report[st.name] = {"status": "not requested"}
            continue
        log.info("%s: running", where)
        t = time.perf_counter()
        try:
            result = st.run(StageRun(st.name, ex if st.scope == "run" else s, v, fp))
        finally:
            ray_ops.release()  # the autoscaler may let the stage's nodes go
        record = {
            "status": result.status,
            "seconds": round(time.perf_counter() - t, 2),
            "counts": result.counts,
            "details": result.details,
            "fingerprint": fp,
        }
        markers.write(name, record)
        report[st.name] = record
        log.info("%s: done in %.1f s %s", where, record["seconds"], result.counts)
    return report


def preflight(s: Settings) -> dict[str, Any]:
    """On a cluster: one task of each resource shape the requested stages ask for, reporting
    its node's torch, CUDA, NVIDIA driver, device, cuML and nvJPEG (for the manifest); a shape
    with GPUs that lands where CUDA does not work fails the run now, naming node and reason."""
    if not s.cluster.address:
        return {}
    shapes: dict[tuple[float, float], list[str]] = {}
    for st in REGISTRY:
        if st.name in s.stages:
            for key in st.resources:
                r = getattr(s.cluster, key)
                shapes.setdefault((r.num_cpus, r.num_gpus), []).append(key)
    ray_ops.init(s.cluster)
    out: dict[str, Any] = {}
    for (cpus, gpus), keys in sorted(shapes.items()):
        ray_ops.require(f"cluster.{keys[0]}", cpus, gpus)
        (report,) = ray_ops.gather(
            [ray_ops.submit(hardware, num_cpus=cpus, num_gpus=gpus)],
            desc=f"preflight {cpus:g} CPU / {gpus:g} GPU",
        )
        out[f"{cpus:g} CPU / {gpus:g} GPU"] = {**report, "for": keys}
        loud = [k for k in keys if getattr(s.cluster, k).device != "cpu"]
        if gpus and not report["cuda"] and loud:
            raise ConfigError(
                f"cluster.{loud[0]}",
                {"num_gpus": gpus},
                fix=f"a task given a GPU landed on node {report['node']} (host "
                f"{report['host']}), where CUDA does not work: "
                f"{report['cuda_error'] or 'no device visible'}; NVIDIA driver "
                f"{report['driver'] or 'not found'}, torch {report['torch']} for CUDA "
                f"{report['torch_cuda']}. Fix the node image or driver, or set "
                f"cluster.{loud[0]}.device=cpu knowingly.",
            )
    ray_ops.release()
    return out


def _not_requested(s: Settings, st: Stage, view: View) -> None:
    """A stage left out of ``stages=[...]`` that has not run is fine unless a requested stage
    of this view needs it."""
    needed = [
        r
        for r in s.stages
        if st.name in REGISTRY.upstream(r)
        and (REGISTRY[r].scope == "run" or REGISTRY[r].applies_to(view))
    ]
    if needed:
        raise ConfigError(
            "stages",
            list(s.stages),
            fix=f"stage {st.name} has not run with "
            f"these settings yet; add it: stages=[{st.name},...].",
        )


def run(s: Settings, resolved_config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the requested stages in every view; returns the manifest (also written to
    run_dir/manifest.json). A run that fails still writes its manifest, with status failed,
    the error and the stages that finished, then raises."""
    t0 = time.perf_counter()
    markers = Markers(s.run_dir, s.storage_options)
    try:
        inject_fault(test_fault(), "run", 0, s.run_dir)
        check(s)
        parts = _stages(s, markers)
    except Exception as exc:
        ray_ops.count("atlas_runs", 1, {"status": "failed"})
        done = {
            st.name: {**rec, "status": "done"}
            for st in REGISTRY
            if (rec := markers.read(f"stage-{st.name}")) is not None
        }
        try:
            _write_manifest(
                s,
                resolved_config,
                t0,
                {"status": "failed", "stages": done, "error": f"{type(exc).__name__}: {exc}"},
            )
        except OSError:  # a run_dir that cannot be written: the error says so
            pass
        raise
    ray_ops.count("atlas_runs", 1, {"status": "done"})
    return _write_manifest(s, resolved_config, t0, {"status": "done", **parts})


def _stages(s: Settings, markers: Markers) -> dict[str, Any]:
    """Every stage of every view; the manifest's stages, views and hardware."""
    views = views_of(s)
    ex = extraction_of(s)
    fps = fingerprints(s, views, ex)
    nodes = preflight(s)
    stages = _run_stages(s, ex, None, fps, markers)
    main = [v for v in views if v.is_main]
    if main:
        stages |= _run_stages(s, ex, main[0], fps, markers)
    others = [v for v in views if not v.is_main]
    with ThreadPoolExecutor(max_workers=s.classes.parallel) as pool:  # views share the cluster
        done = list(pool.map(lambda v: _run_stages(s, ex, v, fps, markers), others))
    write_links(s, views, markers)
    return {
        "hardware": nodes,
        "stages": stages,
        "views": {
            v.slug: {
                "title": v.title,
                "kind": v.kind,
                "classes": list(v.classes),
                "names": list(v.names),
                "stages": rec,
            }
            for v, rec in zip(others, done, strict=True)
        },
    }


def _write_manifest(
    s: Settings, resolved: dict[str, Any] | None, t0: float, parts: dict[str, Any]
) -> dict[str, Any]:
    manifest = {
        "format": "activation-atlas-manifest",
        "format_version": 2,
        "run_dir": s.run_dir,
        "model": s.model.name,
        "layer": s.layer,
        "preset": s.preset_name,
        "seeds": {"seed": s.seed, "umap": s.reduce.seed},
        "config": redact(resolved or {}),
        "versions": _versions(),
        "git_revision": _git_rev(),
        **parts,
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
