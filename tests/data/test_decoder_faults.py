"""Issue 26, decoder faults are data: any exception decoding one file is that file's status and
reason, in every source (folder, file list, tar, object store, the nvJPEG path, the reader);
a file's size is checked from stat before it is read; unreadable folders are counted."""

from __future__ import annotations

import hashlib
import os
import tarfile
import tracemalloc
from pathlib import Path

import fsspec
import numpy as np
import pytest
from PIL import Image

from atlas_core.data import DecodePolicy, Status, decode, file_list_manifest, folder_manifest
from atlas_core.data.decode import decode_bytes
from atlas_core.data.jpeg import decode_jpegs
from atlas_core.data.reader import ImageReader
from atlas_core.data.tars import stream_members, tar_manifest
from atlas_core.models.preprocess import Preprocess
from tests.data.hostile import REGRESSION_TIFFS, encoded

PRE = Preprocess(size=32, crop_pct=1.0)
TYPE_ERROR = "TypeError: 'IFDRational' object cannot be interpreted as an integer"


def _good(seed: int, fmt: str = "PNG") -> bytes:
    arr = np.random.default_rng(seed).integers(0, 255, (40, 40, 3), dtype=np.uint8)
    return encoded(Image.fromarray(arr), fmt)


def _folder(root: Path) -> list[Path]:
    """Good images around the two regression TIFFs: row order good, bad, good, bad, good."""
    root.mkdir(parents=True, exist_ok=True)
    (a, ta), (b, tb) = REGRESSION_TIFFS.items()
    files = {"0.jpg": _good(0, "JPEG"), f"1_{a}": ta, "2.png": _good(2), f"3_{b}": tb}
    files["4.jpg"] = _good(4, "JPEG")
    for name, data in files.items():
        (root / name).write_bytes(data)
    return [root / n for n in files]


EXPECT = [Status.OK, Status.DECODER_ERROR, Status.OK, Status.DECODER_ERROR, Status.OK]


def test_the_fuzzers_tiffs_are_a_status_and_a_reason(tmp_path: Path) -> None:
    for name, data in REGRESSION_TIFFS.items():
        d = decode_bytes(data)
        assert d.status == Status.DECODER_ERROR, name
        assert d.detail == TYPE_ERROR and d.content_hash != 0
        (tmp_path / name).write_bytes(data)
        assert decode(str(tmp_path / name)).status == Status.DECODER_ERROR


@pytest.mark.parametrize("decoder", ["pil", "torchvision"])
def test_folder_and_file_list_rows_keep_their_statuses_in_the_reader(
    tmp_path: Path, decoder: str
) -> None:
    paths = _folder(tmp_path / "imgs")
    (tmp_path / "list.txt").write_text("\n".join(str(p) for p in paths))
    for man in (
        folder_manifest(str(tmp_path / "imgs")),
        file_list_manifest(str(tmp_path / "list.txt")),
    ):
        r = ImageReader(man.uris, man.crops, PRE, root=man.root, decoder=decoder, batch_size=2)
        rows = np.concatenate([i for i, _ in r.batches()])
        assert rows.tolist() == [0, 2, 4]
        assert r.status.tolist() == [int(s) for s in EXPECT]
        assert r.error[1] == TYPE_ERROR == r.error[3]


def test_tar_members_keep_their_statuses(tmp_path: Path) -> None:
    paths = _folder(tmp_path / "imgs")
    with tarfile.open(tmp_path / "a.tar", "w") as tf:
        for p in paths:
            tf.add(p, arcname=p.name)
    man = tar_manifest([str(tmp_path / "a.tar")])
    got = dict(stream_members(list(man.uris), DecodePolicy()))
    assert [got[i].status for i in range(len(paths))] == EXPECT
    r = ImageReader(man.uris, man.crops, PRE, batch_size=2)
    assert np.concatenate([i for i, _ in r.batches()]).tolist() == [0, 2, 4]
    assert r.status.tolist() == [int(s) for s in EXPECT]


def test_object_store_files_keep_their_statuses() -> None:
    fs = fsspec.filesystem("memory")
    uris = []
    for i, (name, data) in enumerate([("ok.png", _good(1)), *REGRESSION_TIFFS.items()]):
        fs.pipe_file(f"/bucket26/{i}_{name}", data)
        uris.append(f"memory://bucket26/{i}_{name}")
    try:
        got = [decode(u) for u in uris]
        assert [d.status for d in got] == [Status.OK, Status.DECODER_ERROR, Status.DECODER_ERROR]
        assert decode("memory://bucket26/absent.png").status == Status.MISSING
    finally:
        fs.rm("/bucket26", recursive=True)


