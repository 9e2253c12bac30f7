"""The settings of a run, written out: every group of the config tree and the root ``Settings``.

Each group is a frozen dataclass that checks its ranges and choices on construction, naming
the full key (``render.steps``) through :class:`atlas_core.config.Group`. Where the library has
the value (an icon's settings: :class:`~atlas_core.featvis.recipe.IconSettings`; UMAP's and the
layout's: :class:`~atlas_core.reduce.params.ReduceSettings`), the group derives from it and adds
only orchestration fields (batch sizes, actors, caches): a setting is declared once. The YAML
files under ``conf/`` select and override; Hydra checks keys and types when it composes
(``pipelines/settings.py`` registers these classes); ``atlas --help`` and the docs'
configuration reference are generated from them.

Adding a stage adds its group here (a field of :class:`Settings`), its resources (a field of
:class:`ClusterConf`) and its module to the stage list (``pipelines/stages/__init__.py``); a test
checks the three agree.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, fields, replace
from typing import Any, ClassVar, TypeVar

from omegaconf import II

from atlas_core.config import NOT_FINGERPRINTED, Group, choice, in_range
from atlas_core.data.decode import DecodePolicy
from atlas_core.data.sources import IMAGE_EXTENSIONS, PHOTO_SCALES
from atlas_core.errors import ConfigError
from atlas_core.extract.plan import ExtractSettings
from atlas_core.featvis.recipe import IconSettings
from atlas_core.models.registry import ModelSpec, check_model_name
from atlas_core.neighbours import NeighbourParams
from atlas_core.reduce.params import METRICS, ReduceSettings
from atlas_core.store.location import RunLocation

DEVICES = ("auto", "cpu", "cuda")
SOURCES = ("photos", "folder", "filelist", "tar")
BACKGROUNDS = {"white": 255, "grey": 128, "black": 0}
TILE_FORMATS = {"jpeg": "jpg", "png": "png", "webp": "webp"}
_UNREACHABLE_DATA: ContextVar[bool] = ContextVar("unreachable_data", default=False)
G = TypeVar("G", bound=Group)


@contextmanager
def data_not_here() -> Iterator[None]:
    """Compose settings whose data only the cluster can reach (``atlas plan --images``): the
    data path is not required to exist on this machine."""
    token = _UNREACHABLE_DATA.set(True)
    try:
        yield
    finally:
        _UNREACHABLE_DATA.reset(token)


@contextmanager
def setting(prefix: str, rename: dict[str, str] | None = None) -> Iterator[None]:
    """Turn a ConfigError that ``atlas_core`` raised with its own parameter name into one that
    names the config key (``name`` -> ``model.name``)."""
    try:
        yield
    except ConfigError as exc:
        if "." in exc.what or exc.what == prefix:
            raise
        raise exc.at(prefix, (rename or {}).get(exc.what, exc.what)) from exc


# ------------------------------------------------------------------------------ inputs
@dataclass(frozen=True)
class ModelConf(Group):
    """model: the network and its weights."""

    GROUP: ClassVar[str] = "model"
    # a registry name (efficientnet_lite0, efficientnet_lite2, googlenet, tiny), or any
    # architecture by name: timm:<arch>, torchvision:<arch>
    name: str = "efficientnet_lite0"
    # a .safetensors or .pth file, hub:<file> in the torch hub cache; null: the packaged ones
    weights: str | None = None
    # the layer an option's model is atlased at unless `layer` is given
    default_layer: str = field(default="blocks.4", metadata=NOT_FINGERPRINTED)

    def __post_init__(self) -> None:
        with setting("model"):
            check_model_name(self.name)

    @property
    def spec(self) -> ModelSpec:
        return ModelSpec(name=self.name, weights=self.weights)


@dataclass(frozen=True)
class DataConf(Group):
    """data: where the images come from, their labels and the decoder's limits."""

    GROUP: ClassVar[str] = "data"
    source: str = "photos"  # photos | folder | filelist | tar (set by the data=... option)
    n_images: int = 2048  # photos only: how many seeded crops
    scales: tuple[float, ...] = PHOTO_SCALES  # photos only: crop side / short side of the photo
    path: str | None = None  # the folder, file list or tar folder (glob) of the images
    extensions: tuple[str, ...] = IMAGE_EXTENSIONS  # folder and tar: the files taken
    limit: int | None = None  # at most this many inputs, in listing order (null: all)
    # none | folder (ImageNet synset folders -> images/label) | file (data.labels_file)
    labels: str = "none"
    # labels=file: lines 'path,class' (.csv) or 'path<TAB>class', paths relative to data.path
    # (folder; whole for filelist and tar), classes as ImageNet indices or names
    labels_file: str | None = None
    max_pixels: int = 64_000_000  # larger images are refused as decompression bombs
    min_side: int = 8  # images with a shorter side are refused as too small
    max_bytes: int = 256 * 2**20  # larger files are refused from their size, never read

    def __post_init__(self) -> None:
        self._tuples()
        self._choice("source", SOURCES)
        self._choice("labels", ("none", "folder", "file"))
        self._ranges({"n_images": (1, None), "limit": (1, None), "max_pixels": (1, None)})
        self._ranges({"min_side": (1, None), "max_bytes": (1, None)})
        if self.labels == "file" and not self.labels_file:
            raise ConfigError(
                "data.labels_file", None, fix="data.labels=file needs data.labels_file=<path>."
            )
        if self.labels == "file" and self.source == "photos":
            raise ConfigError(
                "data.labels", self.labels, fix="the built-in photos carry their own labels."
            )
        if not self.scales or any(not 0 < s <= 1 for s in self.scales):
            raise ConfigError(
                "data.scales", list(self.scales), valid="(0, 1]", fix="give crop scales in (0, 1]."
            )
        if self.source != "photos" and not self.path:
            raise ConfigError("data.path", None, fix=f"data={self.source} needs data.path=<path>.")
        here, path = not _UNREACHABLE_DATA.get(), os.path.expanduser(str(self.path))
        if here and self.source == "folder" and not os.path.isdir(path):
            raise ConfigError(
                "data.path", self.path, fix="point data.path at an existing directory."
            )
        labels_file = os.path.expanduser(str(self.labels_file))
        if here and self.labels == "file" and "://" not in labels_file:
            if not os.path.isfile(labels_file):
                raise ConfigError(
                    "data.labels_file",
                    self.labels_file,
                    fix="point data.labels_file at an existing file ('path,class' lines).",
                )

    @property
    def decode(self) -> DecodePolicy:
        return DecodePolicy(
            max_pixels=self.max_pixels, min_side=self.min_side, max_bytes=self.max_bytes
        )


