"""Extract stage: freeze the input manifest, plan shards, run one Ray task per unfinished shard.

plan (:func:`atlas_core.extract.plan.plan_extraction`): the store, created once per extract
fingerprint, and the shards without a valid marker (markers listed in bulk); tasks: one per shard
(``ray_ops.map_tasks``), each a :class:`ShardExtractor` set up once per worker process, reading its
images, extracting the activations at the seeded positions, writing its whole storage objects,
then its commit marker, and returning its second-moment partial sums; commit: the driver adds
those as they arrive in a fixed tree order (:class:`~atlas_core.extract.plan.MomentCheckpoint`,
checkpointed beside the markers, so a resume re-runs only the shards whose partial it lacks),
writes the moments once per layer, then marks duplicates; summarize: counts per status.
"""

from __future__ import annotations

import glob
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from atlas_core.data import (
    InputManifest,
    file_labels,
    file_list_manifest,
    folder_labels,
    folder_manifest,
    photo_crops,
)
from atlas_core.data.decode import DECODE_POLICY, DecodePolicy, Status
from atlas_core.data.plan import duplicate_rows
from atlas_core.data.reader import ImageReader
from atlas_core.data.tars import tar_manifest
from atlas_core.errors import StoreError
from atlas_core.extract import ActivationExtractor, ShardBuffers
from atlas_core.extract.moments import partial_to_bytes
from atlas_core.extract.plan import MomentCheckpoint, partial_name, plan_extraction
from atlas_core.extract.spectrum import SPECTRUM, SpectrumSum
from atlas_core.models.registry import ModelSpec
from atlas_core.store import Markers, RunStore, fingerprint
from atlas_core.store.check import missing_arrays
from atlas_core.store.location import RunLocation
from atlas_core.store.run_store import ShardResult
from pipelines.core import ray_ops
from pipelines.core.common import cached_model, inject_fault, resolve_device, test_fault
from pipelines.core.settings import DataConf, ExtractConf, Resources, setting
from pipelines.core.stage import Stage, StageResult, StageRun

log = logging.getLogger(__name__)
AMP = {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}


@dataclass(frozen=True)
class ExtractSetup:
    """What every shard task of one extraction shares, set up once per worker process
    (:class:`ShardExtractor`). ``device`` is a request (auto, cpu, cuda), resolved by the task on
    its own node; ``pool``: ``position``, ``mean`` or ``cls`` (``extract.sampling``'s)."""

    model: ModelSpec
    layers: tuple[str, ...]
    batch_size: int | str
    topk: int
    attr_classes: int
    decode: DecodePolicy
    jpeg_decoder: str = "auto"
    amp: str = "bf16"
    device: str = "auto"
    pool: str = "position"


@dataclass(frozen=True)
class ExtractJob:
    """One shard: image rows [start, stop) of the store at ``loc``."""

    loc: RunLocation
    shard: int
    start: int
    stop: int
    fingerprint: str
    setup: ExtractSetup
    fault: str = ""


def build_manifest(data: DataConf, seed: int) -> InputManifest:
    """The frozen list of inputs the data settings name."""
    with setting("data", rename={"n": "n_images", "tars": "path"}):
        if data.source == "photos":
            return photo_crops(data.n_images, seed=seed, scales=data.scales)
        if data.source == "filelist":
            man = file_list_manifest(str(data.path), limit=data.limit)
        elif data.source == "tar":
            path = str(data.path)
            found = glob.glob(os.path.join(path, "*.tar") if os.path.isdir(path) else path)
            man = tar_manifest(sorted(found), extensions=data.extensions)
        else:
            man = folder_manifest(str(data.path), extensions=data.extensions, limit=data.limit)
            if data.labels == "folder":
                labels, names = folder_labels(man.uris)
                man = replace(man, labels=labels, label_names=names)
    if data.labels == "file":
        with setting("data", rename={"labels": "labels_file"}):
            root = str(data.path) if data.source == "folder" else None
            labels, names = file_labels(man.uris, str(data.labels_file), root=root)
        man = replace(man, labels=labels, label_names=names)
    return man


