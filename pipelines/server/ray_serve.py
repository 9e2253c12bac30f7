"""The same app under Ray Serve: one deployment whose replicas each build the backend once (the
model on the replica's GPU, kept warm) and serve :func:`~pipelines.server.app.create_app` through
``serve.ingress``; replicas scale with the requests in flight.

This is the one module of ``pipelines/server`` that imports Ray (every other Ray call of the
project lives in ``pipelines/core/ray_ops.py``; Serve's deployment decorators have to sit on the
class they deploy). A RayService runs it from ``serveConfigV2`` (``infra/k8s/rayservice.yaml``)::

    import_path: pipelines.server.ray_serve:build
    args: {run_dir: /data/runs/demo, backend: MODULE:FACTORY}

Under Serve the replica does not bind a socket: Ray's HTTP proxy does (its own keep-alive and
request timeouts: ``http_options``), and the app's guards (host, origin, token, body limits,
security headers) and compute queue hold as they do locally. A replica serves requests from
anywhere, so it needs the token (``ATLAS_SERVE_TOKEN``, from a Secret) and the names clients
reach it by (``ATLAS_SERVE_ALLOWED_HOSTS``).
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from ray import serve

from atlas_core.errors import ConfigError
from pipelines.server.app import create_app
from pipelines.server.backend import load_backend
from pipelines.server.settings import ServerSettings

# Defaults for a replica on one GPU; serveConfigV2 overrides them per deployment.
AUTOSCALING = {
    "min_replicas": 1,  # one warm model: the first request does not wait for a GPU node
    "max_replicas": 4,
    "target_ongoing_requests": 4,
    "upscale_delay_s": 10,
    "downscale_delay_s": 600,
}
_SETTABLE = {f.name for f in fields(ServerSettings)} - {"run_dir", "host", "port", "token"}


@serve.deployment(
    ray_actor_options={"num_cpus": 4, "num_gpus": 1},
    autoscaling_config=AUTOSCALING,
    max_ongoing_requests=64,  # page files are many and quick; compute is bounded inside
    max_queued_requests=256,  # beyond: Serve answers 503
    health_check_period_s=10,
)
@serve.ingress()
class AtlasServer:
    """One replica: the settings (token and host names from the environment), the backend
    built once, and the app over them."""

    def __init__(self, run_dir: str, backend: str | None = None, **limits: Any) -> None:
        self.settings = ServerSettings.from_env(run_dir, host="0.0.0.0", port=0, **limits)
        self.backend = load_backend(backend, self.settings.run_dir)  # the model, once

    def __serve_build_asgi_app__(self) -> Any:
        return create_app(self.settings, self.backend)


def build(args: dict[str, Any]) -> serve.Application:
    """The application serveConfigV2 names (``pipelines.server.ray_serve:build``). ``args``:
    ``run_dir`` (required, as the replicas see it), ``backend`` (``MODULE:FACTORY``), and any
    limit of :class:`ServerSettings` (``workers``, ``queue``, ``upload_bytes``, ...)."""
    args = dict(args)
    run_dir, backend = args.pop("run_dir", None), args.pop("backend", None)
    if not run_dir:
        raise ConfigError("args.run_dir", run_dir, fix="name the run directory in serveConfigV2")
    unknown = sorted(set(args) - _SETTABLE)
    if unknown:
        raise ConfigError("args", unknown, choices=sorted(_SETTABLE))
    return AtlasServer.bind(run_dir, backend, **args)  # type: ignore[attr-defined]