@dataclass(frozen=True)
class ClassesConf(Group):
    """classes: class activation atlases and two-class comparisons. A class atlas per class of
    ``atlases`` and a
    two-class comparison per pair of ``pairs``: each a view of this run's extraction with its own
    layout, grid, icons, exemplars and viewer (``<run_dir>/views/<view>/``); they need
    attribution (``extract.attr_classes``)."""

    GROUP: ClassVar[str] = "classes"
    atlases: tuple[str, ...] = ()  # class names or indices: one class activation atlas each
    pairs: tuple[Any, ...] = ()  # two-class comparisons [[a, b], ...] (names or indices)
    top_n: int = 2000  # plus the samples whose top attribution class is the class
    method: str = "umap"  # umap | tsne (the article found t-SNE better for these sparse sets)
    n_neighbors: int = 20  # a class view's UMAP n_neighbors
    min_dist: float = 0.01  # a class view's UMAP min_dist
    metric: str = "cosine"  # a class view's UMAP metric
    grid: int = 8  # a class view's grid (cells a side)
    min_count: int = 4  # a class view's minimum samples per kept cell
    parallel: int = field(default=2, metadata=NOT_FINGERPRINTED)  # views built at once
    only: bool = False  # build only the class views, not the atlas of every activation

    def __post_init__(self) -> None:
        object.__setattr__(self, "atlases", tuple(str(c) for c in self.atlases))
        pairs = tuple(tuple(str(c) for c in p) for p in self.pairs)
        object.__setattr__(self, "pairs", pairs)
        for p in pairs:
            if len(p) != 2 or p[0] == p[1]:
                raise ConfigError("classes.pairs", list(p), fix="each pair is [a, b], two classes.")
        self._choice("method", ("umap", "tsne"))
        self._choice("metric", METRICS)
        self._ranges(
            {
                "top_n": (0, None),
                "n_neighbors": (2, 1000),
                "min_dist": (0.0, 1.0),
                "grid": (1, 256),
                "min_count": (1, None),
                "parallel": (1, 64),
            }
        )
        if self.only and not (self.atlases or self.pairs):
            raise ConfigError(
                "classes.only",
                True,
                fix="name classes.atlases or classes.pairs to build, or leave classes.only=false.",
            )


