"""Extract stage: freeze the input manifest, plan shards, run one Ray task per unfinished shard.

plan: the store (created once per extract fingerprint) and the shards without a valid marker
(markers listed in bulk); run: one task per shard (``ray_ops.map_tasks``) reads its images,
extracts the activations at the seeded positions, writes its whole storage objects, then its
commit marker, and returns its second-moment partial sums, which the driver adds as they arrive
in a fixed tree order (:class:`atlas_core.extract.moments.MomentTree`, checkpointed beside the
markers, so a resume re-runs only the shards whose partial the checkpoint lacks); commit: the
moments once per layer, then duplicates; summarize: counts per status from the store.
"""

from __future__ import annotations

import glob
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

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
from atlas_core.extract.moments import MomentTree, partial_from_bytes, partial_to_bytes
from atlas_core.extract.sampling import SAMPLING
from atlas_core.extract.spectrum import SPECTRUM, SpectrumSum
from atlas_core.models.layers import layer_shapes
from atlas_core.models.registry import ModelSpec
from atlas_core.store import Markers, RunStore, fingerprint
from atlas_core.store.check import missing_arrays
from atlas_core.store.run_store import StoreLayout
from pipelines.core import ray_ops
from pipelines.core.common import cached_model, inject_fault, resolve_device, test_fault
from pipelines.core.schema import (
    NOT_FINGERPRINTED,
    DataConf,
    Group,
    Resources,
    choice,
    in_range,
    setting,
)
from pipelines.core.stage import Stage, StageResult, StageRun

log = logging.getLogger(__name__)
AMP = {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}
MOMENTS = "extract/moments.npz"  # the moment tree's checkpoint, beside the shard markers
CHECKPOINT_S = 5.0  # the driver checkpoints the moment tree at most this often


@dataclass(frozen=True)
class ExtractConf(Group):
    """extract: sampling, attribution, chunking and dtypes of the activations."""

    GROUP: ClassVar[str] = "extract"
    # extra layers sampled at the same positions as ``layer`` (the fingerprint covers the set of
    # extracted layers, not which one is the atlas's: STAGE.extra)
    layers: tuple[str, ...] = field(default=(), metadata=NOT_FINGERPRINTED)
    samples_per_image: int = 1
    # random (samples_per_image seeded positions, avoiding `edge`) | centre | all (every
    # position: samples_per_image = H * W of the coarsest layer) | mean (the spatial mean, or a
    # transformer's patch tokens' mean) | cls (a transformer's class token): one per image
    sampling: str = "random"
    edge: int = 1  # cells at the border that random positions avoid
    # images per read batch (auto: two forward passes' worth, 64 on a CPU, 256 on CUDA); the
    # model always sees fixed-size batches, so this never changes an activation
    batch_size: Any = field(default="auto", metadata=NOT_FINGERPRINTED)
    chunk_images: int = 256  # images per Zarr chunk; a task writes whole chunks
    chunks_per_shard: int = 1
    zarr_shard_chunks: int = 1  # > 1: zarr's sharding codec, this many chunks per storage object
    topk: int = 5  # top predictions kept per image (for cell labels)
    attr_classes: int = 0  # attribution a.grad(logit_c): 0 off, n: top n classes, -1: all
    act_dtype: str = "float16"
    amp: str = "bf16"  # autocast on CUDA: bf16 | fp16 | off (CPU always runs fp32)
    jpeg_decoder: str = "auto"  # auto: nvJPEG on CUDA, PIL on CPU | torchvision | pil

    def __post_init__(self) -> None:
        self._tuples()
        choice("extract.sampling", self.sampling, SAMPLING)
        if self.sampling in ("mean", "cls") and self.samples_per_image != 1:
            raise ConfigError(
                "extract.samples_per_image",
                self.samples_per_image,
                fix=f"sampling={self.sampling} gives one vector per image: set "
                "extract.samples_per_image=1.",
            )
        choice("extract.act_dtype", self.act_dtype, ("float16", "float32"))
        choice("extract.amp", self.amp, ("bf16", "fp16", "off"))
        choice("extract.jpeg_decoder", self.jpeg_decoder, ("auto", "torchvision", "pil"))
        if self.batch_size != "auto":
            in_range("extract.batch_size", self.batch_size, 1, None)
        self._ranges(
            {
                "samples_per_image": (1, 4096),
                "edge": (0, None),
                "chunk_images": (1, None),
                "chunks_per_shard": (1, None),
                "zarr_shard_chunks": (1, None),
                "topk": (0, 1000),
                "attr_classes": (-1, 1000),
            }
        )

    @property
    def kept_classes(self) -> int:
        """Top classes stored per image: enough for the labels and for the attribution columns
        (``attr_classes`` > ``topk`` keeps ``attr_classes``)."""
        return max(self.topk, self.attr_classes, 1 if self.attr_classes else 0)


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
    batch_size: Any  # an int, or auto
    topk: int
    attr_classes: int
    decode: DecodePolicy
    jpeg_decoder: str = "auto"
    amp: str = "bf16"
    device: str = "auto"
    fault: str = ""
    pool: str = "position"  # position | mean | cls (extract.sampling's)


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


