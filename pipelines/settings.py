"""Typed configuration, assembled from the stage registry and registered with Hydra.

``Settings`` is the root: the fields every run has (``pipelines/core/schema.py``: model, data,
classes, run_dir, seed, ...), one field per stage's settings group, and ``cluster`` with one
resources entry per name a stage declares. Nothing here lists the stages: adding one adds its
group to the config tree. Hydra checks keys and types when it composes (an unknown key fails
naming the key and the group); each dataclass checks ranges and choices on construction. These
same frozen objects are what stages receive (inside a ``StageRun``): plain, picklable values.
"""

from __future__ import annotations

from dataclasses import field, fields, make_dataclass
from typing import TYPE_CHECKING, Any

from pipelines.core.schema import (
    ClassesConf,
    ClusterBase,
    DataConf,
    ModelConf,
    Resources,
    SettingsBase,
    choice,
    in_range,
    setting,
    store_url,
)
from pipelines.stages import REGISTRY

__all__ = ["REGISTRY", "ClusterConf", "Settings", "register", "schema", "setting", "store_url"]


def _default(value: Any) -> Any:
    return field(default_factory=lambda: value)


def _cluster_class() -> type:
    """``cluster``: the base fields plus one resources entry per name a stage declares."""
    entries = [
        (key, type(default), _default(default)) for key, default in REGISTRY.resources().items()
    ]
    cls = make_dataclass("ClusterConf", entries, bases=(ClusterBase,), frozen=True)
    cls.__module__ = __name__  # pickled by reference: pipelines.settings.ClusterConf
    return cls


def _post_init(self: Any) -> None:
    """Lists become tuples; ``stages`` (empty: every stage) is checked against the registry;
    then every stage's cross-group check runs."""
    object.__setattr__(self, "layers", tuple(self.layers))
    object.__setattr__(self, "stages", tuple(self.stages) or REGISTRY.names)
    for s in self.stages:
        choice("stages", s, REGISTRY.names)
    if self.keep_runs is not None:
        in_range("keep_runs", self.keep_runs, 1, None)
    for st in REGISTRY:
        if st.check is not None:
            st.check(self)


def _settings_class(cluster: type) -> type:
    entries: list[tuple[str, Any, Any]] = [
        (group, cls, field(default_factory=cls)) for group, cls in REGISTRY.groups().items()
    ]
    entries.append(("cluster", cluster, field(default_factory=cluster)))
    cls = make_dataclass(
        "Settings",
        entries,
        bases=(SettingsBase,),
        frozen=True,
        namespace={"__post_init__": _post_init},
    )
    cls.__module__ = __name__  # pickled by reference: pipelines.settings.Settings
    return cls


if TYPE_CHECKING:  # the derived classes, as the type checker sees them
    ClusterConf = ClusterBase
    Settings = SettingsBase
else:
    ClusterConf = _cluster_class()
    Settings = _settings_class(ClusterConf)


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


def groups() -> dict[str, type]:
    """Every settings group of the config tree, by name."""
    return {
        "model": ModelConf,
        "data": DataConf,
        "classes": ClassesConf,
        **REGISTRY.groups(),
        "cluster": ClusterConf,
    }


def register() -> None:
    """Register the root schema and every group's (``conf/`` files extend them)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="atlas_schema", node=schema(Settings))
    for name, cls in groups().items():
        cs.store(group=name, name=f"{name}_schema", node=schema(cls))


def resources_of(s: SettingsBase) -> dict[str, Resources]:
    """``cluster.<name>`` of every stage's entries."""
    return {
        f.name: getattr(s.cluster, f.name)
        for f in fields(s.cluster)
        if isinstance(getattr(s.cluster, f.name), Resources)
    }