# ------------------------------------------------------------------------------ cluster
@dataclass(frozen=True)
class Resources:
    """Ray resources of one stage's tasks (or of each actor), and the device they compute on
    (``auto`` is resolved by the task itself, on its node)."""

    num_cpus: float = 1.0  # CPUs of each task (or actor)
    num_gpus: float = 0.0  # GPUs of each task (or actor); fractions share a GPU
    device: str = "auto"  # auto (CUDA where the task lands on one) | cpu | cuda

    def check(self, key: str) -> None:
        in_range(f"{key}.num_cpus", self.num_cpus, 0.0, None)
        in_range(f"{key}.num_gpus", self.num_gpus, 0.0, None)
        choice(f"{key}.device", self.device, DEVICES)


@dataclass(frozen=True)
class ActorResources(Resources):
    """Each actor's resources, and how many actors: a number, or ``auto``: as many as the
    cluster's nodes can hold at once (by GPUs when actors take GPUs, else by CPUs), never more
    than there are work items."""

    actors: int | str = 1  # how many actors, or auto

    def check(self, key: str) -> None:
        super().check(key)
        if self.actors != "auto":
            in_range(f"{key}.actors", self.actors, 1, None)


@dataclass(frozen=True)
class ClusterConf(Group):
    """cluster: where Ray runs, and every stage's resources. One entry per name a stage
    declares: ``cluster.extract``, ``cluster.render``, ..."""

    GROUP: ClassVar[str] = "cluster"
    address: str | None = None  # null: a local Ray on 127.0.0.1; auto or host:port: join one
    num_cpus: int | None = None  # local Ray only
    namespace: str = "atlas"  # Ray's namespace of the run's actors and tasks
    # how long a stage waits for the autoscaler to add a node its tasks fit (0: refuse at once,
    # as a local Ray does: it has no autoscaler)
    wait_s: float = 0.0
    extract: Resources = field(default_factory=Resources)  # each extraction task
    reduce_fit: Resources = field(default_factory=Resources)  # the UMAP fit task
    reduce_search: Resources = field(default_factory=Resources)  # each landmark-search task
    grid: Resources = field(default_factory=Resources)  # each per-cell sums task
    render: ActorResources = field(default_factory=ActorResources)  # each render actor
    exemplars: Resources = field(default_factory=Resources)  # each scoring and patch task
    plausibility: Resources = field(default_factory=Resources)  # each judge task
    compose: Resources = field(default_factory=Resources)  # each drawing task
    patches: Resources = field(default_factory=Resources)  # each patch-flip task
    neighbours: Resources = field(default_factory=Resources)  # the neighbour-index task

    def __post_init__(self) -> None:
        self._ranges({"num_cpus": (1, None), "wait_s": (0, None)})
        for name, value in self.resources().items():
            value.check(f"cluster.{name}")

    def resources(self) -> dict[str, Resources]:
        """Every stage's entry, by name."""
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if isinstance(getattr(self, f.name), Resources)
        }

    def of(self, name: str) -> Resources:
        value = self.resources().get(name)
        if value is None:
            raise KeyError(f"cluster.{name} is not a resources entry")
        return value


