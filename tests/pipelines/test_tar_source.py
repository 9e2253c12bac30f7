"""Tar shards through the extract stage: streamed, counted, rows aligned with the manifest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from pipelines.commands.run import run
from tests.conftest import debug_settings
from tests.data.test_tars import _png, _tar

pytestmark = pytest.mark.ray


def test_tar_shards_extract(tmp_path: Path, local_ray) -> None:
    for t in range(2):
        members = {f"{t}/{i:03d}.png": _png(100 * t + i) for i in range(20)}
        if t == 1:
            members["../evil.png"] = _png(7)
        _tar(tmp_path / f"shard-{t}.tar", members)
    s, _ = debug_settings(
        "data=tar",
        f"data.path={tmp_path}",
        f"run_dir={tmp_path / 'run'}",
        "stages=[extract]",
        "extract.chunk_images=16",
    )
    manifest = run(s, {})
    c = manifest["stages"]["extract"]["counts"]
    assert (c["images_expected"], c["images_ok"], c["images_lost"]) == (41, 40, 0)
    assert c["failed_by_reason"] == {"outside_root": 1}
    g = zarr.open_group(str(tmp_path / "run" / "atlas.zarr"), mode="r")
    uris = g["images/uri"][:]
    status = g["images/status"][:]
    assert [u.endswith("../evil.png::" + str(tmp_path / "shard-1.tar")) for u in uris].count(
        True
    ) == 1
    assert (status[[i for i, u in enumerate(uris) if "evil" in u]] == 7).all()
    assert not np.isnan(g["layers/blocks.2/acts"][:][status == 1]).any()


def test_torchvision_jpeg_decoder_matches_the_pil_path(tmp_path: Path, local_ray) -> None:
    """The batch-decoding branch the GPU takes (here on the CPU): same statuses, close acts."""
    from tests.conftest import folder_settings, make_images

    make_images(tmp_path / "imgs", 24, size=80, seed=4)  # half JPEG, half PNG
    (tmp_path / "imgs" / "sub0" / "cut.jpg").write_bytes(
        (tmp_path / "imgs" / "sub0" / "img0000.jpg").read_bytes()[:300]
    )
    runs = {}
    for dec in ("pil", "torchvision"):
        s = folder_settings(tmp_path / "imgs", tmp_path / dec, f"extract.jpeg_decoder={dec}")
        c = run(s, {})["stages"]["extract"]["counts"]
        assert (c["images_ok"], c["images_failed"], c["images_lost"]) == (24, 1, 0)
        runs[dec] = zarr.open_group(str(tmp_path / dec / "atlas.zarr"), mode="r")
    a, b = runs["pil"], runs["torchvision"]
    assert np.array_equal(a["images/status"][:], b["images/status"][:])
    assert np.array_equal(a["images/content_hash"][:], b["images/content_hash"][:])
    x, y = a["layers/blocks.2/acts"][:], b["layers/blocks.2/acts"][:]
    ok = ~np.isnan(x).any(axis=1)
    assert np.array_equal(ok, ~np.isnan(y).any(axis=1))
    cos = (x[ok] * y[ok]).sum(1) / np.linalg.norm(x[ok], axis=1) / np.linalg.norm(y[ok], axis=1)
    assert cos.min() > 0.95  # two decoders and resamplers, the same image
