"""Extract stage: freeze the input manifest, plan shards, run one Ray task per unfinished shard.

plan: the store (created once per extract fingerprint) and the shards without a valid marker;
run: one task per shard (``ray_ops.map_tasks``) reads its images, extracts the activations at the
seeded positions and writes its whole chunks, then its commit marker; commit: the driver marks
duplicates; summarize: counts per status from the store. A resume skips committed shards.
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
    file_list_manifest,
    folder_labels,
    folder_manifest,
    photo_crops,
    plan_shards,
)
from atlas_core.data.decode import DECODE_POLICY, DecodePolicy, Status
from atlas_core.data.plan import duplicate_rows
from atlas_core.data.reader import ImageReader
from atlas_core.data.tars import tar_manifest
from atlas_core.errors import ConfigError, StoreError
from atlas_core.extract import ActivationExtractor, ShardBuffers, sample_positions
from atlas_core.models.layers import layer_shapes
from atlas_core.models.registry import ModelSpec
from atlas_core.store import Markers, RunStore, fingerprint
from atlas_core.store.run_store import StoreLayout
from pipelines import ray_ops
from pipelines.common import StageResult, cached_model, inject_fault, resolve_device, test_fault
from pipelines.settings import DataConf, Settings, setting, store_url

log = logging.getLogger(__name__)
AMP = {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}


@dataclass(frozen=True)
class ExtractJob:
    """Everything one extraction task needs, as plain values. ``device`` is a request (auto, cpu,
    cuda), resolved by the task on its own node."""

    run_dir: str
    store_url: str
    storage_options: dict[str, Any]
    shard: int
    start: int
    stop: int
    fingerprint: str
    model: ModelSpec
    layers: tuple[str, ...]
    batch_size: int
    topk: int
    attr_classes: int
    decode: DecodePolicy
    jpeg_decoder: str = "auto"
    amp: str = "bf16"
    device: str = "auto"
    fault: str = ""


def build_manifest(data: DataConf, seed: int) -> InputManifest:
    """The frozen list of inputs the data settings name."""
    with setting("data", rename={"n": "n_images", "tars": "path"}):
        if data.source == "filelist":
            return file_list_manifest(str(data.path), limit=data.limit)
        if data.source == "tar":
            path = str(data.path)
            found = glob.glob(os.path.join(path, "*.tar") if os.path.isdir(path) else path)
            return tar_manifest(sorted(found), extensions=data.extensions)
        if data.source == "folder":
            man = folder_manifest(str(data.path), extensions=data.extensions, limit=data.limit)
            if data.labels == "folder":
                labels, names = folder_labels(man.uris)
                man = InputManifest(man.uris, man.crops, man.root, labels, names)
            return man
        return photo_crops(data.n_images, seed=seed, scales=data.scales)


def run(s: Settings, fp: str) -> StageResult:
    """Extract into this run's store, or, with ``extractions`` set, into the shared extraction
    of this fingerprint (done once for every run that shares it) and link this run's store to
    it."""
    if s.extraction_from:
        return _view_of(s, fp)
    if not s.extractions:
        return _extract(s, fp)
    shared = replace(s, run_dir=f"{s.extractions.rstrip('/')}/{fp}", extractions=None)
    markers = Markers(shared.run_dir, s.storage_options)
    prior = markers.read("stage-extract")
    if prior is not None and prior.get("fingerprint") == fp:
        log.info("extract: reusing the shared extraction %s", shared.run_dir)
        result = StageResult(counts=prior["counts"], details=prior["details"])
    else:
        result = _extract(shared, fp)
        markers.write("stage-extract", {"fingerprint": fp, "counts": result.counts,
                                        "details": result.details})  # fmt: skip
    RunStore.create_child(s.store_url, shared.store_url, s.storage_options,
                          attrs={"extract_fingerprint": fp})  # fmt: skip
    result.details = {**result.details, "extraction": shared.run_dir}
    return result


def _view_of(s: Settings, fp: str) -> StageResult:
    """A view of another run (a class view): its store reads that run's finished extraction."""
    assert s.extraction_from is not None
    prior = Markers(s.extraction_from, s.storage_options).read("stage-extract")
    if prior is None or prior.get("fingerprint") != fp:
        raise ConfigError(
            "extraction_from", s.extraction_from,
            fix="a view reads a finished extraction with the same model, data and extract "
            "settings: run that run's extract stage first.",
        )  # fmt: skip
    RunStore.create_child(s.store_url, store_url(s.extraction_from), s.storage_options,
                          attrs={"extract_fingerprint": fp})  # fmt: skip
    return StageResult(counts=prior["counts"],
                       details={**prior["details"], "extraction": s.extraction_from})  # fmt: skip


