"""Extract stage: freeze the input manifest, plan shards, run one Ray task per unfinished shard.

Each task decodes its images on a thread pool (overlapping the forward pass), extracts the
activations at the seeded positions, writes its whole chunks, then writes its commit marker.
A resume skips every shard whose marker validates.
"""

from __future__ import annotations

import glob
import logging
import os
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from atlas_core.data import (
    DecodePolicy,
    InputManifest,
    Status,
    decode,
    file_list_manifest,
    folder_labels,
    folder_manifest,
    photo_crops,
    plan_shards,
)
from atlas_core.data.decode import content_hash, cropped, read_bytes
from atlas_core.data.jpeg import decode_jpegs
from atlas_core.data.plan import duplicate_rows
from atlas_core.data.tars import PREFIX as TAR_PREFIX
from atlas_core.data.tars import stream_members, tar_manifest
from atlas_core.errors import StoreError
from atlas_core.extract import ActivationExtractor, ExtractBatch, sample_positions
from atlas_core.models.layers import layer_shapes, resolve_layer
from atlas_core.models.registry import ModelSpec
from atlas_core.store import Markers, RunStore, fingerprint
from atlas_core.store.run_store import ShardResult
from pipelines import ray_ops
from pipelines.common import StageResult, cached_model, inject_fault, resolve_device
from pipelines.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExtractJob:
    """Everything one extraction task needs, as plain values."""

    run_dir: str
    store_url: str
    shard: int
    start: int
    stop: int
    model: ModelSpec
    layers: tuple[str, ...]
    grids: dict[str, tuple[int, int]]
    batch_size: int
    topk: int
    device: str
    decode: DecodePolicy
    fingerprint: str
    storage_options: dict[str, Any]
    decode_threads: int = 2
    attr_classes: int = 0
    jpeg_decoder: str = "auto"
    amp: str = "bf16"
    fault: str = ""


def build_manifest(s: Settings) -> InputManifest:
    if s.data.source == "filelist":
        return file_list_manifest(str(s.data.path), limit=s.data.limit)
    if s.data.source == "tar":
        path = str(s.data.path)
        tars = sorted(
            glob.glob(os.path.join(path, "*.tar")) if os.path.isdir(path) else glob.glob(path)
        )
        return tar_manifest(tars, extensions=s.data.extensions)
    if s.data.source == "folder":
        man = folder_manifest(str(s.data.path), extensions=s.data.extensions, limit=s.data.limit)
        if s.data.labels == "folder":
            labels, names = folder_labels(man.uris)
            man = InputManifest(man.uris, man.crops, man.root, labels, names)
        return man
    return photo_crops(s.data.n_images, seed=s.seed, scales=s.data.scales or (1.0,))


def run(s: Settings, fp: str) -> StageResult:
    markers = Markers(s.run_dir, s.storage_options)
    store = _open_or_create(s, fp, markers)
    plan = [tuple(b) for b in store.attrs["shards"]]
    grids = {n: (int(v[1]), int(v[2])) for n, v in store.layers.items()}
    device = resolve_device(s.extract.device)
    jobs, skipped = [], 0
    for i, (start, stop) in enumerate(plan):
        if _valid_marker(markers.read(f"extract/shard-{i:06d}"), fp, start, stop):
            skipped += 1
            continue
        jobs.append(
            ExtractJob(
                run_dir=s.run_dir,
                store_url=s.store_url,
                shard=i,
                start=start,
                stop=stop,
                model=s.model,
                layers=s.extract.layers,
                grids=grids,
                batch_size=s.extract.batch_size,
                topk=s.extract.topk,
                device=device,
                decode=s.data.decode,
                fingerprint=fp,
                storage_options=s.storage_options,
                attr_classes=s.extract.attr_classes,
                jpeg_decoder=s.extract.jpeg_decoder,
                amp=s.extract.amp,
                fault=s.extract.fault,
            )
        )
    log.info("extract: %d shards to run, %d already committed", len(jobs), skipped)
    ray_ops.init(s.cluster)
    records = ray_ops.map_tasks(
        extract_shard,
        jobs,
        num_cpus=s.extract.num_cpus,
        num_gpus=s.extract.num_gpus,
        desc="extract",
    )
    dup, first = duplicate_rows(
        store.group["images/content_hash"][:],
        store.group["images/crop"][:],
        store.status() == Status.OK,
    )
    store.mark_duplicates(dup, first)
    return _summarize(store, len(plan), skipped, records)


