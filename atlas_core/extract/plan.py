"""Planning an extraction: its settings as a value, the frozen plan of inputs, positions, shards
and store layout, and the driver's checkpoint of the second-moment tree.

:class:`ExtractSettings` is the schema of the ``extract`` settings group (the pipeline's group
derives from it). :func:`plan_extraction` turns a frozen input manifest, the model's card and the
settings into everything the run store is created with; no task runs until it is made.
:class:`MomentCheckpoint` is the driver's moment tree across a stop: it adds each task's
partial sums as they arrive, persists the tree beside the markers at most every few seconds, and
takes back the partials tasks persisted before a driver stopped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from atlas_core.config import Group
from atlas_core.data.plan import ShardPlan, plan_shards
from atlas_core.data.sources import InputManifest
from atlas_core.errors import ConfigError
from atlas_core.extract.moments import MomentTree, partial_from_bytes
from atlas_core.extract.sampling import SAMPLING, sample_positions
from atlas_core.models.card import ModelCard
from atlas_core.store.markers import Markers
from atlas_core.store.run_store import StoreLayout

MOMENTS = "extract/moments.npz"  # the moment tree's checkpoint, beside the shard markers


@dataclass(frozen=True)
class ExtractSettings(Group):
    """How activations are sampled, attributed and stored."""

    samples_per_image: int = 1  # positions sampled per image
    # random (seeded positions, avoiding `edge`) | centre | all (every position of the coarsest
    # layer) | mean (the spatial mean, or a transformer's patch tokens') | cls (a class token)
    sampling: str = "random"
    edge: int = 1  # cells at the border that random positions avoid
    chunk_images: int = 256  # images per Zarr chunk; a task writes whole chunks
    chunks_per_shard: int = 1  # chunks per extraction task
    zarr_shard_chunks: int = 1  # > 1: zarr's sharding codec, this many chunks per storage object
    topk: int = 5  # top predictions kept per image (cell labels)
    attr_classes: int = 0  # attribution a.grad(logit_c): 0 off, n the top n classes, -1 all
    act_dtype: str = "float16"  # float16 | float32: how activations are stored
    amp: str = "bf16"  # autocast on CUDA: bf16 | fp16 | off (a CPU always runs fp32)
    jpeg_decoder: str = "auto"  # auto (nvJPEG on CUDA, PIL on CPU) | torchvision | pil

    def __post_init__(self) -> None:
        self._choice("sampling", SAMPLING)
        if self.sampling in ("mean", "cls") and self.samples_per_image != 1:
            raise ConfigError(
                self.key("samples_per_image"),
                self.samples_per_image,
                fix=f"sampling={self.sampling} gives one vector per image: set "
                "samples_per_image=1.",
            )
        self._choice("act_dtype", ("float16", "float32"))
        self._choice("amp", ("bf16", "fp16", "off"))
        self._choice("jpeg_decoder", ("auto", "torchvision", "pil"))
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
class ExtractionPlan:
    """What the run store is created with: the frozen inputs, each sample's position on the
    coarsest layer's grid ((N * k, 2) int16 (y, x)), the shards tasks own, the arrays' layout."""

    manifest: InputManifest
    positions: np.ndarray
    shards: ShardPlan
    layout: StoreLayout


def plan_extraction(
    manifest: InputManifest,
    card: ModelCard,
    layers: tuple[str, ...],
    e: ExtractSettings,
    *,
    seed: int,
) -> ExtractionPlan:
    """The plan of an extraction of ``layers`` (shapes from ``card``) over ``manifest``."""
    shapes = {L: card.layers[L] for L in layers}
    coarse = min(shapes.values(), key=lambda v: v[1] * v[2])
    if e.sampling == "all" and e.samples_per_image != coarse[1] * coarse[2]:
        raise ConfigError(
            e.key("samples_per_image"),
            e.samples_per_image,
            fix=f"sampling=all takes every position of the {coarse[1]}x{coarse[2]} grid: set "
            f"samples_per_image={coarse[1] * coarse[2]}.",
        )
    positions = sample_positions(
        np.arange(len(manifest)),
        e.samples_per_image,
        (coarse[1], coarse[2]),
        seed=seed,
        edge=e.edge,
        mode=e.sampling,
    )
    # the storage object a task owns: one chunk, or one zarr shard of zarr_shard_chunks chunks
    shards = plan_shards(
        len(manifest),
        chunk_images=e.chunk_images * e.zarr_shard_chunks,
        chunks_per_shard=e.chunks_per_shard,
    )
    topk = e.kept_classes if card.num_classes else 0
    layout = StoreLayout(
        k=e.samples_per_image,
        seed=seed,
        layers=shapes,
        topk=topk,
        act_dtype=e.act_dtype,
        attr_classes=e.attr_classes,
        n_classes=card.num_classes,
        inner=e.zarr_shard_chunks,
    )
    return ExtractionPlan(manifest, positions, shards, layout)


def partial_name(shard: int) -> str:
    """The marker-folder name of a task's persisted second-moment partial."""
    return f"extract/moment-{shard:06d}.npz"


class MomentCheckpoint:
    """The driver's moment tree, its checkpoint beside the markers, and the tasks' persisted
    partials not yet in it. ``every_s``: the tree is written at most this often."""

    def __init__(self, markers: Markers, n_shards: int, every_s: float = 5.0) -> None:
        self.markers = markers
        self.every_s = every_s
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
        if time.monotonic() - self.last > self.every_s:
            self.checkpoint()

    def checkpoint(self) -> None:
        """Write the tree, then drop the partials it now holds."""
        self.markers.write_blob(MOMENTS, self.tree.to_bytes())
        self.markers.remove_blobs([partial_name(i) for i in self.folded])
        self.folded, self.last = [], time.monotonic()
