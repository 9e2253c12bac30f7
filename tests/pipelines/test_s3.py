"""The run store on S3 end to end, against moto's server on 127.0.0.1: extraction, a resume after
an injected fault, and every later stage writing back to the bucket."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pytest

from pipelines.run import run
from tests.conftest import debug_settings, make_images

pytestmark = pytest.mark.ray

moto_server = pytest.importorskip("moto.server")
s3fs = pytest.importorskip("s3fs")
log = logging.getLogger(__name__)


@pytest.fixture(scope="module")
def s3(local_ray, tmp_path_factory):  # type: ignore[no-untyped-def]
    import boto3

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    ).create_bucket(Bucket="atlas")
    opts = {
        "key": "test",
        "secret": "test",
        "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"},
    }
    yield opts, tmp_path_factory.mktemp("s3imgs")
    server.stop()


def _settings(images: Path, opts: dict, *extra: str):  # type: ignore[no-untyped-def,type-arg]
    s, resolved = debug_settings(
        "data=folder",
        f"data.path={images}",
        "run_dir=s3://atlas/run1",
        "extract.chunk_images=16",
        *extra,
    )
    return dataclasses.replace(s, storage_options=opts), resolved


def test_a_run_on_s3_resumes_and_finishes(s3, inject) -> None:  # type: ignore[no-untyped-def]
    opts, base = s3
    make_images(base / "imgs", 40, size=70)
    inject("raise:after_write:1")
    s, _ = _settings(base / "imgs", opts)
    with pytest.raises(RuntimeError, match="injected fault"):
        run(s, {})
    inject("")
    s, resolved = _settings(base / "imgs", opts)
    manifest = run(s, resolved)
    ex = manifest["stages"]["extract"]["counts"]
    assert (ex["shards_skipped"], ex["shards_run"]) == (2, 1)  # only the failed shard is redone
    assert ex["images_lost"] == 0 and ex["images_ok"] == 40
    fs = s3fs.S3FileSystem(**opts)
    assert fs.exists("atlas/run1/atlas.png") and fs.exists("atlas/run1/viewer/index.html")
    on_s3 = json.loads(fs.cat("atlas/run1/manifest.json"))
    assert on_s3["stages"]["compose"]["status"] == "done"
    import zarr

    g = zarr.open_group("s3://atlas/run1/atlas.zarr", mode="r", storage_options=opts)
    assert (g["images/status"][:] == 1).all()
    assert not np.isnan(g["layers/blocks.2/layout"][:]).any()
    log.info(
        "S3 run: fault injected 1, survived 1, shards skipped on resume %d", ex["shards_skipped"]
    )