def test_the_nvjpeg_path_falls_back_on_any_decoder_exception(monkeypatch) -> None:
    import torchvision.io

    real = torchvision.io.decode_jpeg
    poison = _good(7, "JPEG")

    def flaky(data, **kw):
        batch = data if isinstance(data, list) else [data]
        if any(bytes(t.numpy()) == poison for t in batch):
            raise TypeError("a decoder bug that is not a RuntimeError")
        return real(data, **kw)

    monkeypatch.setattr(torchvision.io, "decode_jpeg", flaky)
    out = decode_jpegs([_good(6, "JPEG"), poison, _good(8, "JPEG")], device="cpu")
    assert [o is None for o in out] == [False, True, False]


def test_a_preprocessing_failure_is_the_rows_status(tmp_path: Path) -> None:
    paths = _folder(tmp_path / "imgs")
    poison = np.asarray(decode(str(paths[2])).image)

    class Fussy(Preprocess):
        def to_array(self, image):
            if np.array_equal(np.asarray(image), poison):
                raise ValueError("cannot resize this one")
            return super().to_array(image)

    uris = np.array([str(p) for p in paths], dtype=object)
    r = ImageReader(uris, np.full((5, 4), -1, np.int32), Fussy(size=32, crop_pct=1.0), batch_size=2)
    assert np.concatenate([i for i, _ in r.batches()]).tolist() == [0, 4]
    assert r.status[2] == Status.DECODER_ERROR and "cannot resize" in r.error[2]


# ---------------------------------------------------------------------------- size from stat
def _sparse(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        f.write(b"this is no image at all")
        f.truncate(size)
    return path


def _peak(fn):
    tracemalloc.start()
    try:
        out = fn()
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_huge_file_is_refused_from_stat_without_being_read(tmp_path: Path) -> None:
    huge = _sparse(tmp_path / "huge.jpg", 300 * 2**20)  # sparse: no disk, 300 MiB to read
    d, peak = _peak(lambda: decode(str(huge)))
    assert d.status == Status.TOO_LARGE and str(300 * 2**20) in d.detail
    assert peak < 2**20


def test_a_large_non_image_is_classified_from_its_header_with_a_streamed_hash(
    tmp_path: Path,
) -> None:
    big = _sparse(tmp_path / "big.png", 40 * 2**20)
    d, peak = _peak(lambda: decode(str(big)))
    assert d.status == Status.UNIDENTIFIED
    assert peak < 8 * 2**20  # the file is 40 MiB: it was never held whole
    h = hashlib.blake2b(digest_size=8)
    with open(big, "rb") as f:
        while block := f.read(2**20):
            h.update(block)
    assert d.content_hash == int.from_bytes(h.digest(), "little")


def test_the_byte_limit_holds_in_every_source(tmp_path: Path) -> None:
    data = _good(3)
    policy = DecodePolicy(max_bytes=len(data) - 1)
    (tmp_path / "a.png").write_bytes(data)
    assert decode(str(tmp_path / "a.png"), policy=policy).status == Status.TOO_LARGE
    assert decode(str(tmp_path / "a.png"), policy=DecodePolicy(max_bytes=len(data))).status == 1
    with tarfile.open(tmp_path / "a.tar", "w") as tf:
        tf.add(tmp_path / "a.png", arcname="a.png")
    man = tar_manifest([str(tmp_path / "a.tar")])
    assert dict(stream_members(list(man.uris), policy))[0].status == Status.TOO_LARGE
    fs = fsspec.filesystem("memory")
    fs.pipe_file("/bucket26s/a.png", data)
    try:
        assert decode("memory://bucket26s/a.png", policy=policy).status == Status.TOO_LARGE
    finally:
        fs.rm("/bucket26s", recursive=True)


# ---------------------------------------------------------------------------- unreadable folders
def test_unreadable_subfolders_are_counted_not_dropped(tmp_path: Path, monkeypatch) -> None:
    root = tmp_path / "imgs"
    for sub in ("a", "locked", "z"):
        (root / sub).mkdir(parents=True)
        (root / sub / "x.png").write_bytes(_good(5))
    real = os.scandir

    def scandir(path="."):  # root bypasses permissions: refuse the folder as a mode 000 would
        if os.fspath(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    man = folder_manifest(str(root))
    assert [Path(u).parent.name for u in man.uris] == ["a", "z"]
    assert man.unreadable == (str(root / "locked"),)
    monkeypatch.undo()
    assert folder_manifest(str(root)).unreadable == ()
