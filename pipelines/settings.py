"""The config, parsed once into frozen dataclasses. Workers only ever see these plain values.

Every check a user can fail is here, so a bad setting stops the run before any work starts.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

import atlas_core
from atlas_core.data.decode import DecodePolicy
from atlas_core.errors import ConfigError
from atlas_core.featvis.render import RenderSettings
from atlas_core.models.registry import ModelSpec, check_model_name
from atlas_core.reduce.backends import BACKENDS, KNN_MODES
from atlas_core.reduce.params import UmapParams

STAGES = ("extract", "reduce", "grid", "render", "compose")
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class DataSettings:
    source: str = "photos"
    n_images: int = 2048
    scales: tuple[float, ...] = (1.0, 0.6, 0.35, 0.2)
    path: str | None = None
    extensions: tuple[str, ...] = (".jpg", ".jpeg", ".png")
    limit: int | None = None
    labels: str = "none"
    decode: DecodePolicy = field(default_factory=DecodePolicy)


@dataclass(frozen=True)
class ExtractSettings:
    layers: tuple[str, ...] = ("blocks.4",)
    samples_per_image: int = 1
    sampling: str = "random"
    edge: int = 1
    batch_size: int = 64
    chunk_images: int = 256
    chunks_per_shard: int = 1
    topk: int = 5
    attr_classes: int = 0
    jpeg_decoder: str = "auto"
    zarr_shard_chunks: int = 1
    amp: str = "bf16"
    act_dtype: str = "float16"
    fault: str = ""  # fault injection for reliability tests only
    device: str = "auto"
    num_cpus: float = 1.0
    num_gpus: float = 0.0


@dataclass(frozen=True)
class ReduceSettings:
    backend: str = "auto"
    umap: UmapParams = field(default_factory=UmapParams)
    quality_sample: int = 5000
    fit_rows: int = 100_000
    pca_dim: int | None = None
    joint_layers: tuple[str, ...] = ()
    # other runs (run_dir, layer) on the same images whose activations join this run's in one fit
    align_with: tuple[tuple[str, str], ...] = ()
    knn: str = "auto"
    place_neighbors: int = 10
    fit_cpus: float = 1.0
    fit_gpus: float = 0.0
    transform_cpus: float = 1.0
    transform_gpus: float = 0.0
    device: str = "auto"
    fault: str = ""  # fault injection for reliability tests only: <kind>:fit|search:<arg>


@dataclass(frozen=True)
class GridSettings:
    sizes: tuple[int, ...] = (20,)
    min_count: int = 5
    top: int = 5


@dataclass(frozen=True)
class RenderStageSettings:
    icon: RenderSettings = field(default_factory=RenderSettings)
    batch_size: int = 64  # 0: auto (from the device's free memory)
    cache: bool = True
    cache_dir: str | None = None
    actors: int = 1
    num_cpus_per_actor: float = 1.0
    num_gpus_per_actor: float = 0.0
    device: str = "auto"


@dataclass(frozen=True)
class ClusterSettings:
    address: str | None = None
    num_cpus: int | None = None
    namespace: str = "atlas"


@dataclass(frozen=True)
class Settings:
    run_dir: str
    layer: str
    seed: int
    stages: tuple[str, ...]
    model: ModelSpec
    data: DataSettings
    extract: ExtractSettings
    reduce: ReduceSettings
    grid: GridSettings
    render: RenderStageSettings
    cluster: ClusterSettings
    preset: str = "custom"
    storage_options: dict[str, Any] = field(default_factory=dict)

    @property
    def store_url(self) -> str:
        return self.run_dir.rstrip("/") + "/atlas.zarr"

    @property
    def is_local(self) -> bool:
        return "://" not in self.run_dir or self.run_dir.startswith("file://")

    def stage_config(self, stage: str) -> dict[str, Any]:
        """The settings one stage's output depends on (its fingerprint input)."""
        # the library version too: a release that changes what a stage computes redoes it
        base = {"seed": self.seed, "layer": self.layer, "atlas_core": atlas_core.__version__}
        parts = {
            "extract": {
                "model": asdict(self.model),
                "data": asdict(self.data),
                "extract": {k: v for k, v in asdict(self.extract).items() if k != "fault"},
            },
            "reduce": {"reduce": {k: v for k, v in asdict(self.reduce).items() if k != "fault"}},
            "grid": {"grid": asdict(self.grid)},
            "render": {"icon": asdict(self.render.icon)},
            "compose": {},
        }
        return {**base, **parts[stage]}