# ------------------------------------------------------------------------------ stage groups
@dataclass(frozen=True)
class ExtractConf(ExtractSettings):
    """extract: how activations are sampled, attributed and stored. The library's
    :class:`~atlas_core.extract.plan.ExtractSettings`, plus the extra layers sampled at the same
    positions and the read batch."""

    GROUP: ClassVar[str] = "extract"
    # extra layers sampled at the same positions as ``layer`` (the fingerprint covers the set of
    # extracted layers, not which one is the atlas's: the stage's ``extra``)
    layers: tuple[str, ...] = field(default=(), metadata=NOT_FINGERPRINTED)
    # images per read batch (auto: two forward passes' worth, 64 on a CPU, 256 on CUDA); the
    # model always sees fixed-size batches, so this never changes an activation
    batch_size: int | str = field(default="auto", metadata=NOT_FINGERPRINTED)

    def __post_init__(self) -> None:
        self._tuples()
        super().__post_init__()
        if self.batch_size != "auto":
            in_range("extract.batch_size", self.batch_size, 1, None)


@dataclass(frozen=True)
class AlignConf:
    """One other run whose activations join this run's layout fit (``reduce.align_with``)."""

    run_dir: str = "???"
    layer: str = "???"


@dataclass(frozen=True)
class ReduceConf(ReduceSettings):
    """reduce: the 2-D layout, UMAP and how it scales. The library's
    :class:`~atlas_core.reduce.params.ReduceSettings`, plus what is laid out together: several
    layers of this run (``joint_layers``) or other runs on the same images (``align_with``)."""

    GROUP: ClassVar[str] = "reduce"
    seed: int | None = II("seed")  # UMAP's random_state: the run's seed unless set
    joint_layers: tuple[str, ...] = ()  # one joint fit over several extracted layers ...
    align_with: tuple[AlignConf, ...] = ()  # ... or over other runs on the same images

    def __post_init__(self) -> None:
        super().__post_init__()
        for item in self.align_with:
            if "???" in (item.run_dir, item.layer):
                raise ConfigError(
                    "reduce.align_with",
                    item,
                    fix="each entry is {run_dir: <another run on the same images>, "
                    "layer: <its layer>}.",
                )


@dataclass(frozen=True)
class NeighboursConf(NeighbourParams):
    """neighbours: the nearest samples in activation space, indexed once per run. The
    library's :class:`~atlas_core.neighbours.NeighbourParams`, plus every sample's own ``k``
    nearest (what comparing two runs reads) and the index task's threads."""

    GROUP: ClassVar[str] = "neighbours"
    seed: int = II("seed")  # the k-means sample's and centroids' seed: the run's unless set
    k: int = 10  # every sample's k nearest other samples are stored (0: the index only)
    # threads of the index task (auto: its CPUs, cluster.neighbours.num_cpus); never changes
    # the index. On a GPU (cluster.neighbours.num_gpus) the products run there instead
    threads: int | str = field(default="auto", metadata=NOT_FINGERPRINTED)

    def __post_init__(self) -> None:
        super().__post_init__()
        self._ranges({"k": (0, 1000)})
        if self.threads != "auto":
            in_range("neighbours.threads", self.threads, 1, 256)

    def params(self) -> NeighbourParams:
        """The library's settings of the index (without k and threads)."""
        return NeighbourParams(
            **{f: getattr(self, f) for f in NeighbourParams.__dataclass_fields__}
        )

    def threads_for(self, res: Resources) -> int:
        """The index task's threads: as set, or its CPUs (at least one)."""
        return int(self.threads) if self.threads != "auto" else max(1, int(res.num_cpus))


@dataclass(frozen=True)
class GridConf(Group):
    """grid: the zoom levels (grid sizes) of one layout and which cells are kept."""

    GROUP: ClassVar[str] = "grid"
    sizes: tuple[int, ...] = (20,)  # the grid sizes: cells a side, one zoom level each
    min_count: int = 5  # cells with fewer samples are dropped
    top: int = 5  # top classes kept per cell
    # class heatmaps: classes (names or indices) whose per-cell mean attribution is written at
    # every level (empty: the 64 classes that label the most cells), when attribution exists
    heatmap: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self._tuples()
        if not self.sizes:
            raise ConfigError("grid.sizes", [], fix="give at least one grid size: grid.sizes=[20].")
        for s in self.sizes:
            in_range("grid.sizes", s, 1, 4096)
        self._ranges({"min_count": (1, None), "top": (1, 1000)})
        object.__setattr__(self, "heatmap", tuple(str(c) for c in self.heatmap))


