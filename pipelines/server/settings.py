"""The server's settings: one frozen value, checked once, read by the app, the uvicorn runner and
the Ray Serve deployment alike.

Defaults are the limits of a server on one machine for one person; every limit is a field here
and nowhere else. Binding beyond loopback needs a token (``--token`` or ``ATLAS_SERVE_TOKEN``).
"""

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass
from typing import Any

from atlas_core.errors import ConfigError

TOKEN_ENV = "ATLAS_SERVE_TOKEN"
HOSTS_ENV = "ATLAS_SERVE_ALLOWED_HOSTS"
MIN_TOKEN_CHARS = 16
_WILDCARDS = ("0.0.0.0", "::", "")
_MIB = 1 << 20


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_name(header: str) -> str:
    """The name part of a Host header (``name``, ``name:port``, ``[v6]:port``), lower case,
    without a trailing dot; ``""`` when it cannot be read."""
    h = header.strip().lower()
    if h.startswith("["):
        end = h.find("]")
        return h[: end + 1] if end > 0 else ""
    if h.count(":") > 1:  # a bare IPv6 address is not a valid Host header
        return ""
    return h.split(":", 1)[0].rstrip(".")


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


@dataclass(frozen=True)
class ServerSettings:
    """Everything a server over one run needs to know.

    run_dir: the run directory (local); host, port: where the local runner binds (port 0: any).
    token: required on every request when set; required to bind beyond loopback.
    allowed_hosts: extra names accepted in the Host header (``*``: any, only with a token).
    Limits (defaults): upload_bytes 20 MiB, upload_pixels 40 M (the decoder's
    ``DecodePolicy.max_pixels``, its bomb limit: today it refuses above half of that), json_bytes
    1 MiB, body_timeout_s 30 (whole body), head_timeout_s 10 (request line and
    headers), keep_alive_s 5, header_bytes 16 KiB, max_connections 128 (connections and tasks:
    more get 503), workers 2 (compute threads), queue 8 (compute requests waiting: more get
    503 with Retry-After), job_timeout_s 60 (504 after), neighbours_k 1000.
    """

    run_dir: str
    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None
    allowed_hosts: tuple[str, ...] = ()
    upload_bytes: int = 20 * _MIB
    upload_pixels: int = 40_000_000
    json_bytes: int = 1 * _MIB
    body_timeout_s: float = 30.0
    head_timeout_s: float = 10.0
    keep_alive_s: int = 5
    header_bytes: int = 16 * 1024
    max_connections: int = 128
    workers: int = 2
    queue: int = 8
    job_timeout_s: float = 60.0
    neighbours_k: int = 1000

    def __post_init__(self) -> None:
        object.__setattr__(self, "run_dir", os.path.realpath(self.run_dir))
        object.__setattr__(self, "allowed_hosts", tuple(h.lower() for h in self.allowed_hosts))
        if not os.path.isfile(os.path.join(self.run_dir, "viewer", "index.html")):
            raise ConfigError(
                "run_dir",
                self.run_dir,
                valid="a run directory with viewer/index.html",
                fix=f"build the run first (atlas run_dir={self.run_dir}), or point at a run "
                "directory (a folder holding viewer/index.html).",
            )
        self._check_token()
        for name in ("upload_bytes", "upload_pixels", "json_bytes", "header_bytes", "workers"):
            if getattr(self, name) < 1:
                raise ConfigError(name, getattr(self, name), valid=">= 1")
        for name in ("body_timeout_s", "head_timeout_s", "job_timeout_s", "keep_alive_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(name, getattr(self, name), valid="> 0 seconds")
        if self.queue < 0 or self.max_connections < 4 or not 0 <= self.port <= 65535:
            raise ConfigError(
                "queue, max_connections, port",
                (self.queue, self.max_connections, self.port),
                valid="queue >= 0, max_connections >= 4, 0 <= port <= 65535",
            )

    def _check_token(self) -> None:
        if self.token is not None and len(self.token) < MIN_TOKEN_CHARS:
            raise ConfigError(
                "token",
                "<hidden>",
                valid=f"at least {MIN_TOKEN_CHARS} characters",
                fix="use a random one: export ATLAS_SERVE_TOKEN=$(openssl rand -hex 32)",
            )
        if self.token is None and not is_loopback(self.host):
            raise ConfigError(
                "host",
                self.host,
                valid="a loopback address (127.0.0.1, ::1, localhost) unless a token is set",
                fix=f"set a token ({TOKEN_ENV}=$(openssl rand -hex 32), or --token) to serve "
                "beyond this machine, or bind 127.0.0.1 and reach it through an SSH tunnel.",
            )
        if "*" in self.allowed_hosts and self.token is None:
            raise ConfigError(
                "allowed_hosts", "*", fix="a server that answers any Host needs a token"
            )

    @property
    def host_names(self) -> frozenset[str]:
        """The names accepted in the Host header: the bound name (with ``localhost`` for a
        loopback bind; the machine's names for a wildcard bind) and ``allowed_hosts``."""
        names = {_bracket(self.host.lower())} if self.host not in _WILDCARDS else set()
        if is_loopback(self.host) or self.host in _WILDCARDS:
            names |= {"localhost", "127.0.0.1", "[::1]"}
        if self.host in _WILDCARDS:
            names |= {socket.gethostname().lower(), socket.getfqdn().lower()}
        return frozenset(names | set(self.allowed_hosts))

    def accepts_host(self, header: str) -> bool:
        if "*" in self.allowed_hosts:
            return True
        name = host_name(header)
        return bool(name) and name in self.host_names

    @classmethod
    def from_env(
        cls, run_dir: str, *, extra_hosts: tuple[str, ...] = (), **overrides: Any
    ) -> ServerSettings:
        """Settings whose token and extra host names come from the environment
        (``ATLAS_SERVE_TOKEN``; ``ATLAS_SERVE_ALLOWED_HOSTS``, comma-separated) unless
        ``overrides`` set them; ``extra_hosts`` are added to the names."""
        env = os.environ.get(HOSTS_ENV, "")
        hosts = tuple(h.strip() for h in env.split(",") if h.strip()) + tuple(extra_hosts)
        kw: dict[str, Any] = {"token": os.environ.get(TOKEN_ENV) or None, "allowed_hosts": hosts}
        return cls(run_dir, **{**kw, **overrides})