def _open_or_create(s: Settings, fp: str, markers: Markers) -> RunStore:
    try:
        store = RunStore.open(s.store_url, mode="r+", storage_options=s.storage_options)
        if store.attrs.get("extract_fingerprint") == fp:
            return store
        log.info("extract settings changed: recreating the run store")
    except StoreError as exc:  # no store yet: create it
        log.info("extract: creating the run store (%s)", exc)
    markers.remove_prefix("extract")
    manifest = build_manifest(s)
    model = cached_model(s.model, "cpu")
    for name in s.extract.layers:
        resolve_layer(model.module, name, model_name=s.model.name)
    shapes = layer_shapes(model.module, s.extract.layers, model.preprocess.size)
    coarse = min(shapes.values(), key=lambda v: v[1] * v[2])
    k = s.extract.samples_per_image
    positions = sample_positions(
        np.arange(len(manifest)),
        k,
        (coarse[1], coarse[2]),
        seed=s.seed,
        edge=s.extract.edge,
        mode=s.extract.sampling,
    )
    # the storage object a task owns: one chunk, or one zarr shard of zarr_shard_chunks chunks
    plan = plan_shards(
        len(manifest),
        chunk_images=s.extract.chunk_images * s.extract.zarr_shard_chunks,
        chunks_per_shard=s.extract.chunks_per_shard,
    )
    log.info(
        "extract: %d images, %d samples, %d shards, layers %s",
        len(manifest),
        len(positions),
        len(plan),
        shapes,
    )
    return RunStore.create(
        s.store_url,
        manifest=manifest,
        plan=plan,
        k=k,
        seed=s.seed,
        layers=shapes,
        positions=positions,
        topk=s.extract.topk,
        storage_options=s.storage_options,
        act_dtype=s.extract.act_dtype,
        attr_classes=s.extract.attr_classes,
        n_classes=model.num_classes,
        inner=s.extract.zarr_shard_chunks,
        attrs={"extract_fingerprint": fp, "model": s.model.name, "decode_policy": DECODE_POLICY},
    )


DECODE_POLICY = (
    "EXIF orientation applied; first frame of multi-frame images; alpha composited "
    "over white; 16-bit scaled to 8 bits by range; CMYK/grey/palette converted to RGB; "
    "decompression bombs and truncated files are errors"
)


def _valid_marker(rec: dict[str, Any] | None, fp: str, start: int, stop: int) -> bool:
    return (
        rec is not None
        and rec.get("fingerprint") == fp
        and rec.get("rows") == [start, stop]
        and sum(rec.get("status_counts", {}).values()) == stop - start
    )


class _ShardBuffers:
    """The rows one task writes, filled batch by batch (NaN / -1 / 0 where nothing was written)."""

    def __init__(self, n: int, k: int, channels: dict[str, int], topk: int, attr: int) -> None:
        self.k = k
        self.status = np.zeros(n, np.uint8)
        self.error = np.full(n, "", dtype=object)
        self.hashes = np.zeros(n, np.uint64)
        self.top_c = np.full((n, topk), -1, np.int32)
        self.top_p = np.full((n, topk), np.nan, np.float16)
        self.acts = {L: np.full((n * k, c), np.nan, np.float32) for L, c in channels.items()}
        self.attr = (
            {L: np.full((n * k, attr), np.nan, np.float32) for L in channels} if attr else None
        )
        self.moment = {L: np.zeros((c, c)) for L, c in channels.items()}
        self.mcount = dict.fromkeys(channels, 0)

    def add(self, idx: np.ndarray, out: ExtractBatch) -> None:
        rows = (idx[:, None] * self.k + np.arange(self.k)[None, :]).ravel()
        for name, a in out.acts.items():
            self.acts[name][rows] = a
            self.moment[name] += out.moment[name]
            self.mcount[name] += out.moment_count[name]
            if self.attr is not None and out.attr is not None:
                self.attr[name][rows] = out.attr[name]
        if out.top_class.shape[1]:
            self.top_c[idx] = out.top_class
            self.top_p[idx] = out.top_prob

    def result(self, job: ExtractJob, seconds: float) -> ShardResult:
        return ShardResult(
            job.shard,
            job.start,
            job.stop,
            self.status,
            self.error,
            self.hashes,
            self.top_c,
            self.top_p,
            self.acts,
            self.moment,
            self.mcount,
            self.attr,
            seconds,
        )