@dataclass(frozen=True)
class RenderConf(IconSettings):
    """render: the icons, one per kept cell. The library's
    :class:`~atlas_core.featvis.recipe.IconSettings` (Lucid-faithful by default: FFT +
    decorrelated colour, atlas transforms, dot x cos^n), plus how many are optimized together,
    how they are cut into work items, and the icon cache."""

    GROUP: ClassVar[str] = "render"
    # icons optimized together in one tensor, part of an icon's identity: auto = 16 on a CPU,
    # on CUDA the largest power of two up to 256 that fits the GPU's free memory (recorded in
    # the store, so a resume keeps it)
    group: int | str = "auto"
    # icons per work item and per storage object, rounded up to whole groups (auto: about four
    # items per actor, at most 1024 icons); never changes an icon
    batch_size: int | str = field(default="auto", metadata=NOT_FINGERPRINTED)
    cache: bool = field(default=True, metadata=NOT_FINGERPRINTED)  # never render a group twice
    cache_dir: str | None = field(default=None, metadata=NOT_FINGERPRINTED)  # <run_dir>/icon-cache

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("batch_size", "group"):
            if getattr(self, key) != "auto":
                in_range(f"render.{key}", getattr(self, key), 1, 65536)


@dataclass(frozen=True)
class ExemplarsConf(Group):
    """exemplars: the real images behind each cell. For each kept cell of each level, the k
    samples whose activation is closest (cosine) to the cell's mean, as patches of their source
    image (the layer's receptive field around the sampled position) and a thumbnail of each
    source image."""

    GROUP: ClassVar[str] = "exemplars"
    k: int = 8  # exemplars per cell
    patch_px: int = 64  # side of each stored patch
    thumb_px: int = 128  # longer side of each source image's thumbnail
    field: str = "effective"  # theoretical | effective: which receptive field a patch covers
    field_mass: float = 0.9  # the effective field holds this share of the gradient's mass
    # patches per task and per sheet (sheets are 16 cells wide)
    rows_per_task: int = dataclasses.field(default=256, metadata=NOT_FINGERPRINTED)

    def __post_init__(self) -> None:
        self._choice("field", ("theoretical", "effective"))
        self._ranges(
            {
                "k": (1, 64),
                "patch_px": (8, 512),
                "thumb_px": (32, 1024),
                "field_mass": (0.05, 1.0),
                "rows_per_task": (1, 4096),
            }
        )


@dataclass(frozen=True)
class PlausibilityConf(Group):
    """plausibility: how much each icon looks like its cell's exemplars, to a judge. The judge
    network, the size it sees icons and patches at, the pool of cells each icon is
    ranked among, and the cells per task."""

    GROUP: ClassVar[str] = "plausibility"
    judge: str = ""  # a model name (model.name's choices); empty: the atlas's own model
    judge_weights: str | None = None  # the judge's weights (its default ones when empty)
    input_px: int = 112  # icons and patches are resized to this square for the judge
    pool: int = 2048  # cells ranked among: every cell with exemplars up to this, else a sample
    batch: int = field(default=64, metadata=NOT_FINGERPRINTED)  # images per judge forward pass
    cells_per_task: int = field(default=2048, metadata=NOT_FINGERPRINTED)  # cells a task scores
    sheets_per_task: int = field(default=4, metadata=NOT_FINGERPRINTED)  # patch sheets a task reads

    def __post_init__(self) -> None:
        self._ranges(
            {
                "input_px": (16, 1024),
                "pool": (2, None),
                "batch": (1, 4096),
                "cells_per_task": (1, None),
                "sheets_per_task": (1, None),
            }
        )
        if self.judge:  # a misspelled judge stops the run before any work
            with setting("plausibility", {"name": "judge"}):
                check_model_name(self.judge)