def run(ctx: StageRun) -> StageResult:
    """Extract into this run's store, or, with ``extractions`` set, into the shared extraction
    of this fingerprint (done once for every run that shares it) and link this run's store to
    it."""
    s, fp = ctx.s, ctx.fp
    if not s.extractions:
        return _extract(ctx)
    shared = replace(s, run_dir=f"{s.extractions.rstrip('/')}/{fp}", extractions=None)
    markers = Markers(shared.run_dir, s.storage_options)
    prior = markers.read("stage-extract")
    if prior is not None and prior.get("fingerprint") == fp:
        log.info("extract: reusing the shared extraction %s", shared.run_dir)
        result = StageResult(counts=prior["counts"], details=prior["details"])
    else:
        result = _extract(replace(ctx, s=shared))
        markers.write(
            "stage-extract", {"fingerprint": fp, "counts": result.counts, "details": result.details}
        )
    RunStore.create_child(
        s.store_url, shared.store_url, s.storage_options, attrs={"extract_fingerprint": fp}
    )
    result.details = {**result.details, "extraction": shared.run_dir}
    return result


def _extract(ctx: StageRun) -> StageResult:
    s, fp = ctx.s, ctx.fp
    markers = Markers(s.run_dir, s.storage_options)
    ray_ops.init(s.cluster)
    warm = _warm_workers(ctx)  # worker start-up (and any node the autoscaler adds) overlaps
    # the driver creating the store
    store = _open_or_create(ctx, markers)
    plan = store.shards
    moments = _Moments(markers, len(plan))
    records = markers.read_all("extract")
    todo = [
        i
        for i, (a, b) in enumerate(plan)
        if not (_valid(records.get(f"extract/shard-{i:06d}"), fp, a, b) and moments.has(i))
    ]
    jobs = [_job(ctx, i, *plan[i]) for i in todo]
    log.info("extract: %d shards to run, %d already committed", len(jobs), len(plan) - len(jobs))
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
    total_sums, total_counts = moments.tree.total()
    sums, counts = dict(total_sums), dict(total_counts)
    amp, n_amp = sums.pop(SPECTRUM, None), counts.pop(SPECTRUM, 0)
    store.write_moments(sums, counts, moments.tree.covered())
    if amp is not None:
        store.images.put("spectrum", (amp / max(n_amp, 1)).astype(np.float32))
    dup, first = duplicate_rows(
        store.images.read("content_hash"), store.images.crops(), store.status() == Status.OK
    )
    store.mark_duplicates(dup, first)
    _restate_markers(store, markers, dup)
    result = _summarize(store, len(plan), ran)
    result.details["layers"] = sorted(store.layers)
    result.details["warm_workers"] = ray_ops.settle(warm)
    return result


class _Moments:
    """The driver's moment tree, its checkpoint, and the tasks' partials not yet in it."""

    def __init__(self, markers: Markers, n_shards: int) -> None:
        self.markers = markers
        blob = markers.read_blob(MOMENTS)
        self.tree = MomentTree.from_bytes(blob, n_shards) if blob else MomentTree(n_shards)
        self.folded: list[int] = []  # partials in the tree, not yet in a checkpoint
        self.last = time.monotonic()

    def has(self, shard: int) -> bool:
        """Whether the shard's sums are in the tree, or (persisted by its task before a driver
        stopped) can be added without running it again."""
        if self.tree.covered()[shard]:
            return True
        blob = self.markers.read_blob(partial_name(shard))
        if blob is None:
            return False
        self.add(shard, *partial_from_bytes(blob))
        return True

    def add(self, shard: int, sums: dict[str, np.ndarray], counts: dict[str, int]) -> None:
        self.tree.add(shard, sums, counts)
        self.folded.append(shard)
        if time.monotonic() - self.last > CHECKPOINT_S:
            self.checkpoint()

    def checkpoint(self) -> None:
        """Write the tree, then drop the partials it now holds."""
        self.markers.write_blob(MOMENTS, self.tree.to_bytes())
        self.markers.remove_blobs([partial_name(i) for i in self.folded])
        self.folded, self.last = [], time.monotonic()