def extract_shard(job: ExtractJob) -> dict[str, Any]:
    """The task body: decode, extract, write whole chunks, then the commit marker."""
    t0 = time.perf_counter()
    store = RunStore.open(job.store_url, mode="r+", storage_options=job.storage_options)
    model = cached_model(job.model, job.device)
    n, k, root = job.stop - job.start, store.k, store.attrs.get("root")
    uris = store.group["images/uri"][job.start : job.stop]
    crops = store.group["images/crop"][job.start : job.stop]
    pos = store.positions(job.start, job.stop)
    extractor = ActivationExtractor(
        model,
        job.layers,
        job.grids,
        topk=job.topk,
        device=job.device,
        attr_classes=job.attr_classes,
        amp_dtype={"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[job.amp],
    )
    n_attr = model.num_classes if job.attr_classes < 0 else job.attr_classes
    buf = _ShardBuffers(n, k, {L: store.layers[L][0] for L in job.layers}, job.topk, n_attr)
    pin = job.device == "cuda"

    # Crops of one source file (the photo source) decode that file once per task.
    whole = lru_cache(maxsize=32)(lambda uri: decode(uri, None, policy=job.decode, root=root))
    repeated = bool((crops[:, 0] >= 0).any())

    def load(i: int) -> tuple[int, np.ndarray | None]:
        if repeated:
            d = cropped(whole(str(uris[i])), crops[i])
        else:
            d = decode(str(uris[i]), crops[i], policy=job.decode, root=root)
        buf.status[i], buf.error[i], buf.hashes[i] = int(d.status), d.detail[:500], d.content_hash
        return i, (model.preprocess.to_array(d.image) if d.image is not None else None)

    def from_tar() -> Iterator[tuple[int, np.ndarray | None]]:
        """Tar members, each tar streamed once; yields rows in order, like ``load``."""
        got = dict(stream_members([str(u) for u in uris], job.decode))
        for i in range(n):
            d = got[i]
            buf.status[i], buf.error[i], buf.hashes[i] = int(d.status), d.detail, d.content_hash
            yield i, (model.preprocess.to_array(d.image) if d.image is not None else None)

    def by_torchvision(pool: ThreadPoolExecutor) -> Iterator[tuple[int, torch.Tensor | None]]:
        """JPEGs decoded by torchvision a batch at a time (nvJPEG on the GPU); anything else, or
        anything it refuses, through the PIL policy. Yields model-sized [0, 1] tensors."""
        pre = model.preprocess
        for start in range(0, n, job.batch_size):
            ids = list(range(start, min(n, start + job.batch_size)))
            raw = list(pool.map(lambda i: read_bytes(str(uris[i]), root), ids))
            datas = [r if isinstance(r, bytes) else b"" for r in raw]
            for i, r, t in zip(
                ids, raw, decode_jpegs(datas, device=job.device, policy=job.decode), strict=True
            ):
                if t is not None and isinstance(r, bytes):
                    buf.status[i], buf.hashes[i] = int(Status.OK), content_hash(r)
                    yield i, pre.tensor_to_input(t)
                else:
                    _, arr = load(i)
                    yield (
                        i,
                        (
                            None
                            if arr is None
                            else torch.from_numpy(arr).to(job.device).permute(2, 0, 1).float() / 255
                        ),
                    )

    tar = n > 0 and str(uris[0]).startswith(TAR_PREFIX)
    tv = job.jpeg_decoder == "torchvision" or (job.jpeg_decoder == "auto" and job.device == "cuda")
    tv_jpeg = tv and not tar and not repeated
    with ThreadPoolExecutor(max_workers=job.decode_threads) as pool:
        batch: list[tuple[int, Any]] = []
        if tar:
            rows_in: Iterator[tuple[int, Any]] = from_tar()
        elif tv_jpeg:
            rows_in = by_torchvision(pool)
        else:
            rows_in = pool.map(load, range(n))  # decoding runs ahead on the pool's threads
        for i, item in rows_in:
            if item is not None:
                batch.append((i, item))
            if len(batch) == job.batch_size or (i == n - 1 and batch):
                idx = np.array([j for j, _ in batch])
                if isinstance(batch[0][1], torch.Tensor):
                    x = model.preprocess.normalize(torch.stack([t for _, t in batch]))
                else:
                    x = model.preprocess.batch(np.stack([a for _, a in batch]))
                    x = x.pin_memory() if pin else x
                rows = (idx[:, None] * k + np.arange(k)[None, :]).ravel()
                buf.add(idx, extractor(x, pos[rows]))
                batch = []
                inject_fault(job.fault, "mid", job.shard)
    seconds = time.perf_counter() - t0
    store.write_extract_shard(buf.result(job, seconds))
    inject_fault(job.fault, "after_write", job.shard)
    counts = Counter(Status(int(v)).name.lower() for v in buf.status)
    record = {
        "shard": job.shard,
        "rows": [job.start, job.stop],
        "fingerprint": job.fingerprint,
        "status_counts": dict(counts),
        "samples_ok": int(counts.get("ok", 0)) * k,
        "seconds": round(seconds, 3),
        "images_per_second": round(n / max(seconds, 1e-9), 1),
        "acts_hash": fingerprint(
            [float(np.nansum(a, dtype=np.float64)) for a in buf.acts.values()]
        ),
    }
    Markers(job.run_dir, job.storage_options).write(f"extract/shard-{job.shard:06d}", record)
    return record


def _summarize(
    store: RunStore, n_shards: int, skipped: int, records: list[dict[str, Any]]
) -> StageResult:
    status = store.status()
    counts = Counter(Status(int(v)).name.lower() for v in status)
    ok = int(counts.get("ok", 0))
    lost = int(counts.get("pending", 0))
    failed = len(status) - ok - lost
    secs = sorted(float(r["seconds"]) for r in records)
    details = {}
    if secs:
        details = {
            "shard_seconds": {"min": secs[0], "median": secs[len(secs) // 2], "max": secs[-1]},
            "shard_images_per_second_median": sorted(
                float(r["images_per_second"]) for r in records
            )[len(records) // 2],
        }
    return StageResult(
        details=details,
        counts={
            "images_expected": len(status),
            "images_ok": ok,
            "images_failed": failed,
            "images_lost": lost,
            "failed_by_reason": {r: c for r, c in counts.items() if r not in ("ok", "pending")},
            "samples": ok * store.k,
            "shards": n_shards,
            "shards_skipped": skipped,
            "shards_run": len(records),
        },
    )
