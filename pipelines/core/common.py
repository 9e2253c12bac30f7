"""Small helpers shared by the stage modules: device choice, a per-process model cache, file
writes, secrets redaction and the tests' fault hook."""

from __future__ import annotations

import os
import re
import resource
import signal
import sys
import time
from typing import Any

import fsspec
import torch

from atlas_core.errors import ConfigError
from atlas_core.models.registry import LoadedModel, ModelSpec, load_model

_MODELS: dict[tuple[ModelSpec, str], LoadedModel] = {}


def resolve_device(name: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible to this process, else ``cpu``."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "device", name, choices=("auto", "cpu"),
            fix="no CUDA device is visible to this process: give the stage GPUs "
            "(cluster.<stage>.num_gpus) or use auto.",
        )  # fmt: skip
    return name


def cached_model(spec: ModelSpec, device: str) -> LoadedModel:
    """Load a model once per process (Ray reuses worker processes across tasks)."""
    key = (spec, device)
    if key not in _MODELS:
        _MODELS[key] = load_model(spec, device=device)
    return _MODELS[key]


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


class Clock:
    """Seconds per named phase: ``clock.lap("fit")`` records the time since the previous lap."""

    def __init__(self) -> None:
        self.t = time.perf_counter()
        self.laps: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(now - self.t, 2)
        self.t = now


def write_file(url: str, data: bytes, storage_options: dict[str, Any]) -> None:
    """Write ``data`` to a local path or fsspec URL, creating its folder."""
    fs, path = fsspec.core.url_to_fs(url, **storage_options)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(path, "wb") as f:
        f.write(data)


FAULT_ENV = "ATLAS_TEST_FAULT"
REDACTED = "***redacted***"
_SECRET = re.compile(r"(secret|token|password|passwd|credential|private|session|auth|key)", re.I)
_PLAIN = frozenset({"endpoint_url", "region_name", "anon", "use_ssl", "version_aware"})


def redact(value: Any, under: str = "") -> Any:
    """``value`` with secrets replaced: every value under ``storage_options`` except a few
    plain ones (endpoint, region, anon), and any value whose key names a secret (token,
    secret, password, key, ...). For manifests and logs."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            inside = under or ("storage_options" if k == "storage_options" else "")
            secret = bool(_SECRET.search(str(k))) or (inside and k not in _PLAIN)
            out[k] = REDACTED if secret and not isinstance(v, (dict, list)) else redact(v, inside)
        return out
    if isinstance(value, list):
        return [redact(v, under) for v in value]
    return value


def test_fault() -> str:
    """The fault the reliability tests inject: the ``ATLAS_TEST_FAULT`` environment variable of
    the driver (empty in normal runs), handed to tasks and actors as a plain value. It is no
    setting a user sees and never part of a fingerprint."""
    return os.environ.get(FAULT_ENV, "")


def inject_fault(fault: str, where: str, shard: int, context: str = "") -> None:
    """Fault injection for the reliability tests (see :func:`test_fault`); several faults are
    separated by ``;``.

    ``raise:<where>[:<shard>]`` raises (in every shard, or only the one named);
    ``sleep:<where>:<seconds>`` slows every batch down (to stop a node mid-run);
    ``sigkill_once:<where>:<path>`` kills the worker process the first time (it creates ``path``
    first, so the retry survives);
    ``trace:<where>:<dir>`` writes ``<dir>/shard-<shard>-<node>-<pid>``: which node started what;
    ``raise:run:<text>`` fails a whole run whose directory contains ``text`` (one sweep job).
    """
    for one in filter(None, fault.split(";")):
        kind, _, rest = one.partition(":")
        at, _, arg = rest.partition(":")
        if at == where:
            if where == "run" and kind == "raise" and arg in context:
                raise RuntimeError(f"injected fault in run {context}")
            elif where != "run":
                _inject(kind, where, arg, shard)


def _inject(kind: str, where: str, arg: str, shard: int) -> None:
    if kind == "raise" and (not arg or int(arg) == shard):
        raise RuntimeError(f"injected fault at {where} in shard {shard}")
    if kind == "sleep":
        time.sleep(float(arg))
    if kind == "sigkill_once" and not os.path.exists(arg):
        open(arg, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    if kind == "trace":
        from pipelines.core.ray_ops import where_am_i

        node = where_am_i()["node"] or "driver"
        open(os.path.join(arg, f"shard-{shard:06d}-{node}-{os.getpid()}"), "w").close()