def run(ctx: StageRun) -> StageResult:
    """Extract into this run's store, or, with ``extractions`` set, into the shared extraction
    of this fingerprint (done once for every run that shares it) and link this run's store to
    it."""
    s, fp = ctx.s, ctx.fp
    if not s.extractions:
        return _extract(ctx, s.location)
    shared = s.location.extraction(s.extractions, fp)
    markers = shared.markers()
    prior = markers.read("stage-extract")
    if prior is not None and prior.get("fingerprint") == fp:
        log.info("extract: reusing the shared extraction %s", shared.root)
        result = StageResult(counts=prior["counts"], details=prior["details"])
    else:
        result = _extract(ctx, shared)
        markers.write(
            "stage-extract",
            {"fingerprint": fp, "counts": result.counts, "details": result.details},
        )
    RunStore.create_child(
        s.location.store_url,
        shared.store_url,
        s.storage_options,
        attrs={"extract_fingerprint": fp},
    )
    result.details = {**result.details, "extraction": shared.root}
    return result


def _extract(ctx: StageRun, loc: RunLocation) -> StageResult:
    """Plan, run the shard tasks, commit the moments and duplicates, summarize."""
    s, fp = ctx.s, ctx.fp
    markers = loc.markers()
    ray_ops.init(s.cluster)
    setup = _setup(ctx)
    warm = _warm_workers(ctx, setup)  # worker start-up (and any node the autoscaler adds)
    # overlaps the driver creating the store
    store = _open_or_create(ctx, loc, markers)
    plan = store.shards
    moments = MomentCheckpoint(markers, len(plan))
    records = markers.read_all("extract")
    todo = [
        i
        for i, (a, b) in enumerate(plan)
        if not (_valid(records.get(f"extract/shard-{i:06d}"), fp, a, b) and moments.has(i))
    ]
    jobs = [ExtractJob(loc, i, *plan[i], fp, setup, test_fault()) for i in todo]
    log.info("extract: %d shards to run, %d already committed", len(jobs), len(plan) - len(jobs))
    ran = _run_shards(ctx, jobs, moments)
    _commit(store, markers, moments)
    result = _summarize(store, len(plan), ran)
    result.details["layers"] = sorted(store.layers)
    result.details["warm_workers"] = ray_ops.settle(warm)
    return result


def _run_shards(
    ctx: StageRun, jobs: list[ExtractJob], moments: MomentCheckpoint
) -> list[dict[str, Any]]:
    """The shard tasks; each one's partial sums are added to ``moments`` as it finishes.
    Returns the finished shards' marker records."""
    res = ctx.resources()
    ran: list[dict[str, Any]] = []

    def fold(_: int, out: tuple[dict[str, Any], dict[str, np.ndarray], dict[str, int]]) -> None:
        record, sums, counts = out
        moments.add(int(record["shard"]), sums, counts)
        ran.append(record)

    try:
        ray_ops.map_tasks(
            extract_shard,
            jobs,
            num_cpus=res.num_cpus,
            num_gpus=res.num_gpus,
            desc="extract",
            labels=[f"shard {j.shard} (images {j.start}..{j.stop})" for j in jobs],
            on_result=fold,
            keep=False,
        )
    finally:  # the shards that finished are kept, whatever failed
        moments.checkpoint()
    return ran


def _commit(store: RunStore, markers: Markers, moments: MomentCheckpoint) -> None:
    """The driver's writes after every shard: the moments of each layer, the run's amplitude
    spectrum, then duplicates as holes (and their shards' markers restated)."""
    total_sums, total_counts = moments.tree.total()
    sums, counts = dict(total_sums), dict(total_counts)
    amp, n_amp = sums.pop(SPECTRUM, None), counts.pop(SPECTRUM, 0)
    store.write_moments(sums, counts, moments.tree.covered())
    if amp is not None:
        store.images.put("spectrum", (amp / max(n_amp, 1)).astype(np.float32))
    dup, _first = duplicate_rows(
        store.images.read("content_hash"), store.images.crops(), store.status() == Status.OK
    )
    store.mark_duplicates(dup, _first)
    _restate_markers(store, markers, dup)


