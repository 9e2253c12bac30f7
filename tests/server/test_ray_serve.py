"""The same app under Ray Serve, on a local Ray bound to 127.0.0.1: the page with its headers,
the token and Host checks, and a compute call answered by a replica's own backend."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from atlas_core.errors import ConfigError
from tests.server.conftest import request

serve = pytest.importorskip("ray.serve")
ROOT = Path(__file__).resolve().parents[2]
TOKEN = "serve-test-token-0123456789"


def test_build_names_what_it_takes(run_dir) -> None:
    from pipelines.server.ray_serve import build

    with pytest.raises(ConfigError, match="run_dir"):
        build({})
    with pytest.raises(ConfigError, match="workers"):  # the valid choices are listed
        build({"run_dir": str(run_dir), "colour": "red"})
    assert build({"run_dir": str(run_dir), "workers": 1, "backend": "a:b"}) is not None


@pytest.mark.ray
def test_the_app_under_ray_serve(local_ray, run_dir) -> None:
    from pipelines.server.ray_serve import AtlasServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    env = {
        "ATLAS_SERVE_TOKEN": TOKEN,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    app = AtlasServer.options(
        num_replicas=1,
        autoscaling_config=None,
        ray_actor_options={"num_cpus": 0, "num_gpus": 0, "runtime_env": {"env_vars": env}},
    ).bind(str(run_dir), "tests.server.fake_backend:make", workers=1)
    try:
        serve.run(app, name="atlas", route_prefix="/")
        auth = {"Authorization": f"Bearer {TOKEN}"}
        page = request(port, "GET", "/viewer/index.html", auth)
        assert page.status == 200 and page.body == (run_dir / "viewer/index.html").read_bytes()
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        assert page.headers["x-content-type-options"] == "nosniff"
        assert request(port, "GET", "/viewer/index.html").status == 401
        assert request(port, "GET", "/manifest.json", auth).status == 404
        assert request(port, "GET", "/viewer/index.html", auth, host="evil.example").status == 400
        r = request(port, "GET", "/api/neighbours?row=3&k=4", auth)
        assert r.status == 200 and len(json.loads(r.body)["rows"]) == 4
    finally:
        serve.shutdown()
