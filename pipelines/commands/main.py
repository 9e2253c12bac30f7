"""The single Hydra entry point (console script ``atlas``).

    atlas                                   # the demo configuration
    atlas data=folder data.path=/imgs layer=blocks.5 run_dir=/out
    atlas model=googlenet model.weights=/path/googlenet.pth layer=inception4c
    atlas stages=[extract,reduce]
    atlas preset=r3 cluster=ray_cluster     # paper-quality settings on a cluster
    atlas --help                            # config groups and options

Only this module sees a DictConfig; it turns it into frozen dataclasses at once. No ``_target_``
is ever instantiated: a config that carries one outside the (empty) allowlist is refused, and
Hydra's own part of the config is checked before Hydra acts on it (:mod:`pipelines.commands.guard`).
"""

from __future__ import annotations

import logging
import sys
from importlib import resources
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ValidationError

from atlas_core.errors import AtlasError, ConfigError
from pipelines.commands import guard
from pipelines.core.settings import Settings
from pipelines.settings import register as register_schemas

log = logging.getLogger("atlas")
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


# The config tree: conf/ at the repository's root, installed as the package atlas_conf (also
# from a wheel, so `atlas` works from any folder); Hydra reads it from there.
CONF_DIR = str(resources.files("atlas_conf"))
register_schemas()
guard.install()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> str | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    if hc.mode == RunMode.MULTIRUN:  # Ray stays up across jobs; `atlas` shuts it down
        return _sweep_job(cfg, list(hc.overrides.task), hc.runtime.output_dir, hc.sweep.dir)
    _single(cfg)
    return None


def _sweep_job(cfg: DictConfig, overrides: list[str], out: str, sweep_dir: str) -> str:
    from pipelines.commands import sweep

    try:
        settings, resolved = to_settings(cfg)
    except AtlasError as exc:  # a bad setting fails this job only
        return sweep.job_failed(out, sweep_dir, exc, overrides, {})
    job = sweep.for_job(settings, overrides, out, sweep_dir)
    return sweep.run_job(job, resolved, overrides, sweep_dir)


def _refused(cfg: DictConfig, exc: Exception) -> None:
    """Settings refused: a scheduled run (``run_root``) records it under its date."""
    from pipelines.commands.sweep import record_refused

    try:
        root, date = cfg.get("run_root"), cfg.get("date")
        node = cfg.get("storage_options")
        opts = OmegaConf.to_container(node, resolve=True) if node is not None else {}
    except Exception:  # the config cannot even be read: nothing to record
        return
    if root and isinstance(opts, dict):
        record_refused(
            str(root), str(date) if date else None, {str(k): v for k, v in opts.items()}, exc
        )


def _single(cfg: DictConfig) -> None:
    from pipelines.commands.sweep import run_one
    from pipelines.core import ray_ops

    try:
        try:
            settings, resolved = to_settings(cfg)
        except AtlasError as exc:  # a scheduled date refused before it started is recorded
            _refused(cfg, exc)
            raise
        settings, manifest = run_one(settings, resolved)
    except (ConfigError, AtlasError) as exc:
        log.error("%s", exc)
        sys.exit(2)
    finally:
        ray_ops.shutdown()
    if "stages" not in manifest:  # layers=[...]: an index of one run per layer
        n = len(manifest["runs"])
        log.info("atlases of %d layers under %s (index.html)", n, settings.run_dir)
        return
    stages = manifest["stages"]
    log.info(
        "atlas written to %s (%.1f s): %s",
        settings.run_dir,
        manifest["seconds_total"],
        {k: v.get("seconds", v.get("status")) for k, v in stages.items()},
    )