def _setup(ctx: StageRun) -> ExtractSetup:
    s, e = ctx.s, ctx.conf(ExtractConf)
    return ExtractSetup(
        model=s.model.spec,
        layers=s.extracted_layers,
        batch_size=e.batch_size,
        topk=e.kept_classes if ctx.card.num_classes else 0,
        attr_classes=e.attr_classes,
        decode=s.data.decode,
        jpeg_decoder=e.jpeg_decoder,
        amp=e.amp,
        device=ctx.device(),
        pool=e.sampling if e.sampling in ("mean", "cls") else "position",
    )


class ShardExtractor:
    """A worker's extraction state, set up once per process (Ray's stateful-transform shape):
    ``__init__`` resolves the device and loads this worker's own copy of the model and the
    extractor; each call extracts one shard's rows from a store. Testable without Ray."""

    def __init__(self, setup: ExtractSetup, shapes: dict[str, tuple[int, int]]) -> None:
        self.setup = setup
        self.device = resolve_device(setup.device)
        self.model = cached_model(setup.model, self.device, role="extract")
        self.extractor = ActivationExtractor(
            self.model,
            setup.layers,
            shapes,
            topk=setup.topk,
            device=self.device,
            attr_classes=setup.attr_classes,
            amp_dtype=AMP[setup.amp],
            pool=setup.pool,
        )

    def __call__(
        self, store: RunStore, shard: int, start: int, stop: int, fault: str = ""
    ) -> tuple[ShardResult, SpectrumSum, ImageReader]:
        """Read images [start, stop), extract at the stored positions; (the shard's result, its
        amplitude-spectrum sum, the reader with its statuses and strategy)."""
        t0 = time.perf_counter()
        st = self.setup
        img = store.images
        reader = ImageReader(
            img.uris(start, stop),
            img.crops(start, stop),
            self.model.preprocess,
            root=store.attrs.get("root"),
            policy=st.decode,
            device=self.device,
            decoder=st.jpeg_decoder,
            batch_size=2 * self.extractor.micro if st.batch_size == "auto" else int(st.batch_size),
        )
        k, pos = store.k, store.positions(start, stop)
        widths = {L: store.layers[L][0] for L in st.layers}
        buf = ShardBuffers(stop - start, k, widths, st.topk, self.extractor.attr_width)
        spectrum = SpectrumSum()
        for idx, x in reader.batches():
            buf.add(idx, self.extractor(x, pos[buf.sample_rows(idx)]))
            spectrum.add(x, start + idx, self.model.preprocess.denormalize)  # one image in 8
            inject_fault(fault, "mid", shard)
        buf.set_inputs(reader.status, reader.error, reader.hashes)
        return buf.result(shard, start, stop, time.perf_counter() - t0), spectrum, reader


_WORKERS: dict[tuple[ExtractSetup, tuple[tuple[str, tuple[int, int]], ...]], ShardExtractor] = {}


def shard_extractor(setup: ExtractSetup, shapes: dict[str, tuple[int, int]]) -> ShardExtractor:
    """This process's extractor for ``setup`` (built on first use; Ray reuses worker
    processes across tasks)."""
    key = (setup, tuple(sorted(shapes.items())))
    if key not in _WORKERS:
        _WORKERS[key] = ShardExtractor(setup, shapes)
    return _WORKERS[key]


def warm_worker(setup: ExtractSetup, shapes: dict[str, tuple[int, int]]) -> str:
    """Task body: build this worker process's extractor, so the shard tasks that follow on it
    start computing at once."""
    shard_extractor(setup, shapes)
    return ray_ops.where_am_i()["node"]


def _shapes(ctx: StageRun) -> dict[str, tuple[int, int]]:
    return {L: ctx.card.layers[L][1:] for L in ctx.s.extracted_layers}