def partial_name(shard: int) -> str:
    return f"extract/moment-{shard:06d}.npz"


def warm_worker(model: ModelSpec, device: str) -> str:
    """Task body: import the stage's code and load the model into this worker process's cache,
    so the shard tasks that follow on it start computing at once."""
    cached_model(model, resolve_device(device))
    return ray_ops.where_am_i()["node"]


def _warm_workers(ctx: StageRun) -> list[Any]:
    """One warm-up task per extraction slot the cluster has (handles; nothing waits on them)."""
    res = ctx.resources()
    ray_ops.require("cluster.extract", res.num_cpus, res.num_gpus, count=64)
    slots = ray_ops.capacity(res.num_cpus, res.num_gpus)
    return [
        ray_ops.submit(
            warm_worker,
            ctx.s.model.spec,
            ctx.device(),
            num_cpus=res.num_cpus,
            num_gpus=res.num_gpus,
        )
        for _ in range(slots)
    ]


def kept_classes(s: Any) -> int:
    """Top predictions kept per image: ``extract.kept_classes``, or none for a model without a
    class head (a CLIP tower, DINOv2: its outputs are features, not class logits)."""
    model = cached_model(s.model.spec, "cpu")
    return s.extract.kept_classes if model.num_classes else 0


def _job(ctx: StageRun, shard: int, start: int, stop: int) -> ExtractJob:
    s, e = ctx.s, ctx.conf(ExtractConf)
    return ExtractJob(
        s.run_dir,
        s.store_url,
        s.storage_options,
        shard,
        start,
        stop,
        ctx.fp,
        s.model.spec,
        s.extracted_layers,
        e.batch_size,
        kept_classes(s),
        e.attr_classes,
        s.data.decode,
        e.jpeg_decoder,
        e.amp,
        ctx.device(),
        test_fault(),
        e.sampling if e.sampling in ("mean", "cls") else "position",
    )


def _open_or_create(ctx: StageRun, markers: Markers) -> RunStore:
    s, fp = ctx.s, ctx.fp
    try:
        store = RunStore.open(s.store_url, mode="r+", storage_options=s.storage_options)
        if store.attrs.get("extract_fingerprint") == fp:
            return store
        log.info("extract settings changed: recreating the run store")
    except StoreError as exc:  # no store yet (or another format): create it
        log.info("extract: creating the run store (%s)", exc)
    markers.remove_prefix("extract")
    manifest = build_manifest(s.data, s.seed)
    model = cached_model(s.model.spec, "cpu")
    shapes = layer_shapes(model.module, s.extracted_layers, model.preprocess.size)
    coarse = min(shapes.values(), key=lambda v: v[1] * v[2])
    e = ctx.conf(ExtractConf)
    if e.sampling == "all" and e.samples_per_image != coarse[1] * coarse[2]:
        raise ConfigError(
            "extract.samples_per_image",
            e.samples_per_image,
            fix=f"sampling=all takes every position of the {coarse[1]}x{coarse[2]} "
            f"grid: set extract.samples_per_image={coarse[1] * coarse[2]}.",
        )
    positions = sample_positions(
        np.arange(len(manifest)),
        e.samples_per_image,
        (coarse[1], coarse[2]),
        seed=s.seed,
        edge=e.edge,
        mode=e.sampling,
    )
    # the storage object a task owns: one chunk, or one zarr shard of zarr_shard_chunks chunks
    plan = plan_shards(
        len(manifest),
        chunk_images=e.chunk_images * e.zarr_shard_chunks,
        chunks_per_shard=e.chunks_per_shard,
    )
    log.info("extract: %d images, %d shards, layers %s", len(manifest), len(plan), shapes)
    layout = StoreLayout(
        k=e.samples_per_image,
        seed=s.seed,
        layers=shapes,
        topk=kept_classes(s),
        act_dtype=e.act_dtype,
        attr_classes=e.attr_classes,
        n_classes=model.num_classes,
        inner=e.zarr_shard_chunks,
    )
    attrs = {"extract_fingerprint": fp, "model": s.model.name, "decode_policy": DECODE_POLICY}
    return RunStore.create(
        s.store_url, manifest, plan, positions, layout, s.storage_options, attrs=attrs
    )