@dataclass(frozen=True)
class ComposeConf(Group):
    """compose: the tiles of every level, the overviews and the viewer page."""

    GROUP: ClassVar[str] = "compose"
    background: str = "white"  # canvas behind the icons and in empty cells: white | grey | black
    density: bool = True  # icon side x min(1, sqrt(count / mean count)), as the article draws
    tile_px: int = 256  # side of the viewer's tiles: 128 | 256 | 512
    tile_format: str = "jpeg"  # jpeg | png | webp
    overview_px: int = 4096  # atlas.png and atlas-<G>.png are at most this wide
    sheet_columns: int = 16  # icons per row of the viewer's icon sheets

    def __post_init__(self) -> None:
        self._choice("background", BACKGROUNDS)
        self._choice("tile_format", TILE_FORMATS)
        self._choice("tile_px", (128, 256, 512))
        self._ranges({"overview_px": (64, 32768), "sheet_columns": (1, 256)})


@dataclass(frozen=True)
class PatchesConf(Group):
    """patches: failure-mode patches of the two-class comparisons. In each pair [a, b] of
    ``classes.pairs``,
    the icons most attributed to b are pasted into images the model classifies as a, at each
    size and corner, against a random-noise patch of the same size and place."""

    GROUP: ClassVar[str] = "patches"
    icons: int = 3  # patches per pair
    sizes: tuple[int, ...] = (48, 64, 80)  # patch side, in model-input pixels
    corners: tuple[str, ...] = ("tl", "br")  # tl | tr | bl | br | centre
    margin: int = 8  # pixels between a pasted patch and the image's edge
    max_images: int = 256  # images of class a per pair (in manifest order)
    images: str | None = None  # a folder to draw class-a images from (null: the run's own)
    examples: int = 4  # before/after images on the report page
    batch_size: int = field(default=32, metadata=NOT_FINGERPRINTED)  # images per task

    def __post_init__(self) -> None:
        self._tuples()
        for c in self.corners:
            choice("patches.corners", c, ("tl", "tr", "bl", "br", "centre"))
        for v in self.sizes:
            in_range("patches.sizes", v, 4, 4096)
        self._ranges(
            {
                "icons": (1, 64),
                "margin": (0, 1000),
                "max_images": (1, None),
                "examples": (0, 64),
                "batch_size": (1, 4096),
            }
        )


@dataclass(frozen=True)
class SweepConf(Group):
    """sweep: what a sweep (``atlas -m ...``) does beyond running its jobs. Its runs over the
    same images (same data settings, ``extract.samples_per_image`` and seed) get one aligned
    layout (their reduce fits every such run's activations together, as ``reduce.align_with``
    does by hand) and a comparison page at the sweep's root; a run whose settings set
    ``reduce.align_with`` or ``reduce.joint_layers`` itself is left as it is."""

    GROUP: ClassVar[str] = "sweep"
    align: bool = True  # align the layouts of the sweep's runs that share their images
    compare: bool = True  # the sweep's comparison page and each run's diff against the first


# ------------------------------------------------------------------------------ the root
S = TypeVar("S", bound="Settings")


