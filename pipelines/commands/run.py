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

import contextlib
import logging
import os
import platform
import subprocess
import time
import traceback
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from importlib import metadata
from typing import Any

import atlas_core
from atlas_core.errors import ConfigError, StoreError
from atlas_core.models.card import ModelCard
from atlas_core.reduce import choose_backend
from atlas_core.store import Markers, RunStore, fingerprint
from atlas_core.store.lease import Lease
from pipelines.core import ray_ops
from pipelines.core.common import cached_model, hardware, inject_fault, redact, test_fault
from pipelines.core.settings import Settings, setting
from pipelines.core.stage import Stage, StageRun
from pipelines.core.views import MAIN, View, plan_views
from pipelines.stages import REGISTRY
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


def check(s: Settings) -> ModelCard:
    """Every check that needs no work done: run_dir writable, model and layers exist (the
    model's card, made once). Returns the card."""
    loc = s.location
    if loc.is_local:
        path = loc.root.removeprefix("file://")
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
    card = model_card(s)
    if not card.num_classes:
        _needs_no_logits(s)
    if s.reduce.backend == "cuml" and not s.cluster.address:  # local: the fit runs here
        with setting("reduce"):
            choose_backend("cuml")
    return card


_CARDS: dict[tuple[object, ...], ModelCard] = {}


def model_card(s: Settings) -> ModelCard:
    """The model's card for this run's layers: the one its store (or shared extraction)
    recorded when it covers them, else made once from the model, loaded on this process's CPU
    (then kept for the process: a sweep's jobs share it). A layer the model lacks, or whose
    output is neither a feature map nor tokens, stops the run here, naming it."""
    layers, mass = s.extracted_layers, s.exemplars.field_mass
    try:
        stored = RunStore.open(s.location.store_url, "r", s.storage_options).attrs
        card = ModelCard.from_json(stored.get("model_card") or {})
    except StoreError:
        card = None
    if card is not None and card.covers(s.model.spec, layers, mass):
        return card  # the run's own record comes first
    key = (s.model.spec, layers, mass)
    if key not in _CARDS:
        with setting("model"):
            model = cached_model(s.model.spec, "cpu", role="card")
            _CARDS[key] = ModelCard.of(model, layers, mass=mass)
    return _CARDS[key]


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


def views_of(s: Settings, card: ModelCard) -> list[View]:
    """The views the settings ask for (class names resolved by the model's card)."""
    views = plan_views(s, card)
    if any(not v.is_main for v in views) and not s.extract.attr_classes:
        raise ConfigError(
            "extract.attr_classes",
            0,
            fix="class views need attribution: extract.attr_classes=5 (the images' top 5 "
            "classes) or -1 (every class).",
        )
    return views


def extraction_of(s: Settings, card: ModelCard) -> Settings:
    """The settings whose extraction this run uses: its own, or, when the run's finished
    extraction holds a superset of its layers (same model, data and extract settings), that
    one, so changing ``layer`` to an extracted layer redoes nothing upstream."""
    prior = s.location.markers().read("stage-extract")
    stored = ((prior or {}).get("details") or {}).get("layers")
    if s.extractions or not stored or not set(s.extracted_layers) < set(stored):
        return s
    alt = s.with_(extract=replace(s.extract, layers=tuple(stored)))
    fp = fingerprint([stage_inputs(REGISTRY["extract"], alt, MAIN, card), []])
    return alt if prior is not None and fp == prior.get("fingerprint") else s


def stage_inputs(st: Stage, s: Settings, view: View, card: ModelCard) -> dict[str, Any]:
    """What a stage's output depends on besides the stages it needs: its settings group (as
    the view sees it), the groups it reads, the seed, and for per-view stages the layer and
    the view. Never resources, batch sizes or worker counts."""
    out: dict[str, Any] = {"seed": s.seed, "atlas_core": atlas_core.__version__}
    if st.scope == "view":
        out |= {"layer": s.layer, **view.identity()}
    if st.group:
        out[st.group] = view.group(s, st.group).identity()
    for g in st.inputs:
        out[g] = s.group(g).identity()
    if st.extra is not None:
        out["extra"] = st.extra(StageRun(st.name, s, view, "", card))
    return out