def _valid(rec: dict[str, Any] | None, fp: str, start: int, stop: int) -> bool:
    return (
        rec is not None
        and rec.get("fingerprint") == fp
        and rec.get("rows") == [start, stop]
        and sum(rec.get("status_counts", {}).values()) == stop - start
    )


def extract_shard(job: ExtractJob) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, int]]:
    """The task body: read, extract, write whole storage objects, then the commit marker.
    Returns (the marker's record, the second-moment sums per layer, their vector counts)."""
    t0 = time.perf_counter()
    inject_fault(job.fault, "start", job.shard)
    device = resolve_device(job.device)
    store = RunStore.open(job.store_url, mode="r+", storage_options=job.storage_options)
    model = cached_model(job.model, device)
    extractor = ActivationExtractor(
        model,
        job.layers,
        {L: store.layers[L][1:] for L in job.layers},
        topk=job.topk,
        device=device,
        attr_classes=job.attr_classes,
        amp_dtype=AMP[job.amp],
        pool=job.pool,
    )
    img = store.images
    reader = ImageReader(
        img.uris(job.start, job.stop),
        img.crops(job.start, job.stop),
        model.preprocess,
        root=store.attrs.get("root"),
        policy=job.decode,
        device=device,
        decoder=job.jpeg_decoder,
        batch_size=2 * extractor.micro if job.batch_size == "auto" else int(job.batch_size),
    )
    k, pos = store.k, store.positions(job.start, job.stop)
    buf = ShardBuffers(
        job.stop - job.start,
        k,
        {L: store.layers[L][0] for L in job.layers},
        job.topk,
        extractor.attr_width,
    )
    startup = time.perf_counter() - t0
    spectrum = SpectrumSum()
    for idx, x in reader.batches():
        buf.add(idx, extractor(x, pos[buf.sample_rows(idx)]))
        spectrum.add(x, job.start + idx, model.preprocess.denormalize)  # one image in eight
        inject_fault(job.fault, "mid", job.shard)
    buf.set_inputs(reader.status, reader.error, reader.hashes)
    seconds = time.perf_counter() - t0
    result = buf.result(job.shard, job.start, job.stop, seconds)
    store.write_extract_shard(result)
    markers = Markers(job.run_dir, job.storage_options)
    sums, counts_m = dict(result.moment), dict(result.moment_count)
    amp = spectrum.result()
    if amp is not None:
        sums[SPECTRUM], counts_m[SPECTRUM] = amp, spectrum.count
    markers.write_blob(partial_name(job.shard), partial_to_bytes(sums, counts_m))
    inject_fault(job.fault, "after_write", job.shard)
    counts = Counter(Status(int(v)).name.lower() for v in reader.status)
    ray_ops.count("atlas_images", counts.get("ok", 0), {"status": "ok"})
    ray_ops.count(
        "atlas_images", sum(n for s, n in counts.items() if s != "ok"), {"status": "failed"}
    )
    record = {
        "shard": job.shard,
        "rows": [job.start, job.stop],
        "fingerprint": job.fingerprint,
        "status_counts": dict(counts),
        "samples_ok": int(counts.get("ok", 0)) * k,
        "seconds": round(seconds, 3),
        "startup_seconds": round(startup, 3),
        "images_per_second": round((job.stop - job.start) / max(seconds, 1e-9), 1),
        "acts_hash": _acts_hash(buf.acts, store),
        "where": {**ray_ops.where_am_i(), "device": device, "reader": reader.strategy},
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
            "failed_by_reason": failed,
            "samples": by_status.get("ok", 0) * store.k,
            "shards": n_shards,
            "shards_skipped": n_shards - len(records),
            "shards_run": len(records),
        },
    )


def outputs(ctx: StageRun, store: RunStore) -> list[str]:
    """Every extracted layer's activations and reduced second moment."""
    keys = [f"layers/{L}/{a}" for L in ctx.s.extracted_layers for a in ("acts", "moment")]
    return missing_arrays(store.source, keys)


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
