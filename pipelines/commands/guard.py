"""What a composed config may not hold, checked before Hydra acts on it.

Hydra instantiates parts of its own config (``hydra.callbacks``, ``hydra.launcher``,
``hydra.sweeper``) and hands ``hydra.job_logging`` / ``hydra.hydra_logging`` to
``logging.config.dictConfig`` (which imports any ``class`` or ``()`` it names) before this
project's code sees the config. :func:`install` makes Hydra's config loader check every config it
composes (the main one and each sweep job's), with every source applied (``--config-dir``,
``--config-path``, ``+hydra/...=...``, ``key=value``), before any of that happens:

- no ``_target_`` anywhere except :data:`HYDRA_TARGETS` (our sweep summary, Hydra's basic
  launcher and sweeper); logging configs name only ``logging.*`` classes and no ``()`` factory;
- no literal credential under ``storage_options`` (a key naming a secret whose value is not an
  interpolation such as ``${oc.env:VAR}``): a secret on the command line ends up in shell history,
  process lists and Hydra's records;
- every sweep job's folder stays under the sweep's folder (:func:`job_dirname`, which also keeps
  ``storage_options.*`` and the other excluded keys out of folder names).

A refused config raises :class:`ConfigError`; under the ``atlas`` command (:data:`EXIT_ON_ERROR`)
the message is logged and the process exits 2, as every other configuration mistake does.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from atlas_core.errors import ConfigError
from atlas_core.store.location import RunLocation
from pipelines.core.common import _SECRET

log = logging.getLogger("atlas")

HYDRA_TARGETS: frozenset[str] = frozenset(
    {
        "pipelines.commands.sweep.SweepSummary",
        "hydra._internal.core_plugins.basic_launcher.BasicLauncher",
        "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
    }
)
_LOGGING = ("job_logging", "hydra_logging")
_INTERPOLATION = re.compile(r"^\$\{[^}]+\}$")
EXIT_ON_ERROR = [False]  # set by the ``atlas`` command: a refused config exits 2


def check_targets(node: Any, path: str = "", allow: frozenset[str] = frozenset()) -> None:
    """Refuse any ``_target_`` not in ``allow`` (this project instantiates nothing itself)."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "_target_" and v not in allow:
                raise ConfigError(
                    f"{path}._target_".lstrip("."),
                    v,
                    choices=sorted(allow),
                    fix="this project instantiates no classes from config; remove it.",
                )
            check_targets(v, f"{path}.{k}", allow)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            check_targets(v, f"{path}[{i}]", allow)


def _check_logging(node: Any, path: str) -> None:
    """A logging config names only the standard library's ``logging`` classes."""
    if isinstance(node, dict):
        for k, v in node.items():
            where = f"{path}.{k}"
            if k == "()" or (k == "class" and not str(v).startswith("logging.")):
                raise ConfigError(
                    where,
                    v,
                    fix="a logging config may name only logging.* classes (no '()' factory); "
                    "remove it.",
                )
            _check_logging(v, where)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            _check_logging(v, f"{path}[{i}]")


def check_secrets(options: Any, path: str = "storage_options") -> None:
    """Refuse a literal credential under ``storage_options``: a key naming a secret (key,
    secret, token, password, ...) whose value is a literal rather than an interpolation."""
    if isinstance(options, dict):
        for k, v in options.items():
            where = f"{path}.{k}"
            if isinstance(v, (dict, list)):
                check_secrets(v, where)
            elif _SECRET.search(str(k)) and not _not_a_secret(v):
                raise ConfigError(
                    where,
                    "***",
                    fix=f"never give a credential literally: it ends up in shell history, "
                    f"process lists and Hydra's records. Put it in an environment variable and "
                    f"refer to it ('+{where}=${{oc.env:MY_SECRET}}'), or leave it out and let "
                    f"the storage library find it (its environment variables, credentials file, "
                    f"or the machine's workload identity / instance role).",
                )
    elif isinstance(options, list):
        for i, v in enumerate(options):
            check_secrets(v, f"{path}[{i}]")


# values of secret-named keys that are no secret: gcsfs's ways to find credentials
_MODES = frozenset({"anon", "google_default", "cache", "cloud", "browser"})


def _not_a_secret(value: Any) -> bool:
    """None, a flag, an interpolation (``${oc.env:VAR}``), a credential mode, or the path of a
    credentials file (the file holds the secret, not the command line)."""
    if value is None or isinstance(value, bool) or value == "":
        return True
    if not isinstance(value, str):
        return False
    text = value.strip()
    return bool(_INTERPOLATION.match(text)) or text in _MODES or os.path.isfile(text)


def check_composed(raw: dict[str, Any]) -> None:
    """Every check of an unresolved composed config (with or without its ``hydra`` node)."""
    node = raw.get("hydra")
    hydra: dict[str, Any] = node if isinstance(node, dict) else {}
    check_targets({k: v for k, v in raw.items() if k != "hydra"})
    check_targets(hydra, "hydra", HYDRA_TARGETS)
    for name in _LOGGING:
        _check_logging(hydra.get(name), f"hydra.{name}")
    check_secrets(raw.get("storage_options"))


# ------------------------------------------------------------------ sweep job folders
def _excluded(key: str, exclude: list[str]) -> bool:
    return key.startswith("hydra.") or any(key == e or key.startswith(f"{e}.") for e in exclude)


MAX_JOB_DIR = 200  # bytes of a job folder's name (file systems allow 255)


def job_dir_part(override: str) -> str:
    """One override as part of a folder name: ``%`` and ``/`` percent-escaped, so a path value
    (``model.weights=ckpts/step-1000.pt``) names one folder, not nested ones, and no two
    overrides share a name."""
    return override.replace("%", "%25").replace("/", "%2F")