@dataclass(frozen=True)
class Settings:
    """Every setting of a run. ``layer`` is the atlas's layer; ``extract.layers`` adds layers
    sampled at the same positions in the same pass. These frozen values are what stages receive
    (inside a ``StageRun``): plain, picklable, never a config object."""

    model: ModelConf = field(default_factory=ModelConf)
    data: DataConf = field(default_factory=DataConf)
    classes: ClassesConf = field(default_factory=ClassesConf)
    run_dir: str = "runs/demo"  # where the run lives: a local folder or an fsspec URL (s3://...)
    layer: str = II("model.default_layer")  # the atlas's layer (any name of named_modules())
    seed: int = 0  # every random draw of the run (samples, UMAP, icons) derives from it
    stages: tuple[str, ...] = ()  # run only these stages (empty: every stage)
    preset_name: str = "custom"  # the preset's name, recorded in the manifest
    storage_options: dict[str, Any] = field(default_factory=dict)  # fsspec options of run_dir
    # a folder of shared extractions, one per extraction fingerprint: runs (sweep jobs) with the
    # same model, data, extract settings and set of layers read one extraction (null: run_dir)
    extractions: str | None = None
    # scheduled runs: run_dir becomes <run_root>/<date> (date: YYYY-MM-DD, default today UTC),
    # and <run_root>/index.html lists every dated run
    run_root: str | None = None
    date: str | None = None  # scheduled runs: the run's date (YYYY-MM-DD; null: today, UTC)
    keep_runs: int | None = None  # scheduled runs: keep the newest N dated runs (null: all)
    # a run owns its run_dir (<run_dir>/.lease.json: host, pid, heartbeat every lease_s / 4);
    # another run there refuses, naming the owner, until the lease has had no heartbeat for
    # lease_s seconds (its owner died; one on this host that no longer runs is taken over now)
    lease_s: float = 120.0
    # one atlas per layer from one extraction: <run_dir>/<layer>/ each, <run_dir>/index.html
    layers: tuple[str, ...] = ()
    extract: ExtractConf = field(default_factory=ExtractConf)
    reduce: ReduceConf = field(default_factory=ReduceConf)
    grid: GridConf = field(default_factory=GridConf)
    render: RenderConf = field(default_factory=RenderConf)
    exemplars: ExemplarsConf = field(default_factory=ExemplarsConf)
    plausibility: PlausibilityConf = field(default_factory=PlausibilityConf)
    compose: ComposeConf = field(default_factory=ComposeConf)
    patches: PatchesConf = field(default_factory=PatchesConf)
    neighbours: NeighboursConf = field(default_factory=NeighboursConf)
    cluster: ClusterConf = field(default_factory=ClusterConf)
    sweep: SweepConf = field(default_factory=SweepConf)

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(self.layers))
        object.__setattr__(self, "stages", tuple(self.stages))
        if self.keep_runs is not None:
            in_range("keep_runs", self.keep_runs, 1, None)
        in_range("lease_s", self.lease_s, 1, None)
        missing = [x for x in self.reduce.joint_layers if x not in self.extracted_layers]
        if missing:
            raise ConfigError(
                "reduce.joint_layers",
                missing,
                choices=self.extracted_layers,
                fix="joint layers must be extracted: add them to extract.layers.",
            )

    def with_(self: S, **changes: Any) -> S:
        """A copy with some fields replaced."""
        return replace(self, **changes)

    def group(self, name: str) -> Group:
        """The settings group ``name`` (``render``, ``model``, ...)."""
        value = getattr(self, name)
        if not isinstance(value, Group):
            raise KeyError(f"{name} is not a settings group")
        return value

    @property
    def location(self) -> RunLocation:
        """Where this run lives (its root and storage options): every path of the run."""
        return RunLocation.of(self.run_dir, self.storage_options)

    @property
    def extracted_layers(self) -> tuple[str, ...]:
        """Every layer extracted: ``layer`` first, then ``extract.layers``."""
        return tuple(dict.fromkeys((self.layer, *self.extract.layers)))

    @property
    def joint_layers(self) -> tuple[str, ...]:
        """The layers one layout is fitted on (``layer`` first), or ``()`` for ``layer`` alone."""
        if not self.reduce.joint_layers:
            return ()
        return tuple(dict.fromkeys((self.layer, *self.reduce.joint_layers)))

    @property
    def is_local(self) -> bool:
        return self.location.is_local


def groups() -> dict[str, type[Group]]:
    """Every settings group of the config tree, by name (model, data, ..., cluster)."""
    out: dict[str, type[Group]] = {}
    defaults = Settings.__dataclass_fields__
    for name, f in defaults.items():
        factory = f.default_factory
        if callable(factory) and isinstance(cls := factory, type) and issubclass(cls, Group):
            out[name] = cls
    return out
