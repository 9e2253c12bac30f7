"""A composed config turned into settings, checked: the one place a ``DictConfig`` becomes the
frozen :class:`~pipelines.core.settings.Settings` (the ``atlas`` entry point, ``atlas plan``,
and a sweep's second phase, which composes each job's overrides again, use it).

No ``_target_`` is ever instantiated: a config that carries one outside the (empty) allowlist is
refused; a key the schema does not declare is refused, naming it.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ValidationError

from atlas_core.errors import ConfigError
from pipelines.commands import guard
from pipelines.core.settings import Settings

TARGET_ALLOWLIST: frozenset[str] = frozenset()


def check_targets(node: Any, path: str = "") -> None:
    """Refuse any ``_target_`` not in the allowlist (this project instantiates nothing)."""
    guard.check_targets(node, path, TARGET_ALLOWLIST)


def to_settings(cfg: DictConfig) -> tuple[Settings, dict[str, Any]]:
    """(Settings, the resolved config as plain values) from a composed config.

    Every value is validated by the group schemas (pipelines/settings.py); a key the schema does
    not declare (``+foo=bar``) and any ``_target_`` are refused here, naming the key.
    """
    from pipelines.settings import REGISTRY, schema

    raw = OmegaConf.to_container(cfg, resolve=False)  # a literal secret, before it is resolved
    guard.check_secrets(raw.get("storage_options") if isinstance(raw, dict) else None)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    if not isinstance(resolved, dict):
        raise ConfigError(
            "config", type(resolved).__name__, fix="the root config must be a mapping."
        )
    resolved.pop("hydra", None)
    check_targets(resolved)
    check_keys(resolved, OmegaConf.to_container(OmegaConf.structured(Settings)))
    try:
        settings = OmegaConf.to_object(OmegaConf.merge(schema(Settings), resolved))
    except ValidationError as exc:  # a value of the wrong type, e.g. steps=abc
        raise ConfigError(
            str(exc.full_key),
            exc.value if hasattr(exc, "value") else None,
            fix=str(exc.msg).splitlines()[0],
        ) from None
    if not isinstance(settings, Settings):
        raise ConfigError("config", type(settings).__name__, fix="the root must be the settings.")
    return REGISTRY.check(settings), {str(k): v for k, v in resolved.items()}


def check_keys(node: Any, schema: Any, path: str = "") -> None:
    """Refuse keys the schema does not declare (Hydra's ``+key=value`` adds them silently)."""
    if not isinstance(node, dict) or not isinstance(schema, dict):
        return
    for k, v in node.items():
        where = f"{path}.{k}".lstrip(".")
        if k not in schema:
            raise ConfigError(
                where,
                v,
                choices=sorted(schema),
                fix=f"{where} is not a setting; remove it or use one of the keys listed.",
            )
        if schema[k] is not None and not str(k).endswith(("options", "extras")):
            check_keys(v, schema[k], where)


def compose_job(overrides: list[str]) -> tuple[Settings, dict[str, Any]]:
    """(Settings, resolved config) of ``overrides`` composed again inside the running ``atlas``
    (Hydra initialized): what a sweep job's settings were, from its overrides alone."""
    from hydra import compose

    return to_settings(compose(config_name="config", overrides=list(overrides)))
