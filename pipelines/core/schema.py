"""The typed configuration's building blocks: the group base class, range and choice checks, the
groups that are not stages (model, data, classes, cluster), resources, and the root's base.

A stage's own settings group is declared in its module (``pipelines/stages/<name>.py``) and the
root ``Settings`` class is assembled from the stage registry (``pipelines/settings.py``); this
module knows neither. Every value is a frozen dataclass that checks its ranges and choices on
construction, so a bad value stops the run before any work with the key, the value, the valid
range or choices, and the fix (exit code 2).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from omegaconf import II

from atlas_core.data.decode import DecodePolicy
from atlas_core.data.sources import IMAGE_EXTENSIONS, PHOTO_SCALES
from atlas_core.errors import ConfigError
from atlas_core.models.registry import ModelSpec, check_model_name
from atlas_core.reduce.params import METRICS

DEVICES = ("auto", "cpu", "cuda")
SOURCES = ("photos", "folder", "filelist", "tar")
# field metadata of a setting that never changes what a stage writes (batch sizes, caches): it
# is left out of the stage's fingerprint
NOT_FINGERPRINTED = {"fingerprint": False}
_UNREACHABLE_DATA: ContextVar[bool] = ContextVar("unreachable_data", default=False)


@contextmanager
def data_not_here() -> Iterator[None]:
    """Compose settings whose data only the cluster can reach (``atlas plan --images``): the
    data path is not required to exist on this machine."""
    token = _UNREACHABLE_DATA.set(True)
    try:
        yield
    finally:
        _UNREACHABLE_DATA.reset(token)


S = TypeVar("S", bound="SettingsBase")


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


def choice(key: str, value: Any, choices: Iterable[Any]) -> None:
    choices = tuple(choices)
    if value not in choices:
        raise ConfigError(key, value, choices=choices, fix=f"set {key}=<one of the choices>.")


def in_range(key: str, value: Any, lo: float | None = None, hi: float | None = None) -> None:
    """``lo <= value <= hi`` (either bound may be open); bools are not numbers here."""
    bad = isinstance(value, bool) or not isinstance(value, (int, float))
    bad = bad or (lo is not None and value < lo) or (hi is not None and value > hi)
    if bad:
        span = f"[{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]"
        raise ConfigError(key, value, valid=span, fix=f"set {key} to a number in {span}.")


class Group:
    """Base of every group schema: GROUP names the group in messages; lists become tuples."""

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
                in_range(self._key(name), v, lo, hi)


def identity(value: Any) -> dict[str, Any]:
    """A group value's fingerprint input: every field but those marked ``NOT_FINGERPRINTED``."""
    skip = {f.name for f in fields(value) if f.metadata.get("fingerprint") is False}
    return {k: v for k, v in asdict(value).items() if k not in skip}


# ------------------------------------------------------------------------------ groups
@dataclass(frozen=True)
class ModelConf(Group):
    """model: a registry name (or ``timm:<arch>``, ``torchvision:<arch>``) and its weights."""

    GROUP: ClassVar[str] = "model"
    name: str = "efficientnet_lite0"
    weights: str | None = None
    default_layer: str = field(default="blocks.4", metadata=NOT_FINGERPRINTED)  # via ``layer``

    def __post_init__(self) -> None:
        with setting("model"):
            check_model_name(self.name)

    @property
    def spec(self) -> ModelSpec:
        return ModelSpec(name=self.name, weights=self.weights)


@dataclass(frozen=True)
class DataConf(Group):
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
        choice("data.source", self.source, SOURCES)
        choice("data.labels", self.labels, ("none", "folder"))
        self._ranges({"n_images": (1, None), "limit": (1, None), "max_pixels": (1, None)})
        self._ranges({"min_side": (1, None)})
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

    @property
    def decode(self) -> DecodePolicy:
        return DecodePolicy(max_pixels=self.max_pixels, min_side=self.min_side)


