from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from atlas_core.data import folder_manifest, photo_crops, plan_shards
from atlas_core.data.plan import ShardPlan
from atlas_core.errors import ConfigError, PlanError
from tests.conftest import make_images


def test_plans_tile_the_rows_on_chunk_boundaries() -> None:
    plan = plan_shards(1000, chunk_images=64, chunks_per_shard=3)
    assert plan.bounds[0] == (0, 192) and plan.bounds[-1] == (960, 1000)
    assert sum(b - a for a, b in plan.bounds) == 1000


@pytest.mark.parametrize("bounds", [((0, 100), (100, 200)), ((0, 128), (100, 200)), ((0, 128),)])
def test_unaligned_or_incomplete_plans_are_rejected(bounds) -> None:
    with pytest.raises(PlanError):
        ShardPlan(n_images=200, chunk_images=64, bounds=bounds).validate()


def test_photo_crops_are_seeded_and_inside_the_photos() -> None:
    a, b, c = photo_crops(300, seed=1), photo_crops(300, seed=1), photo_crops(300, seed=2)
    assert (a.crops == b.crops).all() and list(a.uris) == list(b.uris)
    assert not (a.crops == c.crops).all()
    assert len(set(a.uris)) >= 15  # every photo is used
    keys = {(u, *c) for u, c in zip(a.uris, a.crops.tolist(), strict=True)}
    assert len(keys) == 300  # no crop repeats (a square photo at scale 1.0 has one position)
    side = a.crops[:, 2] - a.crops[:, 0]
    assert (side == a.crops[:, 3] - a.crops[:, 1]).all() and (side >= 16).all()


def test_folder_manifest_is_recursive_sorted_and_refuses_empty(tmp_path: Path) -> None:
    make_images(tmp_path / "imgs", 7)
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    m = folder_manifest(str(tmp_path / "imgs"))
    assert len(m) == 7 and list(m.uris) == sorted(m.uris)
    assert (m.crops == -1).all() and m.root == str((tmp_path / "imgs").resolve())
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no files ending"):
        folder_manifest(str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match="existing directory"):
        folder_manifest(str(tmp_path / "missing"))
    assert np.all(folder_manifest(str(tmp_path / "imgs"), limit=3).uris == m.uris[:3])


def test_imagenet_folder_labels_and_file_lists(tmp_path: Path) -> None:
    from atlas_core.data import file_list_manifest, folder_labels

    for syn in ("n02", "n01"):
        make_images(tmp_path / "train" / syn, 2, seed=len(syn))
    m = folder_manifest(str(tmp_path / "train"))
    labels, names = folder_labels(m.uris)
    assert names == ("sub0", "sub1")  # make_images nests one level: labels come from the parent
    lst = tmp_path / "list.txt"
    lst.write_text("# inputs\n" + "\n".join(m.uris) + "\ns3://bucket/remote.jpg\n\n")
    fl = file_list_manifest(str(lst))
    assert list(fl.uris) == [*m.uris, "s3://bucket/remote.jpg"] and fl.root is None
    assert labels.tolist() == [0 if "/sub0/" in u else 1 for u in m.uris]
    with pytest.raises(ConfigError):
        file_list_manifest(str(tmp_path / "nope.txt"))


def test_duplicates_are_same_bytes_and_crop_of_an_earlier_usable_row() -> None:
    from atlas_core.data.plan import duplicate_rows

    hashes = np.array([5, 7, 5, 5, 9, 7, 5], dtype=np.uint64)
    crops = np.full((7, 4), -1, np.int32)
    crops[3] = [0, 0, 8, 8]  # same file, another crop: a distinct input
    ok = np.array([True, True, True, True, True, True, False])  # row 6 failed: not counted
    dup, first = duplicate_rows(hashes, crops, ok)
    assert dup.tolist() == [2, 5] and first.tolist() == [0, 1]
