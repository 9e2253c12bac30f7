"""Typed configuration: one frozen dataclass per config group, registered with Hydra's ConfigStore.

The defaults are written here, once; ``conf/*.yaml`` only select and override. Hydra checks keys
and types when it composes (an unknown key fails naming the key and the group); each dataclass
checks ranges and choices in ``__post_init__``, so a bad value stops the run before any work with
the key, the value, the valid range or choices, and the fix (exit code 2).

These same objects are what the stages and workers receive: plain, frozen, picklable values. Ray
resources (CPUs, GPUs, actors, devices) live under ``cluster``, one entry per stage; the stage
groups hold algorithm settings only.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from omegaconf import II

import atlas_core
from atlas_core.data.decode import DecodePolicy
from atlas_core.data.sources import IMAGE_EXTENSIONS, PHOTO_SCALES
from atlas_core.errors import ConfigError
from atlas_core.featvis.render import RenderSettings
from atlas_core.models.registry import ModelSpec, check_model_name
from atlas_core.reduce.backends import BACKENDS, KNN_MODES
from atlas_core.reduce.params import INITS, METRICS, UmapParams

STAGES = ("extract", "reduce", "grid", "render", "exemplars", "compose", "classes", "patches")
DEVICES = ("auto", "cpu", "cuda")
SOURCES = ("photos", "folder", "filelist", "tar")


# ------------------------------------------------------------------------------ checks
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


def _choice(key: str, value: Any, choices: Iterable[Any]) -> None:
    choices = tuple(choices)
    if value not in choices:
        raise ConfigError(key, value, choices=choices, fix=f"set {key}=<one of the choices>.")


def _range(key: str, value: Any, lo: float | None = None, hi: float | None = None) -> None:
    """``lo <= value <= hi`` (either bound may be open); bools are not numbers here."""
    bad = isinstance(value, bool) or not isinstance(value, (int, float))
    bad = bad or (lo is not None and value < lo) or (hi is not None and value > hi)
    if bad:
        span = f"[{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]"
        raise ConfigError(key, value, valid=span, fix=f"set {key} to a number in {span}.")


class _Group:
    """Shared by the group schemas: GROUP names the group in messages; lists become tuples."""

    GROUP: ClassVar[str] = ""

    def _key(self, name: str) -> str:
        return f"{self.GROUP}.{name}" if self.GROUP else name

    def _tuples(self) -> None:
        for f in fields(self):  # type: ignore[arg-type]  # every subclass is a dataclass
            v = getattr(self, f.name)
            if isinstance(v, list):
                object.__setattr__(self, f.name, tuple(v))

    def _ranges(self, spec: dict[str, tuple[float | None, float | None]]) -> None:
        for name, (lo, hi) in spec.items():
            v = getattr(self, name)
            if v is not None:
                _range(self._key(name), v, lo, hi)


# ------------------------------------------------------------------------------ groups
@dataclass(frozen=True)
class ModelConf(_Group):
    """model: a registry name (or ``timm:<arch>``, ``torchvision:<arch>``) and its weights."""

    GROUP: ClassVar[str] = "model"
    name: str = "efficientnet_lite0"
    weights: str | None = None
    default_layer: str = "blocks.4"

    def __post_init__(self) -> None:
        with setting("model"):
            check_model_name(self.name)

    @property
    def spec(self) -> ModelSpec:
        return ModelSpec(name=self.name, weights=self.weights)


@dataclass(frozen=True)
class DataConf(_Group):
    """data: where the images come from and the decoder's limits."""

    GROUP: ClassVar[str] = "data"
    source: str = "photos"
    n_images: int = 2048  # photos only
    scales: tuple[float, ...] = PHOTO_SCALES  # photos only: crop side / short side of the photo
    path: str | None = None
    extensions: tuple[str, ...] = IMAGE_EXTENSIONS
    limit: int | None = None
    labels: str = "none"  # none | folder (ImageNet synset folders -> images/label)
    max_pixels: int = 64_000_000  # larger images are refused as decompression bombs
    min_side: int = 8

    def __post_init__(self) -> None:
        self._tuples()
        _choice("data.source", self.source, SOURCES)
        _choice("data.labels", self.labels, ("none", "folder"))
        self._ranges({"n_images": (1, None), "limit": (1, None), "max_pixels": (1, None)})
        self._ranges({"min_side": (1, None)})
        if not self.scales or any(not 0 < s <= 1 for s in self.scales):
            raise ConfigError(
                "data.scales", list(self.scales), valid="(0, 1]", fix="give crop scales in (0, 1]."
            )
        if self.source != "photos" and not self.path:
            raise ConfigError("data.path", None, fix=f"data={self.source} needs data.path=<path>.")
        if self.source == "folder" and not os.path.isdir(os.path.expanduser(str(self.path))):
            raise ConfigError(
                "data.path", self.path, fix="point data.path at an existing directory."
            )

    @property
    def decode(self) -> DecodePolicy:
        return DecodePolicy(max_pixels=self.max_pixels, min_side=self.min_side)