def _extract(s: Settings, fp: str) -> StageResult:
    markers = Markers(s.run_dir, s.storage_options)
    ray_ops.init(s.cluster)
    warm = _warm_workers(s)  # worker start-up overlaps the driver creating the store
    store = _open_or_create(s, fp, markers)
    plan = store.shards
    todo = [
        i for i, (a, b) in enumerate(plan)
        if not _valid_marker(markers.read(f"extract/shard-{i:06d}"), fp, a, b)
    ]  # fmt: skip
    jobs = [_job(s, fp, i, *plan[i]) for i in todo]
    log.info("extract: %d shards to run, %d already committed", len(jobs), len(plan) - len(jobs))
    res = s.cluster.extract
    records = ray_ops.map_tasks(
        extract_shard, jobs, num_cpus=res.num_cpus, num_gpus=res.num_gpus, desc="extract",
        labels=[f"shard {j.shard} (images {j.start}..{j.stop})" for j in jobs],
    )  # fmt: skip
    dup, first = duplicate_rows(store.content_hashes(), store.crops(), store.status() == Status.OK)
    store.mark_duplicates(dup, first)
    _restate_markers(store, markers, dup)
    result = _summarize(store, len(plan), records)
    result.details["layers"] = sorted(store.layers)
    result.details["warm_workers"] = ray_ops.settle(warm)
    return result


def warm_worker(model: ModelSpec, device: str) -> str:
    """Task body: import the stage's code and load the model into this worker process's cache,
    so the shard tasks that follow on it start computing at once."""
    cached_model(model, resolve_device(device))
    return ray_ops.where_am_i()["node"]


def _warm_workers(s: Settings) -> list[Any]:
    """One warm-up task per extraction slot the cluster has (handles; nothing waits on them)."""
    res = s.cluster.extract
    ray_ops.require("cluster.extract", res.num_cpus, res.num_gpus)
    slots = ray_ops.capacity(res.num_cpus, res.num_gpus)
    return [
        ray_ops.submit(
            warm_worker, s.model.spec, res.device, num_cpus=res.num_cpus, num_gpus=res.num_gpus
        )
        for _ in range(slots)
    ]


def _job(s: Settings, fp: str, shard: int, start: int, stop: int) -> ExtractJob:
    e = s.extract
    return ExtractJob(
        s.run_dir, s.store_url, s.storage_options, shard, start, stop, fp, s.model.spec,
        s.extracted_layers, e.batch_size, e.kept_classes, e.attr_classes, s.data.decode,
        e.jpeg_decoder, e.amp, s.cluster.extract.device, test_fault(),
    )  # fmt: skip


def _open_or_create(s: Settings, fp: str, markers: Markers) -> RunStore:
    try:
        store = RunStore.open(s.store_url, mode="r+", storage_options=s.storage_options)
        if store.attrs.get("extract_fingerprint") == fp:
            return store
        log.info("extract settings changed: recreating the run store")
    except StoreError as exc:  # no store yet: create it
        log.info("extract: creating the run store (%s)", exc)
    markers.remove_prefix("extract")
    manifest = build_manifest(s.data, s.seed)
    model = cached_model(s.model.spec, "cpu")
    shapes = layer_shapes(model.module, s.extracted_layers, model.preprocess.size)
    coarse = min(shapes.values(), key=lambda v: v[1] * v[2])
    e = s.extract
    positions = sample_positions(
        np.arange(len(manifest)), e.samples_per_image, (coarse[1], coarse[2]),
        seed=s.seed, edge=e.edge, mode=e.sampling,
    )  # fmt: skip
    # the storage object a task owns: one chunk, or one zarr shard of zarr_shard_chunks chunks
    plan = plan_shards(
        len(manifest),
        chunk_images=e.chunk_images * e.zarr_shard_chunks,
        chunks_per_shard=e.chunks_per_shard,
    )
    log.info("extract: %d images, %d shards, layers %s", len(manifest), len(plan), shapes)
    layout = StoreLayout(
        k=e.samples_per_image, seed=s.seed, layers=shapes, topk=e.kept_classes,
        act_dtype=e.act_dtype, attr_classes=e.attr_classes, n_classes=model.num_classes,
        inner=e.zarr_shard_chunks,
    )  # fmt: skip
    attrs = {"extract_fingerprint": fp, "model": s.model.name, "decode_policy": DECODE_POLICY}
    return RunStore.create(
        s.store_url, manifest, plan, positions, layout, s.storage_options, attrs=attrs
    )


