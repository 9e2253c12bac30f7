"""The single Hydra entry point (console script ``atlas``).

    atlas                                   # the demo configuration
    atlas data=folder data.path=/imgs layer=blocks.5 run_dir=/out
    atlas model=googlenet model.weights=/path/googlenet.pth layer=inception4c
    atlas stages=[extract,reduce]
    atlas preset=r3 cluster=ray_cluster     # paper-quality settings on a cluster
    atlas --help                            # config groups and options

Only this module (and :mod:`pipelines.commands.composed`, which it calls) sees a DictConfig; it
turns it into frozen dataclasses at once. No ``_target_`` is ever instantiated: a config that
carries one outside the (empty) allowlist is refused, and
Hydra's own part of the config is checked before Hydra acts on it (:mod:`pipelines.commands.guard`).
"""

from __future__ import annotations

import logging
import sys
from importlib import resources

import hydra
from omegaconf import DictConfig, OmegaConf

from atlas_core.errors import AtlasError, ConfigError
from pipelines.commands import guard
from pipelines.commands.composed import TARGET_ALLOWLIST, check_keys, check_targets, to_settings
from pipelines.settings import register as register_schemas

log = logging.getLogger("atlas")
__all__ = ["CONF_DIR", "TARGET_ALLOWLIST", "check_keys", "check_targets", "main", "to_settings"]

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
        return _sweep_job(
            cfg, list(hc.overrides.task), hc.runtime.output_dir, hc.sweep.dir, hc.job.num
        )
    _single(cfg)
    return None


def _sweep_job(
    cfg: DictConfig, overrides: list[str], out: str, sweep_dir: str, num: int = 0
) -> str:
    from pipelines.commands import sweep, sweep_phases

    try:
        settings, resolved = to_settings(cfg)
    except AtlasError as exc:  # a bad setting fails this job only
        return sweep.job_failed(out, sweep_dir, exc, overrides, {})
    job = sweep.for_job(settings, overrides, out, sweep_dir)
    job, resolved = sweep_phases.first_phase(job, resolved, overrides, num, sweep_dir)
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