def _tuple(v: Any) -> tuple[Any, ...]:
    if v is None:
        return ()
    if isinstance(v, (list, tuple)):
        return tuple(v)
    return (v,)


def _choice(what: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(what, value, choices=choices, fix=f"set {what}=<one of the choices>.")
    return str(value)


def parse(cfg: dict[str, Any]) -> Settings:
    """Turn the resolved config (a plain dict) into :class:`Settings`, validating each value."""
    m, d, e, r = cfg["model"], cfg["data"], cfg["extract"], cfg["reduce"]
    g, rd, cl = cfg["grid"], cfg["render"], cfg.get("cluster") or {}
    check_model_name(str(m["name"]))
    stages = _tuple(cfg.get("stages")) or STAGES
    for s in stages:
        _choice("stages", s, STAGES)
    layer = str(cfg["layer"])
    layers = _tuple(e.get("layers")) or (layer,)
    if layer not in layers:
        layers = (layer, *layers)
    data = DataSettings(
        source=_choice(
            "data.source", d.get("source", "photos"), ("photos", "folder", "filelist", "tar")
        ),
        n_images=int(d.get("n_images", 2048)),
        scales=tuple(float(s) for s in d.get("scales", ())),
        path=d.get("path"),
        extensions=tuple(d.get("extensions", DataSettings.extensions)),
        limit=d.get("limit"),
        labels=_choice("data.labels", d.get("labels", "none"), ("none", "folder")),
        decode=DecodePolicy(
            max_pixels=int(d.get("max_pixels", 64_000_000)), min_side=int(d.get("min_side", 8))
        ),
    )
    if data.source in ("folder", "filelist", "tar") and not data.path:
        raise ConfigError("data.path", None, fix=f"data={data.source} needs data.path=<path>.")
    if data.source == "folder" and not os.path.isdir(os.path.expanduser(str(data.path))):
        raise ConfigError("data.path", data.path, fix="point data.path at an existing directory.")
    extract = ExtractSettings(
        layers=layers,
        samples_per_image=int(e.get("samples_per_image", 1)),
        sampling=_choice("extract.sampling", e.get("sampling", "random"), ("random", "centre")),
        edge=int(e.get("edge", 1)),
        batch_size=int(e.get("batch_size", 64)),
        chunk_images=int(e.get("chunk_images", 256)),
        chunks_per_shard=int(e.get("chunks_per_shard", 1)),
        topk=int(e.get("topk", 5)),
        attr_classes=int(e.get("attr_classes", 0)),
        zarr_shard_chunks=max(1, int(e.get("zarr_shard_chunks", 1) or 1)),
        amp=_choice("extract.amp", e.get("amp", "bf16"), ("bf16", "fp16", "off")),
        jpeg_decoder=_choice(
            "extract.jpeg_decoder", e.get("jpeg_decoder", "auto"), ("auto", "torchvision", "pil")
        ),
        fault=str(e.get("fault", "")),
        act_dtype=_choice(
            "extract.act_dtype", e.get("act_dtype", "float16"), ("float16", "float32")
        ),
        device=_choice("extract.device", e.get("device", "auto"), DEVICES),
        num_cpus=float(e.get("num_cpus", 1)),
        num_gpus=float(e.get("num_gpus", 0)),
    )
    if extract.samples_per_image < 1 or extract.batch_size < 1 or extract.chunk_images < 1:
        raise ConfigError(
            "extract",
            dict(e),
            fix="samples_per_image, batch_size and chunk_images must be positive.",
        )
    try:
        umap = UmapParams(
            n_neighbors=int(r["n_neighbors"]),
            min_dist=float(r["min_dist"]),
            metric=str(r["metric"]),
            n_epochs=r.get("n_epochs"),
            init=str(r.get("init", "spectral")),
            seed=r.get("seed", cfg.get("seed", 0)),
            extras=dict(r.get("extras") or {}),
        )
    except ValueError as exc:
        raise ConfigError("reduce", dict(r), fix=str(exc)) from exc
    joint = tuple(str(x) for x in _tuple(r.get("joint_layers")))
    missing = [x for x in joint if x not in layers]
    if missing:
        raise ConfigError(
            "reduce.joint_layers",
            missing,
            choices=layers,
            fix="joint layers must be extracted: add them to extract.layers.",
        )
    align = []
    for item in r.get("align_with") or ():
        if not isinstance(item, dict) or not item.get("run_dir") or not item.get("layer"):
            raise ConfigError(
                "reduce.align_with",
                item,
                fix="each entry is {run_dir: <another run on the same images>, "
                "layer: <its layer>}.",
            )
        align.append((str(item["run_dir"]), str(item["layer"])))
    reduce = ReduceSettings(
        backend=_choice("reduce.backend", r.get("backend", "auto"), BACKENDS),
        align_with=tuple(align),
        knn=_choice("reduce.knn", r.get("knn", "auto"), KNN_MODES),
        place_neighbors=max(1, int(r.get("place_neighbors", 10))),
        fit_cpus=float(r.get("fit_cpus", 1)),
        fit_gpus=float(r.get("fit_gpus", 0)),
        fault=str(r.get("fault", "")),
        transform_gpus=float(r.get("transform_gpus", 0)),
        device=_choice("reduce.device", r.get("device", "auto"), DEVICES),
        umap=umap,
        quality_sample=int(r.get("quality_sample", 5000)),
        fit_rows=int(r.get("fit_rows", 100_000)),
        pca_dim=int(r["pca_dim"]) if r.get("pca_dim") else None,
        joint_layers=tuple(dict.fromkeys((layer, *joint))) if joint else (),
        transform_cpus=float(r.get("transform_cpus", 1)),
    )
    grid = GridSettings(
        sizes=tuple(int(s) for s in _tuple(g.get("sizes")) or (20,)),
        min_count=int(g.get("min_count", 5)),
        top=int(g.get("top", 5)),
    )
    if any(s < 1 for s in grid.sizes):
        raise ConfigError("grid.sizes", list(grid.sizes), fix="grid sizes must be positive.")
    icon = RenderSettings(
        icon_px=int(rd["icon_px"]),
        steps=int(rd["steps"]),
        attempts=int(rd["attempts"]),
        lr=float(rd.get("lr", 0.05)),
        cos_power=float(rd["cos_power"]),
        whiten=bool(rd["whiten"]),
        param=_choice("render.param", rd.get("param", "fft"), ("fft", "pixel")),
        amp=bool(rd.get("amp", True)),
        alpha=bool(rd.get("alpha", False)),
    )
    render = RenderStageSettings(
        icon=icon,
        batch_size=0 if rd.get("batch_size", 64) == "auto" else int(rd.get("batch_size", 64)),
        cache=bool(rd.get("cache", True)),
        cache_dir=rd.get("cache_dir"),
        actors=int(rd.get("actors", 1)),
        num_cpus_per_actor=float(rd.get("num_cpus_per_actor", 1)),
        num_gpus_per_actor=float(rd.get("num_gpus_per_actor", 0)),
        device=_choice("render.device", rd.get("device", "auto"), DEVICES),
    )
    cluster = ClusterSettings(
        address=cl.get("address"),
        num_cpus=cl.get("num_cpus"),
        namespace=str(cl.get("namespace", "atlas")),
    )
    return Settings(
        run_dir=str(cfg["run_dir"]),
        layer=layer,
        seed=int(cfg.get("seed", 0)),
        stages=stages,
        model=ModelSpec(name=str(m["name"]), weights=m.get("weights")),
        data=data,
        extract=extract,
        reduce=reduce,
        grid=grid,
        render=render,
        cluster=cluster,
        preset=str(cfg.get("preset_name", "custom")),
        storage_options=dict(cfg.get("storage_options") or {}),
    )
