"""The explorer's points writer: columns read back equal to what went in, in chunked files that
are scripts (a page opened from disk loads them), with names kept as JSON strings."""

from __future__ import annotations

import numpy as np
import pytest

from atlas_core.compose.points import (
    DETAIL_IMAGES,
    PointsWriter,
    Sources,
    read_points,
    source_of,
)
from atlas_core.errors import AtlasError

EVIL = "</script><img src=x onerror=alert(1)>"


def _columns(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "row": np.sort(rng.choice(3 * n, n, replace=False)),
        "x": rng.random(n, dtype=np.float32),
        "y": rng.random(n, dtype=np.float32),
        "pred": rng.integers(-1, 1000, n),
        "conf": rng.random(n).astype(np.float16),
        "source": rng.integers(0, 5, n).astype(np.uint16),
        "label": rng.integers(-1, 1000, n),
    }


@pytest.mark.parametrize("labelled", [True, False])
def test_columns_read_back_equal_to_the_inputs(labelled: bool) -> None:
    files: dict[str, bytes] = {}
    w = PointsWriter(files.__setitem__, k=3, levels=[4, 16], labelled=labelled, chunk=1000)
    cols = _columns(2500)
    for a in range(0, 2500, 700):  # blocks that do not line up with the files
        block = {k: v[a : a + 700] for k, v in cols.items()}
        if not labelled:
            block.pop("label")
        w.add(**block)
    head = w.finish(lambda c: EVIL if c == 7 else f"class {c}", ["a/", "b/"], topk=5)
    assert sorted(f for f in files if f.startswith("points-")) == [
        f"points-{i}.js" for i in (0, 1, 2)
    ]
    assert head["n"] == 2500 and head["files"] == 3 and head["levels"] == [4, 16]
    back = read_points(files)
    for name in ("row", "x", "y", "pred", "source") + (("label",) if labelled else ()):
        np.testing.assert_array_equal(back[name].astype(cols[name].dtype), cols[name])
    np.testing.assert_array_equal(back["conf"].view(np.float16), cols["conf"])
    assert ("label" in back) == labelled and (head["labels"] is None) != labelled
    assert [7, EVIL] in head["classes"] and len(head["classes"]) == len(set(cols["pred"]) - {-1})
    for data in files.values():  # every file is a script handing JSON to the page
        text = data.decode()
        assert text.startswith("window.ATLAS_PUT(document.currentScript.src, ")
        assert "<" not in text and ">" not in text


def test_details_and_patches_are_written_per_block() -> None:
    files: dict[str, bytes] = {}
    w = PointsWriter(files.__setitem__, k=2, levels=[4], labelled=False)
    uri = np.array([f"/d/{EVIL}{i}.png" for i in range(5)], dtype=object)
    top = np.arange(15).reshape(5, 3)
    w.add_details(DETAIL_IMAGES, uri, top, np.full((5, 3), 0.5), np.ones((10, 2), np.int16))
    w.add_patches(np.array([9, 2, 5]), np.array([0, 1, 2]), np.array([3, 4, 5]), np.zeros((3, 4)))
    head = w.finish(str, [], topk=3, patches=True)
    assert head["details"] == {"files": 2, "per": DETAIL_IMAGES, "topk": 3} and head["n"] == 0
    assert "detail-1.js" in files and "patches.js" in files
    with pytest.raises(AtlasError, match="multiples"):
        w.add_details(3, uri, top, np.zeros((5, 3)), np.ones((10, 2), np.int16))


def test_bad_columns_are_refused_with_the_reason() -> None:
    w = PointsWriter(lambda n, d: None, k=1, levels=[4], labelled=True)
    cols = _columns(10)
    with pytest.raises(AtlasError, match="32768"):
        w.add(**{**cols, "pred": np.full(10, 40_000)})
    with pytest.raises(AtlasError, match="label"):
        w.add(**{k: v for k, v in cols.items() if k != "label"})
    with pytest.raises(AtlasError, match="9 values"):
        w.add(**{**cols, "x": cols["x"][:9]})


def test_sources_are_folders_or_tar_files() -> None:
    assert source_of("/data/n01440764/a.JPEG") == "n01440764/"
    assert source_of("tar://x/y.png::s3://bucket/shard-0.tar") == "shard-0.tar"
    assert source_of("s3://bucket/cats/1.jpg") == "cats/"
    assert source_of("a.png") == "(root)"
    s = Sources()
    ids = s(np.array(["/d/a/1.png", "/d/b/2.png", "/e/a/3.png"], dtype=object))
    assert ids.tolist() == [0, 1, 0] and s.names() == ["a/", "b/"]
