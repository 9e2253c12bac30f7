"""Issue 26, names are bytes-safe: any name the file system gives round-trips as a URI text
through the folder manifest, the run store (zarr's UTF-8 strings), the reader, the exemplars'
re-read (``decode`` of the stored URI under the stored root), tar members and the viewer."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import zarr
from PIL import Image

from atlas_core.compose.viewer import source_name
from atlas_core.data import (
    DecodePolicy,
    Status,
    decode,
    file_list_manifest,
    folder_manifest,
    plan_shards,
)
from atlas_core.data.reader import ImageReader
from atlas_core.data.tars import member_uri, split_uri, stream_members, tar_manifest
from atlas_core.data.uri import MARKER, uri_path, uri_text
from atlas_core.models.preprocess import Preprocess
from atlas_core.store import RunStore
from atlas_core.store.run_store import StoreLayout

HOSTILE = [
    b"bad\xff\xfename.png",  # not UTF-8 (the name)
    b"\xc3(broken-sequence.png",
    b"100%.png",
    b"50%41 looks escaped.png",
    b"new\nline.png",
    b"tab\tand  spaces .png",
    "caf\u00e9 \u4e2d\u6587 \U0001f408.png".encode(),
    b"pct:looks-marked.png",
    b"colon:in:name.png",
    b"dir\xfe/inner.png",  # a folder whose name is not UTF-8
]


def _write(root: Path) -> dict[bytes, tuple[int, int, int]]:
    """One image per hostile name, each its own colour."""
    colours = {}
    for i, name in enumerate(HOSTILE):
        path = os.fsencode(root) + b"/" + name
        os.makedirs(os.path.dirname(path), exist_ok=True)
        colour = (10 * i, 255 - 10 * i, 7 * i)
        Image.new("RGB", (24, 20), colour).save(os.fsdecode(path), format="PNG")
        colours[path] = colour
    return colours


def test_uri_text_round_trips_every_byte_string() -> None:
    rng = np.random.default_rng(26)
    names = [*HOSTILE, b"", b"%", b"%%", b"pct:", b"\x7f\x00x", bytes(range(1, 256))]
    names += [bytes(rng.integers(1, 256, rng.integers(1, 40), dtype=np.uint8)) for _ in range(500)]
    for raw in names:
        text = uri_text(raw)
        text.encode("utf-8")  # valid UTF-8: zarr, JSON and the viewer take it
        assert "\n" not in text and "\udcff" not in text
        assert os.fsencode(uri_path(text)) == raw
        assert uri_path(uri_text(os.fsdecode(raw))) == os.fsdecode(raw)
    assert uri_text("/data/ordinary name \u00e9.jpg") == "/data/ordinary name \u00e9.jpg"
    assert uri_text(b"/d/bad\xff\xfename.jpg") == f"{MARKER}/d/bad%FF%FEname.jpg"
    with pytest.raises(ValueError):
        uri_path(f"{MARKER}/d/stray%zz.jpg")


def test_hostile_names_round_trip_through_manifest_store_reader_and_viewer(tmp_path: Path) -> None:
    colours = _write(tmp_path / "imgs")
    man = folder_manifest(str(tmp_path / "imgs"))
    assert len(man) == len(HOSTILE)
    assert sorted(os.fsencode(uri_path(u)) for u in man.uris) == sorted(colours)
    n = len(man)
    store = RunStore.create(
        str(tmp_path / "atlas.zarr"),
        man,
        plan_shards(n, chunk_images=4),
        np.zeros((n, 2), np.int16),
        StoreLayout(k=1, seed=0, layers={"l": (3, 7, 7)}, topk=2),
    )
    again = RunStore.open(str(tmp_path / "atlas.zarr")).manifest()
    assert list(again.uris) == list(man.uris) and again.root == man.root
    assert list(zarr.open_group(str(tmp_path / "atlas.zarr"))["images/uri"][:]) == list(man.uris)
    reader = ImageReader(
        again.uris, again.crops, Preprocess(size=16, crop_pct=1.0), root=again.root
    )
    assert sum(len(i) for i, _ in reader.batches()) == n
    assert reader.status.tolist() == [int(Status.OK)] * n
    for uri in again.uris:  # the exemplar stage's re-read: decode(stored uri, root=stored root)
        d = decode(str(uri), None, root=again.root)
        assert d.status == Status.OK
        assert d.image.getpixel((0, 0)) == colours[os.fsencode(uri_path(str(uri)))]
        shown = source_name(str(uri))  # the viewer's card title: text, one line
        shown.encode("utf-8")
        assert "\n" not in shown and shown
    assert "bad%FF%FEname.png" in {source_name(str(u)) for u in again.uris}
    del store


def test_a_file_list_of_raw_names_and_uri_texts(tmp_path: Path) -> None:
    colours = _write(tmp_path / "imgs")
    paths = [p for p in colours if b"\n" not in p]  # a line per name: newlines cannot be listed
    texts = [uri_text(p) for p in paths[:3]]  # a list may also hold the store's URI texts
    (tmp_path / "list.txt").write_bytes(b"\n".join(paths[3:] + [t.encode() for t in texts]))
    man = file_list_manifest(str(tmp_path / "list.txt"))
    assert [os.fsencode(uri_path(u)) for u in man.uris] == paths[3:] + paths[:3]
    assert all(decode(str(u)).status == Status.OK for u in man.uris)


def test_tar_members_with_hostile_names(tmp_path: Path) -> None:
    src = tmp_path / "src.png"
    Image.new("RGB", (24, 20), (1, 2, 3)).save(src)
    members = ["a::b.png", "ends-with:", "bad\udcff.png", "x%41.png", "plain.png"]
    with tarfile.open(tmp_path / "t.tar", "w", format=tarfile.GNU_FORMAT) as tf:
        for m in members:
            tf.add(src, arcname=m)
    tar = str(tmp_path / "t.tar")
    for m in members:
        assert split_uri(member_uri(m, tar)) == (m, tar)
        member_uri(m, tar).encode("utf-8")
    man = tar_manifest([tar], extensions=(".png", ":"))  # list "ends-with:" too
    got = dict(stream_members(list(man.uris), DecodePolicy()))
    assert len(man) == len(members) and all(d.status == Status.OK for d in got.values())


def test_reasons_naming_hostile_paths_are_text_too(tmp_path: Path) -> None:
    """A status's reason that names a path (a link out of the root) is valid UTF-8, and the
    same every time (no object address in it): ``images/error`` holds it."""
    outside = os.fsencode(tmp_path) + b"/out\xff"
    os.makedirs(outside)
    Image.new("RGB", (24, 20)).save(os.fsdecode(outside + b"/x.png"))
    (tmp_path / "imgs").mkdir()
    link = os.fsencode(tmp_path) + b"/imgs/link\xfe.png"
    os.symlink(outside + b"/x.png", link)
    (tmp_path / "imgs" / "page.png").write_bytes(b"<html>not found</html>")
    man = folder_manifest(str(tmp_path / "imgs"))
    reader = ImageReader(man.uris, man.crops, Preprocess(size=16, crop_pct=1.0), root=man.root)
    assert sum(len(i) for i, _ in reader.batches()) == 0
    assert reader.status.tolist() == [Status.OUTSIDE_ROOT, Status.UNIDENTIFIED]
    assert "out%FF" in reader.error[0]
    for e in reader.error:
        e.encode("utf-8")
    again = decode(str(man.uris[1])).detail
    assert reader.error[1] == again and "0x" not in again
