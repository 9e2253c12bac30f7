"""Labels as model class indices: the demo photos' ImageNet classes, and a labels file mapping
each file (relative path, any bytes) to a class index or name."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from atlas_core.data import (
    PHOTO_LABELS,
    file_labels,
    file_list_manifest,
    folder_manifest,
    imagenet_class_names,
    photo_crops,
    uri_text,
)
from atlas_core.errors import ConfigError


def test_photo_crops_carry_their_photos_imagenet_class() -> None:
    man = photo_crops(40, seed=3)
    names = imagenet_class_names()
    assert man.label_names == names and len(names) == 1000
    assert man.labels is not None and man.labels.dtype == np.int32 and len(man.labels) == 40
    for uri, label in zip(man.uris, man.labels, strict=True):
        assert label == PHOTO_LABELS.get(Path(uri).name, -1)
    given = {
        Path(u).name: names[int(lab)]
        for u, lab in zip(man.uris, man.labels, strict=True)
        if lab >= 0
    }
    assert given["chelsea.png"] == "Egyptian cat" and given["coffee.png"] == "espresso"
    assert given["camera.png"] == "tripod" and given["china.jpg"] == "palace"
    assert given["rocket.jpg"] == "missile" and given["motorcycle_left.png"] == "moped"
    unlabelled = {Path(u).name for u, lab in zip(man.uris, man.labels, strict=True) if lab < 0}
    assert {"grass.png", "gravel.png", "brick.png", "ihc.png", "flower.jpg"} <= unlabelled


def _images(root: Path, names: list[bytes]) -> None:
    for n in names:
        path = os.fsencode(root) + b"/" + n
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.new("RGB", (16, 16)).save(os.fsdecode(path), format="PNG")


def test_a_labels_file_maps_relative_paths_to_indices_or_names(tmp_path: Path) -> None:
    names = [b"cats/a.png", b"cats/b.png", b"cups/c.png", b"cups/bad\xff.png", b"odd/d.png"]
    _images(tmp_path / "imgs", names)
    man = folder_manifest(str(tmp_path / "imgs"))
    csv = tmp_path / "labels.csv"
    csv.write_bytes(
        b"path,label\n"
        b"cats/a.png,285\n"
        b'"cats/b.png","tabby"\n'  # a synonym of 281 "tabby, tabby cat"
        b"cups/c.png,ESPRESSO\n"
        b"cups/bad\xff.png,968\n"  # the file's own bytes
        b"gone/e.png,1\n"  # names no listed file: logged
    )
    labels, label_names = file_labels(man.uris, str(csv), root=man.root)
    by_file = {Path(u).name: int(x) for u, x in zip(man.uris, labels, strict=True)}
    assert by_file == {"a.png": 285, "b.png": 281, "c.png": 967, "bad%FF.png": 968, "d.png": -1}
    assert label_names == imagenet_class_names()
    txt = tmp_path / "labels.txt"
    bad_text = uri_text(b"cups/bad\xff.png")  # or as the store shows it
    txt.write_text(f"cats/a.png\tEgyptian cat\n{bad_text} 967\n# a comment\n")
    labels, _ = file_labels(man.uris, str(txt), root=man.root)
    by_file = {Path(u).name: int(x) for u, x in zip(man.uris, labels, strict=True)}
    assert by_file == {"a.png": 285, "b.png": -1, "c.png": -1, "bad%FF.png": 967, "d.png": -1}
    lst = tmp_path / "list.txt"  # a file list: the labels name the files whole
    lst.write_text("\n".join(str(tmp_path / "imgs" / n.decode()) for n in names[:3]))
    flat = file_list_manifest(str(lst))
    whole = tmp_path / "whole.csv"
    whole.write_text(f"{tmp_path / 'imgs' / 'cups' / 'c.png'},967\n")
    assert file_labels(flat.uris, str(whole))[0].tolist() == [-1, -1, 967]


@pytest.mark.parametrize(
    "line, says",
    [
        ("cats/a.png,tabbby cat", "tabby cat"),  # misspelt: the close names listed
        ("cats/a.png,crane", "index"),  # a bird and a machine: give the index
        ("cats/a.png,1000", "[0, 999]"),
        ("cats/a.png,1\ncats/a.png,2", "two classes"),
        ("cats/a.png", "path,class"),
    ],
)
def test_labels_file_mistakes_are_config_errors(tmp_path: Path, line: str, says: str) -> None:
    _images(tmp_path / "imgs", [b"cats/a.png"])
    man = folder_manifest(str(tmp_path / "imgs"))
    (tmp_path / "l.csv").write_text(line + "\n")
    with pytest.raises(ConfigError, match=r"labels") as e:
        file_labels(man.uris, str(tmp_path / "l.csv"), root=man.root)
    assert says in str(e.value)
    with pytest.raises(ConfigError):
        file_labels(man.uris, str(tmp_path / "absent.csv"), root=man.root)