@dataclass(frozen=True)
class ExtractConf(_Group):
    """extract: sampling, attribution, chunking and dtypes of the activations."""

    GROUP: ClassVar[str] = "extract"
    layers: tuple[str, ...] = ()  # extra layers sampled at the same positions as ``layer``
    samples_per_image: int = 1
    sampling: str = "random"  # random | centre
    edge: int = 1  # cells at the border that random positions avoid
    batch_size: int = 64
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
        _choice("extract.sampling", self.sampling, ("random", "centre"))
        _choice("extract.act_dtype", self.act_dtype, ("float16", "float32"))
        _choice("extract.amp", self.amp, ("bf16", "fp16", "off"))
        _choice("extract.jpeg_decoder", self.jpeg_decoder, ("auto", "torchvision", "pil"))
        self._ranges(
            {
                "samples_per_image": (1, 4096),
                "edge": (0, None),
                "batch_size": (1, None),
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
class AlignConf:
    """One other run whose activations join this run's layout fit (``reduce.align_with``)."""

    run_dir: str = "???"
    layer: str = "???"


@dataclass(frozen=True)
class ReduceConf(_Group):
    """reduce: UMAP and how it scales (landmark fit, exact search, placement)."""

    GROUP: ClassVar[str] = "reduce"
    backend: str = "auto"  # auto: cuML where the fit runs has it and a GPU, else umap-learn
    n_neighbors: int = 50
    min_dist: float = 0.05
    metric: str = "cosine"
    n_epochs: int | None = None
    init: str = "spectral"  # spectral | pca | random (pca: reproducible on disconnected graphs)
    seed: int = II("seed")
    extras: dict[str, Any] = field(default_factory=dict)  # {umap-learn: {...}, cuml: {...}}
    knn: str = "auto"  # kNN graph of a umap-learn fit: auto | exact | nndescent
    fit_rows: int = 100_000  # above: fit a seeded sample (the landmarks), place the rest
    pca_dim: int | None = None
    place_neighbors: int = 10
    quality_sample: int = 5000
    joint_layers: tuple[str, ...] = ()  # one joint fit over several extracted layers ...
    align_with: tuple[AlignConf, ...] = ()  # ... or over other runs on the same images
    # which samples the layout places: all, or a class view (set by the classes stage):
    # class:<c> (a class activation atlas), compare:<a>:<b> (x from attribution, y 1-D layout)
    rows: str = "all"
    view_top_n: int = 2000  # a class view keeps its top-n samples by attribution to the class
    method: str = "umap"  # umap | tsne (class views only: small, sparse sets)

    def __post_init__(self) -> None:
        self._tuples()
        _choice("reduce.backend", self.backend, BACKENDS)
        _choice("reduce.metric", self.metric, METRICS)
        _choice("reduce.init", self.init, INITS)
        _choice("reduce.knn", self.knn, KNN_MODES)
        _choice("reduce.method", self.method, ("umap", "tsne"))
        if not re.fullmatch(r"all|class:\d+|compare:\d+:\d+", self.rows):
            raise ConfigError(
                "reduce.rows", self.rows, valid="all, class:<c>, compare:<a>:<b>",
                fix="leave reduce.rows=all; class views set it themselves.",
            )  # fmt: skip
        if self.method == "tsne" and self.rows == "all":
            raise ConfigError("reduce.method", "tsne", fix="t-SNE is for class views "
                              "(classes.method=tsne); the whole atlas uses UMAP.")  # fmt: skip
        self._ranges(
            {
                "n_neighbors": (2, 10_000),
                "min_dist": (0.0, 1.0),
                "n_epochs": (1, None),
                "fit_rows": (2, None),
                "pca_dim": (1, None),
                "place_neighbors": (1, 1000),
                "quality_sample": (10, None),
                "view_top_n": (0, None),
            }
        )
        unknown = set(self.extras) - {"umap-learn", "cuml"}
        if unknown:
            raise ConfigError(
                "reduce.extras", sorted(unknown), choices=("umap-learn", "cuml"),
                fix="key the extras by backend: {umap-learn: {...}, cuml: {...}}.",
            )  # fmt: skip
        for item in self.align_with:
            if "???" in (item.run_dir, item.layer):
                raise ConfigError(
                    "reduce.align_with", item,
                    fix="each entry is {run_dir: <another run on the same images>, "
                    "layer: <its layer>}.",
                )  # fmt: skip

    @property
    def umap(self) -> UmapParams:
        extras = {k: dict(v) for k, v in self.extras.items()}
        r = self
        return UmapParams(r.n_neighbors, r.min_dist, r.metric, r.n_epochs, r.init, r.seed, extras)


@dataclass(frozen=True)
class GridConf(_Group):
    """grid: the grid sizes (zoom levels of one layout) and which cells are kept."""

    GROUP: ClassVar[str] = "grid"
    sizes: tuple[int, ...] = (20,)
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
            _range("grid.sizes", s, 1, 4096)
        self._ranges({"min_count": (1, None), "top": (1, 1000)})
        object.__setattr__(self, "heatmap", tuple(str(c) for c in self.heatmap))


@dataclass(frozen=True)
class RenderConf(_Group):
    """render: lucid-faithful icons (FFT + decorrelated colour, atlas transforms, dot x cos^n)."""

    GROUP: ClassVar[str] = "render"
    icon_px: int = 80
    steps: int = 1024
    attempts: int = 4  # best of N per icon
    lr: float = 0.05
    cos_power: float = 4.0
    whiten: bool = True
    param: str = "fft"  # fft | pixel
    amp: bool = True  # bfloat16 autocast on CUDA
    alpha: bool = False  # optimize transparency too; icons flattened on white
    batch_size: Any = 64  # icons per batch (never changes the icons), or auto (GPU free memory)
    cache: bool = True  # content-addressed icon cache: never render the same icon twice
    cache_dir: str | None = None  # default <run_dir>/icon-cache; share one across runs

    def __post_init__(self) -> None:
        _choice("render.param", self.param, ("fft", "pixel"))
        self._ranges(
            {
                "icon_px": (8, 1024),
                "steps": (1, None),
                "attempts": (1, 64),
                "lr": (1e-6, 10.0),
                "cos_power": (0.0, 16.0),
            }
        )
        if self.batch_size != "auto":
            _range("render.batch_size", self.batch_size, 1, None)

    @property
    def icon(self) -> RenderSettings:
        return RenderSettings(
            icon_px=self.icon_px,
            steps=self.steps,
            attempts=self.attempts,
            lr=self.lr,
            cos_power=self.cos_power,
            whiten=self.whiten,
            param=self.param,
            amp=self.amp,
            alpha=self.alpha,
        )


BACKGROUNDS = {"white": 255, "grey": 128, "black": 0}


@dataclass(frozen=True)
class ExemplarsConf(_Group):
    """exemplars: for each kept cell of each level, the k samples whose activation is closest
    (cosine) to the cell's mean, as patches of their source image (the layer's receptive field
    around the sampled position) and a thumbnail of each source image."""

    GROUP: ClassVar[str] = "exemplars"
    k: int = 8
    patch_px: int = 64  # side of each stored patch
    thumb_px: int = 256  # longer side of each source image's thumbnail
    field: str = "effective"  # theoretical | effective: which receptive field a patch covers
    field_mass: float = 0.9  # the effective field holds this share of the gradient's mass
    rows_per_task: int = 256  # patches per task (and per storage chunk of the small arrays)

    def __post_init__(self) -> None:
        _choice("exemplars.field", self.field, ("theoretical", "effective"))
        self._ranges({
            "k": (1, 64), "patch_px": (8, 512), "thumb_px": (32, 2048),
            "field_mass": (0.05, 1.0), "rows_per_task": (1, None),
        })  # fmt: skip


@dataclass(frozen=True)
class ClassesConf(_Group):
    """classes: class activation atlases and two-class comparisons, each a view of this run
    (its own layout, grid, icons, exemplars and viewer under ``<run_dir>/classes/<view>``),
    reading this run's extraction; they need attribution (``extract.attr_classes``)."""

    GROUP: ClassVar[str] = "classes"
    atlases: tuple[str, ...] = ()  # class names or indices: one class activation atlas each
    pairs: tuple[Any, ...] = ()  # two-class comparisons [[a, b], ...] (names or indices)
    top_n: int = 2000  # plus the samples whose top attribution class is the class
    method: str = "umap"  # umap | tsne (the article found t-SNE better for these sparse sets)
    n_neighbors: int = 20
    min_dist: float = 0.01
    metric: str = "cosine"
    grid: int = 8
    min_count: int = 4
    parallel: int = 2  # views built at once (their Ray work shares the cluster)

    def __post_init__(self) -> None:
        object.__setattr__(self, "atlases", tuple(str(c) for c in self.atlases))
        pairs = tuple(tuple(str(c) for c in p) for p in self.pairs)
        object.__setattr__(self, "pairs", pairs)
        for p in pairs:
            if len(p) != 2 or p[0] == p[1]:
                raise ConfigError("classes.pairs", list(p), fix="each pair is [a, b], two classes.")
        _choice("classes.method", self.method, ("umap", "tsne"))
        _choice("classes.metric", self.metric, METRICS)
        self._ranges({"top_n": (0, None), "n_neighbors": (2, 1000), "min_dist": (0.0, 1.0),
                      "grid": (1, 256), "min_count": (1, None), "parallel": (1, 64)})  # fmt: skip


@dataclass(frozen=True)
class PatchesConf(_Group):
    """patches: failure-mode patches. For each pair [a, b] of ``classes.pairs``, the icons of
    the comparison most attributed to b are pasted into images the model classifies as a, at
    each size and corner, against a random-noise patch of the same size and place."""

    GROUP: ClassVar[str] = "patches"
    icons: int = 3  # patches per pair
    sizes: tuple[int, ...] = (48, 64, 80)  # patch side, in model-input pixels
    corners: tuple[str, ...] = ("tl", "br")  # tl | tr | bl | br | centre
    margin: int = 8
    max_images: int = 256  # images of class a per pair (in manifest order)
    images: str | None = None  # a folder to draw class-a images from (null: the run's own)
    examples: int = 4  # before/after images on the report page
    batch_size: int = 32

    def __post_init__(self) -> None:
        self._tuples()
        for c in self.corners:
            _choice("patches.corners", c, ("tl", "tr", "bl", "br", "centre"))
        for v in self.sizes:
            _range("patches.sizes", v, 4, 4096)
        self._ranges({"icons": (1, 64), "margin": (0, 1000), "max_images": (1, None),
                      "examples": (0, 64), "batch_size": (1, 4096)})  # fmt: skip


TILE_FORMATS = {"jpeg": "jpg", "png": "png", "webp": "webp"}


@dataclass(frozen=True)
class ComposeConf(_Group):
    """compose: the tiles of every level, the overview images and the viewer."""

    GROUP: ClassVar[str] = "compose"
    background: str = "white"  # canvas behind the icons and in empty cells: white | grey | black
    density: bool = True  # icon side x min(1, sqrt(count / mean count)), as the article draws
    tile_px: int = 256
    tile_format: str = "jpeg"  # jpeg | png | webp
    overview_px: int = 4096  # atlas.png and atlas-<G>.png are at most this wide
    sheet_columns: int = 16  # icons per row of the viewer's icon sheets

    def __post_init__(self) -> None:
        _choice("compose.background", self.background, BACKGROUNDS)
        _choice("compose.tile_format", self.tile_format, TILE_FORMATS)
        _choice("compose.tile_px", self.tile_px, (128, 256, 512))
        self._ranges({"overview_px": (64, 32768), "sheet_columns": (1, 256)})


@dataclass(frozen=True)
class Resources:
    """Ray resources of one stage's tasks (or of each actor), and the device they compute on
    (``auto`` is resolved by the task itself, on its node)."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    device: str = "auto"


@dataclass(frozen=True)
class ActorResources(Resources):
    """Each actor's resources, and how many actors: a number, or ``auto``: as many as the
    cluster's nodes can hold at once (by GPUs when actors take GPUs, else by CPUs), never more
    than there are batches."""

    actors: Any = 1


@dataclass(frozen=True)
class ClusterConf(_Group):
    """cluster: where Ray runs and every stage's resources, in one place."""

    GROUP: ClassVar[str] = "cluster"
    address: str | None = None  # null: a local Ray on 127.0.0.1; auto or host:port: join one
    num_cpus: int | None = None  # local Ray only
    namespace: str = "atlas"
    extract: Resources = field(default_factory=Resources)
    reduce_fit: Resources = field(default_factory=Resources)  # one task: the landmark fit
    reduce_search: Resources = field(default_factory=Resources)  # one task per shard
    grid: Resources = field(default_factory=Resources)
    render: ActorResources = field(default_factory=ActorResources)
    exemplars: Resources = field(default_factory=Resources)
    compose: Resources = field(default_factory=Resources)

    def __post_init__(self) -> None:
        self._ranges({"num_cpus": (1, None)})
        for name in ("extract", "reduce_fit", "reduce_search", "grid", "render", "exemplars",
                     "compose"):  # fmt: skip
            r = getattr(self, name)
            _range(f"cluster.{name}.num_cpus", r.num_cpus, 0.0, None)
            _range(f"cluster.{name}.num_gpus", r.num_gpus, 0.0, None)
            _choice(f"cluster.{name}.device", r.device, DEVICES)
        if self.render.actors != "auto":
            _range("cluster.render.actors", self.render.actors, 1, None)


# ------------------------------------------------------------------------------ the root
@dataclass(frozen=True)
class Settings:
    """The whole run. ``layer`` is the atlas's layer; ``extract.layers`` adds layers sampled at
    the same positions in the same pass."""

    model: ModelConf = field(default_factory=ModelConf)
    data: DataConf = field(default_factory=DataConf)
    extract: ExtractConf = field(default_factory=ExtractConf)
    reduce: ReduceConf = field(default_factory=ReduceConf)
    grid: GridConf = field(default_factory=GridConf)
    render: RenderConf = field(default_factory=RenderConf)
    exemplars: ExemplarsConf = field(default_factory=ExemplarsConf)
    compose: ComposeConf = field(default_factory=ComposeConf)
    classes: ClassesConf = field(default_factory=ClassesConf)
    patches: PatchesConf = field(default_factory=PatchesConf)
    cluster: ClusterConf = field(default_factory=ClusterConf)
    run_dir: str = "runs/demo"
    layer: str = II("model.default_layer")
    seed: int = 0
    stages: tuple[str, ...] = STAGES
    preset_name: str = "custom"
    storage_options: dict[str, Any] = field(default_factory=dict)  # fsspec options of run_dir
    # a folder of shared extractions, one per extraction fingerprint: runs (sweep jobs) with the
    # same model, data, extract settings and set of layers read one extraction (null: run_dir)
    extractions: str | None = None
    # scheduled runs: run_dir becomes <run_root>/<date> (date: YYYY-MM-DD, default today UTC),
    # and <run_root>/index.html lists every dated run
    run_root: str | None = None
    date: str | None = None
    # one atlas per layer from one extraction: <run_dir>/<layer>/ each, <run_dir>/index.html
    layers: tuple[str, ...] = ()
    # a view of another run (class views): its store reads that run's extraction
    extraction_from: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "stages", tuple(self.stages))
        object.__setattr__(self, "layers", tuple(self.layers))
        for s in self.stages:
            _choice("stages", s, STAGES)
        missing = [x for x in self.reduce.joint_layers if x not in self.extracted_layers]
        if missing:
            raise ConfigError(
                "reduce.joint_layers", missing, choices=self.extracted_layers,
                fix="joint layers must be extracted: add them to extract.layers.",
            )  # fmt: skip

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
    def store_url(self) -> str:
        return store_url(self.run_dir)

    @property
    def is_local(self) -> bool:
        return "://" not in self.run_dir or self.run_dir.startswith("file://")

    def stage_config(self, stage: str) -> dict[str, Any]:
        """The settings one stage's output depends on (its fingerprint input): never resources,
        batch sizes or worker counts, which do not change what a stage writes."""
        from dataclasses import asdict

        base = {"seed": self.seed, "layer": self.layer, "atlas_core": atlas_core.__version__}
        if stage == "extract":  # the set of layers, not which one is the atlas's
            base.pop("layer")
        render = asdict(self.render)
        for k in ("batch_size", "cache", "cache_dir"):
            render.pop(k)
        extract = asdict(self.extract)
        extract.pop("batch_size")
        exemplars = asdict(self.exemplars)
        exemplars.pop("rows_per_task")
        parts: dict[str, dict[str, Any]] = {
            "extract": {
                "model": asdict(self.model.spec),
                "data": asdict(self.data),
                "extract": {**extract, "layers": sorted(self.extracted_layers)},
            },
            "reduce": {"reduce": asdict(self.reduce), "joint": list(self.joint_layers)},
            "grid": {"grid": asdict(self.grid)},
            "render": {"render": render},
            "exemplars": {"exemplars": exemplars},
            "compose": {"compose": asdict(self.compose)},
            "classes": {"classes": asdict(self.classes)},
            "patches": {"patches": {**asdict(self.patches), "batch_size": None},
                        "pairs": [list(p) for p in self.classes.pairs]},
        }
        return {**base, **parts[stage]}


def store_url(run_dir: str) -> str:
    """The run store of a run directory (local path or fsspec URL)."""
    return run_dir.rstrip("/") + "/atlas.zarr"


def schema(cls: type) -> Any:
    """A writable OmegaConf node typed by the frozen dataclass ``cls``: OmegaConf marks frozen
    dataclasses read-only, which would stop Hydra merging the YAML files into them. The objects
    that ``OmegaConf.to_object`` makes from it are frozen again."""
    from omegaconf import OmegaConf

    node = OmegaConf.structured(cls)

    def writable(n: Any) -> None:
        n._set_flag("readonly", None)
        for key in list(n.keys()) if hasattr(n, "keys") else []:
            child = n._get_node(key)
            if hasattr(child, "_set_flag"):
                writable(child)

    writable(node)
    return node


def register() -> None:
    """Register every group schema with Hydra's ConfigStore (``conf/`` files extend them)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="atlas_schema", node=schema(Settings))
    for name, node in (
        ("model", ModelConf),
        ("data", DataConf),
        ("extract", ExtractConf),
        ("reduce", ReduceConf),
        ("grid", GridConf),
        ("render", RenderConf),
        ("exemplars", ExemplarsConf),
        ("compose", ComposeConf),
        ("classes", ClassesConf),
        ("patches", PatchesConf),
        ("cluster", ClusterConf),
    ):
        cs.store(group=name, name=f"{name}_schema", node=schema(node))