def _warm_workers(ctx: StageRun, setup: ExtractSetup) -> list[Any]:
    """One warm-up task per extraction slot the cluster has (handles; nothing waits on them)."""
    res = ctx.resources()
    ray_ops.require("cluster.extract", res.num_cpus, res.num_gpus, count=64)
    slots = ray_ops.capacity(res.num_cpus, res.num_gpus)
    shapes = _shapes(ctx)
    return [
        ray_ops.submit(warm_worker, setup, shapes, num_cpus=res.num_cpus, num_gpus=res.num_gpus)
        for _ in range(slots)
    ]


def _open_or_create(ctx: StageRun, loc: RunLocation, markers: Markers) -> RunStore:
    s, fp = ctx.s, ctx.fp
    try:
        store = RunStore.open(loc.store_url, mode="r+", storage_options=loc.storage_options)
        if store.attrs.get("extract_fingerprint") == fp:
            return store
        log.info("extract settings changed: recreating the run store")
    except StoreError as exc:  # no store yet (or another format): create it
        log.info("extract: creating the run store (%s)", exc)
    markers.remove_prefix("extract")
    manifest = build_manifest(s.data, s.seed)
    plan = plan_extraction(
        manifest, ctx.card, s.extracted_layers, ctx.conf(ExtractConf), seed=s.seed
    )
    log.info(
        "extract: %d images, %d shards, layers %s",
        len(manifest),
        len(plan.shards),
        plan.layout.layers,
    )
    attrs = {
        "extract_fingerprint": fp,
        "model": s.model.name,
        "decode_policy": DECODE_POLICY,
        "model_card": ctx.card.to_json(),
        "unreadable_folders": list(manifest.unreadable),
    }
    return RunStore.create(
        loc.store_url,
        plan.manifest,
        plan.shards,
        plan.positions,
        plan.layout,
        loc.storage_options,
        attrs=attrs,
    )


def _valid(rec: dict[str, Any] | None, fp: str, start: int, stop: int) -> bool:
    return (
        rec is not None
        and rec.get("fingerprint") == fp
        and rec.get("rows") == [start, stop]
        and sum(rec.get("status_counts", {}).values()) == stop - start
    )


def extract_shard(job: ExtractJob) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, int]]:
    """The task body: extract the shard, write whole storage objects, persist its moment
    partial, then the commit marker. Returns (the marker's record, the second-moment sums per
    layer, their vector counts)."""
    t0 = time.perf_counter()
    inject_fault(job.fault, "start", job.shard)
    store = job.loc.open_store("r+")
    worker = shard_extractor(job.setup, {L: store.layers[L][1:] for L in job.setup.layers})
    startup = time.perf_counter() - t0
    result, spectrum, reader = worker(store, job.shard, job.start, job.stop, job.fault)
    store.write_extract_shard(result)
    sums, counts_m = dict(result.moment), dict(result.moment_count)
    amp = spectrum.result()
    if amp is not None:
        sums[SPECTRUM], counts_m[SPECTRUM] = amp, spectrum.count
    markers = job.loc.markers()
    markers.write_blob(partial_name(job.shard), partial_to_bytes(sums, counts_m))
    inject_fault(job.fault, "after_write", job.shard)
    counts = Counter(Status(int(v)).name.lower() for v in reader.status)
    ray_ops.count("atlas_images", counts.get("ok", 0), {"status": "ok"})
    ray_ops.count(
        "atlas_images", sum(n for s, n in counts.items() if s != "ok"), {"status": "failed"}
    )
    seconds = time.perf_counter() - t0
    record = {
        "shard": job.shard,
        "rows": [job.start, job.stop],
        "fingerprint": job.fingerprint,
        "status_counts": dict(counts),
        "samples_ok": int(counts.get("ok", 0)) * store.k,
        "seconds": round(seconds, 3),
        "startup_seconds": round(startup, 3),
        "images_per_second": round((job.stop - job.start) / max(seconds, 1e-9), 1),
        "acts_hash": _acts_hash(result.acts, store),
        "where": {**ray_ops.where_am_i(), "device": worker.device, "reader": reader.strategy},
    }
    markers.write(f"extract/shard-{job.shard:06d}", record)
    return record, sums, counts_m


