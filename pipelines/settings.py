"""The typed configuration registered with Hydra.

The settings are written out in :mod:`pipelines.core.settings` (every group and the root
``Settings``); this module registers them with Hydra's ConfigStore, so the YAML files under
``conf/`` extend typed schemas and Hydra checks keys and types when it composes (an unknown key
fails naming the key and the group). Each dataclass checks ranges and choices on construction.
"""

from __future__ import annotations

from typing import Any

from pipelines.core.settings import ClusterConf, Settings, groups, setting
from pipelines.stages import REGISTRY

__all__ = ["REGISTRY", "ClusterConf", "Settings", "groups", "register", "schema", "setting"]


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
    """Register the root schema and every group's (``conf/`` files extend them)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="atlas_schema", node=schema(Settings))
    for name, cls in groups().items():
        cs.store(group=name, name=f"{name}_schema", node=schema(cls))