@dataclass(frozen=True)
class ClassesConf(Group):
    """classes: the run's class views. A class activation atlas per class of ``atlases`` and a
    two-class comparison per pair of ``pairs``: each a view of this run's extraction with its own
    layout, grid, icons, exemplars and viewer (``<run_dir>/views/<view>/``); they need
    attribution (``extract.attr_classes``)."""

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
    parallel: int = field(default=2, metadata=NOT_FINGERPRINTED)  # views built at once
    only: bool = False  # build only the class views, not the atlas of every activation

    def __post_init__(self) -> None:
        object.__setattr__(self, "atlases", tuple(str(c) for c in self.atlases))
        pairs = tuple(tuple(str(c) for c in p) for p in self.pairs)
        object.__setattr__(self, "pairs", pairs)
        for p in pairs:
            if len(p) != 2 or p[0] == p[1]:
                raise ConfigError("classes.pairs", list(p), fix="each pair is [a, b], two classes.")
        choice("classes.method", self.method, ("umap", "tsne"))
        choice("classes.metric", self.metric, METRICS)
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


@dataclass(frozen=True)
class Resources:
    """Ray resources of one stage's tasks (or of each actor), and the device they compute on
    (``auto`` is resolved by the task itself, on its node)."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    device: str = "auto"

    def check(self, key: str) -> None:
        in_range(f"{key}.num_cpus", self.num_cpus, 0.0, None)
        in_range(f"{key}.num_gpus", self.num_gpus, 0.0, None)
        choice(f"{key}.device", self.device, DEVICES)


@dataclass(frozen=True)
class ActorResources(Resources):
    """Each actor's resources, and how many actors: a number, or ``auto``: as many as the
    cluster's nodes can hold at once (by GPUs when actors take GPUs, else by CPUs), never more
    than there are work items."""

    actors: Any = 1

    def check(self, key: str) -> None:
        super().check(key)
        if self.actors != "auto":
            in_range(f"{key}.actors", self.actors, 1, None)


@dataclass(frozen=True)
class ClusterBase(Group):
    """cluster: where Ray runs. Every stage's resources are fields of the derived ``ClusterConf``
    (one entry per name a stage declares: ``cluster.extract``, ``cluster.render``, ...)."""

    GROUP: ClassVar[str] = "cluster"
    address: str | None = None  # null: a local Ray on 127.0.0.1; auto or host:port: join one
    num_cpus: int | None = None  # local Ray only
    namespace: str = "atlas"
    # how long a stage waits for the autoscaler to add a node its tasks fit (0: refuse at once,
    # as a local Ray does: it has no autoscaler)
    wait_s: float = 0.0

    def __post_init__(self) -> None:
        self._ranges({"num_cpus": (1, None), "wait_s": (0, None)})
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Resources):
                value.check(f"cluster.{f.name}")

    if TYPE_CHECKING:  # the per-stage entries are fields of the derived class

        def __getattr__(self, name: str) -> Resources | Any: ...


# ------------------------------------------------------------------------------ the root
@dataclass(frozen=True)
class SettingsBase:
    """The settings every run has; each stage's group is a field of the derived ``Settings``
    (``pipelines/settings.py``). ``layer`` is the atlas's layer; ``extract.layers`` adds layers
    sampled at the same positions in the same pass."""

    model: ModelConf = field(default_factory=ModelConf)
    data: DataConf = field(default_factory=DataConf)
    classes: ClassesConf = field(default_factory=ClassesConf)
    run_dir: str = "runs/demo"
    layer: str = II("model.default_layer")
    seed: int = 0
    stages: tuple[str, ...] = ()  # empty: every stage
    preset_name: str = "custom"
    storage_options: dict[str, Any] = field(default_factory=dict)  # fsspec options of run_dir
    # a folder of shared extractions, one per extraction fingerprint: runs (sweep jobs) with the
    # same model, data, extract settings and set of layers read one extraction (null: run_dir)
    extractions: str | None = None
    # scheduled runs: run_dir becomes <run_root>/<date> (date: YYYY-MM-DD, default today UTC),
    # and <run_root>/index.html lists every dated run
    run_root: str | None = None
    date: str | None = None
    keep_runs: int | None = None  # scheduled runs: keep the newest N dated runs (null: all)
    # one atlas per layer from one extraction: <run_dir>/<layer>/ each, <run_dir>/index.html
    layers: tuple[str, ...] = ()

    if TYPE_CHECKING:  # the stage groups and ``cluster`` are fields of the derived class

        def __getattr__(self, name: str) -> Any: ...

    def with_(self: S, **changes: Any) -> S:
        """A copy with some fields replaced (any group of the derived class too)."""
        return replace(self, **changes)

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


def store_url(run_dir: str) -> str:
    """The run store of a run directory (local path or fsspec URL)."""
    return run_dir.rstrip("/") + "/atlas.zarr"
