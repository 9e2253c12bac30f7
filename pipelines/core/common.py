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

_MODELS: dict[tuple[ModelSpec, str, str], LoadedModel] = {}


def resolve_device(name: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is usable by this process, else ``cpu``; ``cuda`` where
    CUDA does not work fails, naming the node and why (the NVIDIA driver it saw)."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        hw = hardware()
        raise ConfigError(
            "device",
            name,
            choices=("auto", "cpu"),
            fix=f"this task asked for a GPU and node {hw['node'] or hw['host']} (host "
            f"{hw['host']}) has no usable CUDA: {hw['cuda_error'] or 'no device visible'}; "
            f"NVIDIA driver {hw['driver'] or 'not found'}, torch {hw['torch']} built for CUDA "
            f"{hw['torch_cuda']}. Fix the node's driver or image, or set "
            "cluster.<stage>.device=cpu knowingly.",
        )
    return name


def hardware() -> dict[str, Any]:
    """What this process's node offers: torch and its CUDA, the NVIDIA driver, the device,
    cuML, nvJPEG (a preflight task records one per node type in the manifest)."""
    import importlib.util
    import socket

    from pipelines.core.ray_ops import where_am_i

    error = ""
    try:
        torch.cuda.init()
    except Exception as exc:  # the reason CUDA does not work here
        error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    ok = torch.cuda.is_available()
    return {
        "node": where_am_i()["node"],
        "host": socket.gethostname(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda": ok,
        "cuda_error": "" if ok else error,
        "device": torch.cuda.get_device_name(0) if ok else "cpu",
        "driver": _driver(),
        "cuml": importlib.util.find_spec("cuml") is not None,
        "nvjpeg": ok and hasattr(__import__("torchvision.io").io, "decode_jpeg"),
    }


def _driver() -> str:
    """The NVIDIA kernel driver's version, or '' (read from /proc, then nvidia-smi)."""
    import subprocess

    try:
        with open("/proc/driver/nvidia/version") as f:
            return re.findall(r"\d+\.\d+(?:\.\d+)?", f.read())[0]
    except (OSError, IndexError):
        pass
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        return out.stdout.strip().splitlines()[0] if out.stdout.strip() else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def cached_model(spec: ModelSpec, device: str, role: str) -> LoadedModel:
    """Load a model once per process and per ``role`` (``extract``, ``render``, ``judge``,
    ``card``, ...): Ray reuses worker processes across tasks, and each consumer moves and
    configures its model (device, memory format, hooks), so no two share one object."""
    key = (spec, device, role)
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


def redact_overrides(overrides: list[str]) -> list[str]:
    """Command-line overrides (``key=value``) with the values of secrets replaced (the keys
    :func:`redact` replaces: under ``storage_options``, or naming a secret)."""
    out = []
    for line in overrides:
        key, eq, _ = str(line).partition("=")
        name = key.lstrip("+~")
        last = name.rsplit(".", 1)[-1]
        under = name.startswith("storage_options.") and last not in _PLAIN
        out.append(f"{key}={REDACTED}" if eq and (under or _SECRET.search(last)) else str(line))
    return out


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