def job_dirname(overrides: Any, exclude: Any) -> str:
    """A sweep job's folder name: its overrides, sorted and joined by ``,`` (as Hydra's
    ``override_dirname``), leaving out ``exclude`` and every key under one of them
    (``storage_options`` leaves out ``storage_options.password``), each as one name part
    (:func:`job_dir_part`); over ``MAX_JOB_DIR`` bytes it is cut and ends with a hash of the
    whole. A value with a ``..`` path part is refused (it names a folder outside the sweep's
    wherever it is used as a path). Registered as the resolver ``atlas_job_dir``."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    lines = [str(o) for o in (overrides or [])]
    keep = []
    for override in OverridesParser.create().parse_overrides(lines):
        if not _excluded(override.key_or_group, [str(e) for e in (exclude or [])]):
            keep.append(str(override.input_line))
    check_job_dir(",".join(sorted(keep)))
    name = ",".join(job_dir_part(o) for o in sorted(keep))
    if len(name.encode()) > MAX_JOB_DIR:
        digest = hashlib.sha256(name.encode()).hexdigest()[:16]
        head = name.encode()[: MAX_JOB_DIR - 17].decode("utf-8", "ignore")
        name = f"{head}~{digest}"
    return name


def check_job_dir(name: str, what: str = "sweep overrides") -> None:
    """``name`` is a path under the sweep's folder (no ``..`` part): else ConfigError."""
    if any(part == ".." for part in name.split("/")):
        raise ConfigError(
            what,
            name,
            fix="a sweep job's folder is named by its overrides, and this one would leave the "
            "sweep's folder ('..'); give values without '..' path parts, or set run_dir=... "
            "for such a job.",
        )


def under(root: str, path: str, what: str = "run_dir") -> str:
    """``path`` resolved under ``root`` (via :class:`RunLocation`), or ConfigError."""
    base = root.rstrip("/")
    rel = path[len(base) :].lstrip("/") if path.startswith(base + "/") else None
    try:
        if rel is None:
            raise ValueError(path)
        return RunLocation.of(base).child(rel).root
    except ValueError:
        raise ConfigError(
            what, path, fix=f"every folder a sweep derives must stay under {root}."
        ) from None


def _master_overrides(cfg: DictConfig) -> None:
    """A multirun's overrides, each swept value on its own: none may name a folder outside the
    sweep's (checked before the first job starts)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    hc = cfg.hydra
    exclude = [str(e) for e in hc.job.config.override_dirname.exclude_keys]
    for override in OverridesParser.create().parse_overrides([str(o) for o in hc.overrides.task]):
        if _excluded(override.key_or_group, exclude):
            continue
        try:
            values = (
                list(override.sweep_string_iterator())
                if override.is_sweep_override()
                else [override.get_value_element_as_str()]
            )
        except Exception:  # a sweep Hydra expands against the config (glob): the line whole
            values = [str(override.input_line).split("=", 1)[-1]]
        for v in values:
            check_job_dir(f"{override.get_key_element()}={v}", override.key_or_group)


# ------------------------------------------------------------------ Hydra's loader, guarded
def _refuse(exc: ConfigError) -> None:
    if EXIT_ON_ERROR[0]:
        log.error("%s", exc)
        raise SystemExit(2)
    raise exc


def install() -> None:
    """Check every config Hydra's loader composes (:func:`check_composed`), and each sweep
    job's folder, before Hydra instantiates, configures logging or creates folders. Also
    registers the ``atlas_job_dir`` resolver (conf/config.yaml names sweep job folders with
    it). Idempotent."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra.types import RunMode

    OmegaConf.register_new_resolver(
        "atlas_job_dir",
        lambda overrides, exclude: job_dirname(_plain(overrides), _plain(exclude)),
        replace=True,
    )
    if getattr(ConfigLoaderImpl.load_configuration, "_atlas_guard", False):
        return
    load, load_sweep = ConfigLoaderImpl.load_configuration, ConfigLoaderImpl.load_sweep_config

    def load_configuration(self: Any, *args: Any, **kwargs: Any) -> DictConfig:
        cfg = load(self, *args, **kwargs)
        mode = kwargs.get("run_mode", args[2] if len(args) > 2 else None)
        try:
            check_composed(_raw(cfg))
            if mode == RunMode.MULTIRUN:
                _master_overrides(cfg)
        except ConfigError as exc:
            _refuse(exc)
        return cfg

    def load_sweep_config(self: Any, master_config: DictConfig, sweep_overrides: Any) -> DictConfig:
        cfg = load_sweep(self, master_config, sweep_overrides)
        try:
            check_composed(_raw(cfg))
            hc = cfg.hydra
            job_dirname(
                _plain(hc.overrides.task), _plain(hc.job.config.override_dirname.exclude_keys)
            )
            try:
                subdir = str(hc.sweep.subdir)
            except Exception as exc:  # a resolver's error, wrapped by OmegaConf
                if isinstance(exc.__cause__, ConfigError):
                    raise exc.__cause__ from None
                raise
            check_job_dir(subdir, "hydra.sweep.subdir")
        except ConfigError as exc:
            _refuse(exc)
        return cfg

    load_configuration._atlas_guard = True  # type: ignore[attr-defined]
    ConfigLoaderImpl.load_configuration = load_configuration  # type: ignore[method-assign]
    ConfigLoaderImpl.load_sweep_config = load_sweep_config  # type: ignore[method-assign]


def _raw(cfg: DictConfig) -> dict[str, Any]:
    raw = OmegaConf.to_container(cfg, resolve=False)
    return {str(k): v for k, v in raw.items()} if isinstance(raw, dict) else {}


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value) if isinstance(value, (DictConfig, ListConfig)) else value