@dataclass(frozen=True)
class RunPlan:
    """What the runner decides before any work: the settings, the settings whose extraction
    the run uses (:func:`extraction_of`), the model's card, the views, and every stage's
    fingerprint in every view it applies to, by (view slug, stage) (``""``: run-scoped)."""

    s: Settings
    ex: Settings
    card: ModelCard
    views: tuple[View, ...]
    fps: dict[tuple[str, str], str]

    def stages_in(self, view: View | None) -> list[Stage]:
        """The run-scoped stages (``view`` None), or the stages that run in ``view``."""
        if view is None:
            return [st for st in REGISTRY if st.scope == "run"]
        return [st for st in REGISTRY if st.applies_to(view)]

    def fp(self, st: Stage, view: View) -> str:
        return self.fps[("" if st.scope == "run" else view.slug, st.name)]

    def run_of(self, st: Stage, view: View) -> StageRun:
        """What the stage's runner receives in ``view``."""
        s = self.ex if st.scope == "run" else self.s
        return StageRun(st.name, s, view, self.fp(st, view), self.card)

    def to_run(self, markers: Markers) -> list[tuple[Stage, View]]:
        """The requested stages whose marker does not match their fingerprint, in every view
        (what this invocation will run, if nothing fails)."""
        records = markers.read_all("")
        out = []
        for view in [None, *self.views]:
            v = view or MAIN
            for st in self.stages_in(view):
                rec = records.get(f"{self.s.location.in_view(v.slug).marker_prefix}stage-{st.name}")
                done = rec is not None and rec.get("fingerprint") == self.fp(st, v)
                if st.name in self.s.stages and not done:
                    out.append((st, v))
        return out


def plan_run(s: Settings, card: ModelCard) -> RunPlan:
    """The run's views and every stage's fingerprint: a stage's covers its own settings and
    the fingerprints of the stages it needs (transitively)."""
    views = tuple(views_of(s, card))
    ex = extraction_of(s, card)
    fps: dict[tuple[str, str], str] = {}
    for view in [None, *views]:
        v = view or MAIN
        for st in REGISTRY:
            if (view is None) != (st.scope == "run") or (view and not st.applies_to(view)):
                continue
            deps = [fps[("" if REGISTRY[d].scope == "run" else v.slug, d)] for d in st.needs]
            inputs = stage_inputs(st, ex if st.scope == "run" else s, v, card)
            fps[("" if st.scope == "run" else v.slug, st.name)] = fingerprint([inputs, deps])
    return RunPlan(s, ex, card, views, fps)


def stage_run(s: Settings, name: str) -> StageRun:
    """What the runner would hand stage ``name`` in the main view (its real fingerprint and
    the model's card): for running one stage by hand (benchmarks, tests)."""
    return plan_run(s, model_card(s)).run_of(REGISTRY[name], MAIN)


def _run_stages(plan: RunPlan, view: View | None, markers: Markers) -> dict[str, Any]:
    """Run (or skip) the stages of one view; returns their records by stage."""
    s, v = plan.s, view or MAIN
    report: dict[str, Any] = {}
    for st in plan.stages_in(view):
        fp = plan.fp(st, v)
        name = f"{s.location.in_view(v.slug).marker_prefix}stage-{st.name}"
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
            result = st.run(plan.run_of(st, v))
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