def _valid_marker(rec: dict[str, Any] | None, fp: str, start: int, stop: int) -> bool:
    return (
        rec is not None
        and rec.get("fingerprint") == fp
        and rec.get("rows") == [start, stop]
        and sum(rec.get("status_counts", {}).values()) == stop - start
    )


def extract_shard(job: ExtractJob) -> dict[str, Any]:
    """The task body: read, extract, write whole chunks, then the commit marker."""
    t0 = time.perf_counter()
    inject_fault(job.fault, "start", job.shard)
    device = resolve_device(job.device)
    store = RunStore.open(job.store_url, mode="r+", storage_options=job.storage_options)
    model = cached_model(job.model, device)
    extractor = ActivationExtractor(
        model, job.layers, {L: store.layers[L][1:] for L in job.layers}, topk=job.topk,
        device=device, attr_classes=job.attr_classes, amp_dtype=AMP[job.amp],
    )  # fmt: skip
    reader = ImageReader(
        store.uris(job.start, job.stop), store.crops(job.start, job.stop), model.preprocess,
        root=store.attrs.get("root"), policy=job.decode, device=device,
        decoder=job.jpeg_decoder, batch_size=job.batch_size,
    )  # fmt: skip
    k, pos = store.k, store.positions(job.start, job.stop)
    buf = ShardBuffers(job.stop - job.start, k, {L: store.layers[L][0] for L in job.layers},
                       job.topk, extractor.attr_width)  # fmt: skip
    startup = time.perf_counter() - t0
    for idx, x in reader.batches():
        buf.add(idx, extractor(x, pos[buf.sample_rows(idx)]))
        inject_fault(job.fault, "mid", job.shard)
    buf.set_inputs(reader.status, reader.error, reader.hashes)
    seconds = time.perf_counter() - t0
    store.write_extract_shard(buf.result(job.shard, job.start, job.stop, seconds))
    inject_fault(job.fault, "after_write", job.shard)
    counts = Counter(Status(int(v)).name.lower() for v in reader.status)
    record = {
        "shard": job.shard, "rows": [job.start, job.stop], "fingerprint": job.fingerprint,
        "status_counts": dict(counts), "samples_ok": int(counts.get("ok", 0)) * k,
        "seconds": round(seconds, 3), "startup_seconds": round(startup, 3),
        "images_per_second": round((job.stop - job.start) / max(seconds, 1e-9), 1),
        "acts_hash": _acts_hash(buf.acts, store),
        "where": {**ray_ops.where_am_i(), "device": device, "reader": reader.strategy},
    }  # fmt: skip
    Markers(job.run_dir, job.storage_options).write(f"extract/shard-{job.shard:06d}", record)
    return record


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
        details = {
            "shard_seconds": {"min": secs[0], "median": secs[len(secs) // 2], "max": secs[-1]},
            "shard_startup_seconds_median": ups[len(ups) // 2],
            "shard_images_per_second_median": sorted(
                float(r["images_per_second"]) for r in records
            )[len(records) // 2],
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
            "failed_by_reason": failed,
            "samples": by_status.get("ok", 0) * store.k,
            "shards": n_shards,
            "shards_skipped": n_shards - len(records),
            "shards_run": len(records),
        },
    )
