"""The run store on S3 end to end, against moto's server on 127.0.0.1: extraction, a resume after
an injected fault, and every later stage writing back to the bucket."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pytest

from pipelines.commands.run import run
from tests.conftest import debug_settings, make_images

pytestmark = pytest.mark.ray

moto_server = pytest.importorskip("moto.server")
s3fs = pytest.importorskip("s3fs")
log = logging.getLogger(__name__)


@pytest.fixture(scope="module")
def s3(local_ray, tmp_path_factory):
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
    opts = {  # moto takes any credentials: distinctive ones, to search the run's files for
        "key": "fake-key-1b2c",
        "secret": "fake-secret-7f3a9c",
        "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"},
    }
    yield opts, tmp_path_factory.mktemp("s3imgs")
    server.stop()


def _settings(images: Path, opts: dict, *extra: str):
    s, resolved = debug_settings(
        "data=folder",
        f"data.path={images}",
        "run_dir=s3://atlas/run1",
        "extract.chunk_images=16",
        *extra,
    )
    return dataclasses.replace(s, storage_options=opts), {**resolved, "storage_options": opts}


def test_a_run_on_s3_resumes_and_finishes(s3, inject, caplog) -> None:
    opts, base = s3
    make_images(base / "imgs", 40, size=70)
    inject("raise:after_write:1")
    caplog.set_level(logging.INFO)  # our logs (botocore DEBUG logs the key id by design)
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
    # no secret lands in the run: every object under the bucket, and the logs
    secret = opts["secret"].encode()
    written = [p for p in fs.find("atlas/run1")]
    assert written and not [p for p in written if secret in fs.cat(p)]
    assert on_s3["config"]["storage_options"]["secret"] == "***redacted***"
    assert caplog.text and opts["secret"] not in caplog.text and opts["key"] not in caplog.text
    log.info(
        "S3 run: fault injected 1, survived 1, shards skipped on resume %d", ex["shards_skipped"]
    )


def test_scheduled_runs_on_two_dates_and_a_rerun(s3) -> None:
    """``run_root`` + ``date``: dated run directories in the bucket, a re-run of a date resumes
    (every stage skipped), and the root's index lists each date's run."""
    from pipelines.commands.sweep import run_one

    opts, base = s3
    make_images(base / "sched-imgs", 24, size=64, seed=4)
    root = "s3://atlas/scheduled"
    seen = {}
    for date in ("2026-01-01", "2026-01-02", "2026-01-01"):
        s, resolved = _settings(base / "sched-imgs", opts, f"run_root={root}", f"date={date}")
        s2, manifest = run_one(s, resolved)
        assert s2.run_dir == f"{root}/{date}"
        seen.setdefault(date, []).append({k: v["status"] for k, v in manifest["stages"].items()})
    assert all(v.startswith("skipped") for v in seen["2026-01-01"][1].values())
    fs = s3fs.S3FileSystem(**opts)
    index = json.loads(fs.cat("atlas/scheduled/index.json"))
    assert [r["run"] for r in index["runs"]] == ["2026-01-01", "2026-01-02"]
    assert all(r["status"] == "done" and r["date"] == r["run"] for r in index["runs"])
    assert b"2026-01-02/atlas.png" in fs.cat("atlas/scheduled/index.html")
    # the second date diffed itself against the first, on the object store too
    diffed = json.loads(fs.cat("atlas/scheduled/2026-01-02/compare.json"))
    assert "error" not in diffed and diffed["against"] == "2026-01-01", diffed
    assert 0 <= diffed["neighbourhood_preservation"] <= 1
    assert fs.exists("atlas/scheduled/2026-01-02/diff-prev/diff.html")
    log.info("scheduled runs: 2 dates, 1 re-run resumed with every stage skipped; index of 2")