def preflight(s: Settings, stages: list[Stage]) -> dict[str, Any]:
    """On a cluster: one task of each resource shape the stages that will run ask for,
    reporting its node's torch, CUDA, NVIDIA driver, device, cuML and nvJPEG (for the
    manifest); a shape with GPUs that lands where CUDA does not work fails the run now, naming
    node and reason."""
    if not s.cluster.address:
        return {}
    shapes: dict[tuple[float, float], list[str]] = {}
    for st in {st.name: st for st in stages}.values():
        for key in st.resources:
            r = s.cluster.of(key)
            keys = shapes.setdefault((r.num_cpus, r.num_gpus), [])
            keys += [key] if key not in keys else []
    ray_ops.init(s.cluster)
    out: dict[str, Any] = {}
    # the largest shape first: one no node type holds fails before any node is grown, and the
    # node grown for it mostly holds the smaller ones
    for (cpus, gpus), keys in sorted(shapes.items(), key=lambda kv: kv[0][::-1], reverse=True):
        ray_ops.require(", ".join(f"cluster.{k}" for k in keys), cpus, gpus)
        (report,) = ray_ops.gather(
            [ray_ops.submit(hardware, num_cpus=cpus, num_gpus=gpus)],
            desc=f"preflight {cpus:g} CPU / {gpus:g} GPU",
        )
        out[f"{cpus:g} CPU / {gpus:g} GPU"] = {**report, "for": keys}
        loud = [k for k in keys if s.cluster.of(k).device != "cpu"]
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
    ``<run_dir>/manifest.json``, atomically). A failure is recorded in ``failed.json``; a run
    that had started a stage also writes its manifest with status failed, the error and the
    stages that finished, while a failure before any work (a typo against a finished run)
    never replaces the manifest there. Then it raises. The run holds the run directory's lease
    (:func:`own`) throughout."""
    t0 = time.perf_counter()
    loc = s.location
    started = [False]
    with own(s):  # another run in this run_dir: LeaseHeld, and nothing of its is touched
        try:
            inject_fault(test_fault(), "run", 0, s.run_dir)
            plan = plan_run(s, check(s))
            parts = _stages(plan, loc.markers(), started)
        except Exception as exc:
            ray_ops.count("atlas_runs", 1, {"status": "failed"})
            _record_failure(s, resolved_config, t0, exc, started[0])
            raise
        ray_ops.count("atlas_runs", 1, {"status": "done"})
        return _write_manifest(s, resolved_config, t0, {"status": "done", **parts})


@contextlib.contextmanager
def own(s: Settings) -> Iterator[Lease]:
    """The run directory's lease for the run's whole life (``<run_dir>/.lease.json``, a
    heartbeat every ``lease_s / 4``): a second run there refuses with the owner named
    (:class:`LeaseHeld`); a lease whose owner died is taken over (``lease_s``)."""
    info = {"model": s.model.name, "layer": s.layer, "stages": list(s.stages)}
    try:
        lease = Lease.acquire(s.run_dir, s.storage_options, info, timeout_s=s.lease_s)
    except OSError as exc:
        raise ConfigError(
            "run_dir", s.run_dir, fix=f"choose a directory you can write to ({exc})."
        ) from exc
    with lease:
        yield lease
    if lease.lost:
        log.error("another run took %s over while this one ran: check its outputs", s.run_dir)


def _record_failure(
    s: Settings, resolved: dict[str, Any] | None, t0: float, exc: Exception, started: bool
) -> None:
    """``failed.json`` always; the manifest only when a stage had started."""
    loc, error = s.location, f"{type(exc).__name__}: {exc}"
    markers = loc.markers()
    done = {
        st.name: {**rec, "status": "done"}
        for st in REGISTRY
        if (rec := markers.read(f"stage-{st.name}")) is not None
    }
    try:
        record = {"error": error, "time": time.time(), "date": s.date, "started": started}
        record["traceback"] = traceback.format_exc(limit=8)
        loc.write_json(loc.failed_url, redact({**record, "run_dir": s.run_dir}))
        if started:
            parts = {"status": "failed", "stages": done, "error": error}
            _write_manifest(s, resolved, t0, parts)
    except OSError:  # a run_dir that cannot be written: the error says so
        log.warning("could not record the failure in %s", loc.root)


def _stages(plan: RunPlan, markers: Markers, started: list[bool]) -> dict[str, Any]:
    """Every stage of every view; the manifest's stages, views and hardware. ``started`` is
    set once the first stage starts (the run has done work)."""
    s, views = plan.s, plan.views
    nodes = preflight(s, [st for st, _ in plan.to_run(markers)])
    started[0] = True
    stages = _run_stages(plan, None, markers)
    main = [v for v in views if v.is_main]
    if main:
        stages |= _run_stages(plan, main[0], markers)
    others = [v for v in views if not v.is_main]
    with ThreadPoolExecutor(max_workers=s.classes.parallel) as pool:  # views share the cluster
        done = list(pool.map(lambda v: _run_stages(plan, v, markers), others))
    write_links(s, list(views), markers)
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
    s.location.write_json(s.location.manifest_url, manifest)
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