def _acts_hash(acts: dict[str, np.ndarray], store: RunStore) -> str:
    """The checksum ``RunStore.acts_hash`` computes, of the values as stored (cast to the
    store's dtype), so ``atlas verify`` can recompute it from the store."""
    dtype = store.act_dtype
    return fingerprint(
        [float(np.nansum(acts[L].astype(dtype), dtype=np.float64)) for L in store.layers]
    )


def _restate_markers(store: RunStore, markers: Markers, dup: np.ndarray) -> None:
    """After duplicates became holes, their shards' markers state the stored checksum (the
    driver's metadata write; the counts stay as the task saw them)."""
    for i, (a, b) in enumerate(store.shards):
        if ((dup >= a) & (dup < b)).any():
            rec = markers.read(f"extract/shard-{i:06d}")
            if rec is not None and rec.get("acts_hash") != store.acts_hash(a, b):
                rec["acts_hash"] = store.acts_hash(a, b)
                rec["duplicates"] = int(((dup >= a) & (dup < b)).sum())
                markers.write(f"extract/shard-{i:06d}", rec)


def _summarize(store: RunStore, n_shards: int, records: list[dict[str, Any]]) -> StageResult:
    """Counts per status, each counted from the stored statuses (never as a remainder)."""
    by_status = Counter(Status(int(v)).name.lower() for v in store.status())
    failed = {r: c for r, c in by_status.items() if r not in ("ok", "pending")}
    details: dict[str, Any] = {}
    if records:
        secs = sorted(float(r["seconds"]) for r in records)
        ups = sorted(float(r["startup_seconds"]) for r in records)
        rates = sorted(float(r["images_per_second"]) for r in records)
        details = {
            "shard_seconds": {"min": secs[0], "median": secs[len(secs) // 2], "max": secs[-1]},
            "shard_startup_seconds_median": ups[len(ups) // 2],
            "shard_images_per_second_median": rates[len(rates) // 2],
            "nodes": sorted({str(r["where"].get("node", "")) for r in records}),
            "devices": sorted({str(r["where"]["device"]) for r in records}),
        }
    return StageResult(
        details=details,
        counts={
            "images_expected": store.n_images,
            "images_ok": by_status.get("ok", 0),
            "images_failed": sum(failed.values()),
            "images_lost": by_status.get("pending", 0),
            "unreadable_folders": len(store.attrs.get("unreadable_folders", [])),
            "failed_by_reason": failed,
            "samples": by_status.get("ok", 0) * store.k,
            "shards": n_shards,
            "shards_skipped": n_shards - len(records),
            "shards_run": len(records),
        },
    )


def outputs(ctx: StageRun, store: RunStore) -> list[str]:
    """Every extracted layer's activations and reduced second moment."""
    nodes = [store.extraction(L) for L in ctx.s.extracted_layers]
    return missing_arrays(store.source, [n.key(a) for n in nodes for a in ("acts", "moment")])


STAGE = Stage(
    name="extract",
    run=run,
    settings=ExtractConf,
    inputs=("model", "data"),
    resources={"extract": Resources()},
    outputs=outputs,
    scope="run",
    extra=lambda ctx: sorted(ctx.s.extracted_layers),
    reads="`images/uri`, `images/crop`, `samples/pos`, the source images",
    writes="`images/{status,error,content_hash,top_class,top_prob,spectrum}`, "
    "`layers/<L>/{acts,attr,moment,moment_count,moment_shards}`, "
    "`markers/extract/shard-*.json`, `markers/extract/moments.npz`",
    ray="one task per shard (`map_tasks`); the driver adds each task's second-moment sums "
    "in a fixed tree as they arrive",
)
