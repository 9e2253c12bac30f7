"""Issue 26, a folder of hostile files through the ``atlas`` command, every stage: truncated and
corrupt images, the fuzzer's two TIFFs, a decompression bomb, a zero-byte file, an HTML page
saved as .jpg, a file over ``data.max_bytes``, a directory named like an image, a file name that
is not UTF-8, and a last shard holding only failures. The run finishes; its manifest counts rows
expected = ok + failed + lost with lost = 0, each failure with its reason; the labels come from
a labels file (``data.labels=file``), the non-UTF-8 name's included."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import zarr
from PIL import Image

from tests.conftest import make_images
from tests.data.hostile import REGRESSION_TIFFS, encoded

log = logging.getLogger(__name__)
pytestmark = pytest.mark.ray
ROOT = Path(__file__).resolve().parents[2]
BAD_NAME = b"bad\xff\xfename.jpg"  # not UTF-8
MAX_BYTES = 60_000


def _hostile_folder(imgs: Path) -> dict[str, str]:
    """23 good images and one with a non-UTF-8 name (rows 0..23: three shards of 8), then eight
    bad files sorted last (the fourth shard: failures only). Returns each bad file's reason."""
    make_images(imgs, 23, size=64, seed=5)
    rng = np.random.default_rng(1)
    good = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    with open(os.path.join(os.fsencode(imgs / "sub0"), BAD_NAME), "wb") as f:
        f.write(encoded(good, "JPEG", quality=90))
    bad = imgs / "zz"
    bad.mkdir()
    jpeg = encoded(good, "JPEG", quality=90)
    (bad / "a_truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (bad / "b_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + rng.bytes(300))
    for name, data in REGRESSION_TIFFS.items():
        (bad / f"c_{name}").write_bytes(data)
    Image.new("1", (9000, 9000)).save(bad / "d_bomb.png")  # 81 MP, a few kB
    (bad / "e_empty.jpg").write_bytes(b"")
    (bad / "f_page.jpg").write_bytes(b"<html><body>404 not found</body></html>")
    noise = rng.integers(0, 255, (200, 200, 3), dtype=np.uint8)  # ~120 kB as PNG
    Image.fromarray(noise).save(bad / "g_large.png")
    (bad / "h_folder.jpg").mkdir()  # a directory named like an image: not an input
    return {
        "a_truncated.jpg": "truncated",
        "b_corrupt.png": "unidentified",
        **{f"c_{n}": "decoder_error" for n in REGRESSION_TIFFS},
        "d_bomb.png": "decompression_bomb",
        "e_empty.jpg": "truncated",
        "f_page.jpg": "unidentified",
        "g_large.png": "too_large",
    }


def test_a_hostile_folder_runs_end_to_end(tmp_path: Path) -> None:
    imgs, run_dir = tmp_path / "imgs", tmp_path / "run"
    reasons = _hostile_folder(imgs)
    labels = tmp_path / "labels.tsv"
    labels.write_bytes(b"sub0/img0000.jpg\t1\nsub1/img0001.png\ttench\nsub0/" + BAD_NAME + b"\t7\n")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipelines",
            "debug=fast",
            "data=folder",
            f"data.path={imgs}",
            "data.labels=file",
            f"data.labels_file={labels}",
            f"data.max_bytes={MAX_BYTES}",
            f"run_dir={run_dir}",
            "extract.chunk_images=8",
            "extract.batch_size=8",
            "cluster.num_cpus=2",
        ],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "done"
    c = manifest["stages"]["extract"]["counts"]
    expected, ok, failed, lost = (
        c["images_expected"],
        c["images_ok"],
        c["images_failed"],
        c["images_lost"],
    )
    assert expected == ok + failed + lost and lost == 0
    assert (expected, ok, failed) == (24 + len(reasons), 24, len(reasons))
    assert c["failed_by_reason"] == dict(Counter(reasons.values()))
    g = zarr.open_group(str(run_dir / "atlas.zarr"), mode="r")
    status = g["images/status"][:]
    assert (status[:24] == 1).all() and (status[24:] != 1).all()  # the last shard: failures only
    label = g["images/label"][:]
    assert sorted(label[label >= 0].tolist()) == [0, 1, 7]
    assert int((label >= 0).sum()) == 3
    for stage, rec in manifest["stages"].items():
        assert rec["status"] in ("done", "not requested"), (stage, rec)
    log.info(
        "hostile folder through atlas: rows expected %d = ok %d + failed %d + lost %d; "
        "failed by reason %s; labels from a file: %d",
        expected,
        ok,
        failed,
        lost,
        c["failed_by_reason"],
        int((label >= 0).sum()),
    )
