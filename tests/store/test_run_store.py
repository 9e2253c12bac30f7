from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from atlas_core.data import InputManifest, plan_shards
from atlas_core.errors import StoreError
from atlas_core.store import Markers, RunStore, fingerprint
from atlas_core.store.run_store import ShardResult, StoreLayout


def _store(tmp_path: Path, n: int = 10, k: int = 2) -> RunStore:
    man = InputManifest(
        uris=np.array([f"/img/{i}.jpg" for i in range(n)], dtype=object),
        crops=np.full((n, 4), -1, np.int32),
    )
    plan = plan_shards(n, chunk_images=4)
    pos = np.tile([[1, 2]], (n * k, 1)).astype(np.int16)
    return RunStore.create(
        str(tmp_path / "atlas.zarr"),
        man,
        plan,
        pos,
        StoreLayout(k=k, seed=0, layers={"l": (3, 7, 7)}, topk=2),
    )


def _shard(shard: int, start: int, stop: int, k: int = 2) -> ShardResult:
    n = stop - start
    status = np.ones(n, np.uint8)
    status[0] = 2  # the first image of every shard failed
    acts = np.arange(n * k * 3, dtype=np.float32).reshape(n * k, 3) + start * 100
    acts[:k] = np.nan
    return ShardResult(
        shard,
        start,
        stop,
        status,
        np.array(["bad"] + [""] * (n - 1), object),
        np.arange(n, dtype=np.uint64),
        np.zeros((n, 2), np.int32),
        np.ones((n, 2), np.float16),
        {"l": acts},
        {"l": np.eye(3) * n},
        {"l": n},
    )


def test_shards_round_trip_and_holes_stay_visible(tmp_path: Path) -> None:
    st = _store(tmp_path)
    st.write_extract_shard(_shard(0, 0, 4))
    st.write_extract_shard(_shard(2, 8, 10))
    st.write_moments({"l": np.eye(3) * 6}, {"l": 6}, np.array([1, 0, 1], np.uint8))
    again = RunStore.open(str(tmp_path / "atlas.zarr"))
    status = again.status()
    assert status.tolist() == [2, 1, 1, 1, 0, 0, 0, 0, 2, 1]  # shard 1 never ran: zeros
    acts = again.extraction("l").acts()
    assert np.isnan(acts[8:16]).all() and np.isnan(acts[:2]).all()
    assert acts[2, 0] == 6 and acts[18, 0] == 800 + 6
    assert np.allclose(again.extraction("l").second_moment(), np.eye(3))  # 6 I / 6
    # plain zarr reads it with no help from us
    g = zarr.open_group(str(tmp_path / "atlas.zarr"), mode="r")
    assert g.attrs["format"] == "activation-atlas-run" and g["images/uri"][3] == "/img/3.jpg"
    assert g["samples/image"][:].tolist() == np.repeat(np.arange(10), 2).tolist()


def test_empty_chunks_are_stored_so_a_lost_write_is_detectable(tmp_path: Path) -> None:
    st = _store(tmp_path)
    r = _shard(0, 0, 4)
    nan_acts = {"l": np.full_like(r.acts["l"], np.nan)}
    st.write_extract_shard(ShardResult(**{**r.__dict__, "acts": nan_acts}))
    chunk_dir = tmp_path / "atlas.zarr" / "layers" / "l" / "acts" / "c"
    assert sorted(p.name for p in chunk_dir.iterdir()) == ["0"]


def test_a_rewrite_is_byte_identical(tmp_path: Path) -> None:
    st = _store(tmp_path)
    st.write_extract_shard(_shard(0, 0, 4))
    chunk = tmp_path / "atlas.zarr" / "layers" / "l" / "acts" / "c" / "0" / "0"
    before = chunk.read_bytes()
    st.write_extract_shard(_shard(0, 0, 4))
    assert chunk.read_bytes() == before


def test_open_refuses_what_is_not_a_run(tmp_path: Path) -> None:
    zarr.open_group(str(tmp_path / "other.zarr"), mode="w")
    with pytest.raises(StoreError):
        RunStore.open(str(tmp_path / "other.zarr"))
    with pytest.raises(StoreError):
        RunStore.open(str(tmp_path / "nothing.zarr"))


def test_markers_round_trip_and_stay_inside_the_run(tmp_path: Path) -> None:
    mk = Markers(str(tmp_path))
    mk.write("extract/shard-000001", {"rows": [0, 4]})
    assert mk.read("extract/shard-000001") == {"rows": [0, 4]}
    (tmp_path / "markers" / "torn.json").write_text('{"rows": [0,')
    assert mk.read("torn") is None and mk.read("absent") is None
    for bad in ("../escape", "/abs", "a/../../b"):
        with pytest.raises(ValueError):
            mk.write(bad, {})
    mk.remove_prefix("extract")
    assert mk.read("extract/shard-000001") is None
    assert fingerprint({"a": 1, "b": 2}) == fingerprint({"b": 2, "a": 1}) != fingerprint({"a": 2})


class _FlakyStore(zarr.storage.WrapperStore):
    """Fails the first ``fail`` chunk writes with a transient error, or every one with
    ``permanent``."""

    def __init__(self, store, fail: int = 0, permanent: bool = False) -> None:
        super().__init__(store)
        self.fail = fail
        self.permanent = permanent
        self.injected = 0

    async def set(self, key, value):
        if "/c/" in key or key.endswith("/c"):
            if self.permanent:
                raise PermissionError(f"denied: {key}")
            if self.injected < self.fail:
                self.injected += 1
                raise ConnectionResetError(f"transient failure writing {key}")
        return await self._store.set(key, value)


def _flaky(tmp_path: Path, **kw) -> tuple[RunStore, _FlakyStore]:
    _store(tmp_path)
    flaky = _FlakyStore(zarr.storage.LocalStore(str(tmp_path / "atlas.zarr")), **kw)
    return RunStore(zarr.open_group(flaky, mode="r+"), "flaky://", backoff=0.001), flaky


def test_transient_store_errors_are_retried(tmp_path: Path) -> None:
    st, flaky = _flaky(tmp_path, fail=3)
    st.write_extract_shard(_shard(0, 0, 4))
    assert flaky.injected == 3 and st.transient_errors == 3  # injected 3, survived 3
    again = RunStore.open(str(tmp_path / "atlas.zarr"))
    assert again.status()[:4].tolist() == [2, 1, 1, 1]


def test_a_permanent_store_error_fails_loudly_naming_the_shard(tmp_path: Path) -> None:
    st, _ = _flaky(tmp_path, permanent=True)
    with pytest.raises(StoreError, match=r"shard 2 \(images 8\.\.10\)"):
        st.write_extract_shard(_shard(2, 8, 10))
    st2, _ = _flaky(tmp_path / "b", fail=100)
    with pytest.raises(StoreError, match=r"shard 0.*failed 5 times"):
        st2.write_extract_shard(_shard(0, 0, 4))


def test_a_write_that_is_not_whole_storage_objects_is_refused(tmp_path: Path) -> None:
    """Every write goes through one region write that checks alignment: rows [4, 8) of objects
    of 4 rows are fine, [2, 6) would share an object with another writer."""
    from atlas_core.errors import PlanError

    st = _store(tmp_path)
    st.write_region("images/status", 4, np.ones(4, np.uint8))
    with pytest.raises(PlanError, match=r"rows \[2, 6\) of 10 are not whole storage objects"):
        st.write_region("images/status", 2, np.ones(4, np.uint8))
    st.write_region("images/status", 8, np.ones(2, np.uint8))  # the last object may be short
    assert st.status().tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 1, 1]


def test_nodes_declare_their_arrays_and_a_view_writes_under_its_group(tmp_path: Path) -> None:
    st = _store(tmp_path)
    view = st.in_view("views/v1/")
    level = view.level("l", 4)
    level.create(
        ["icons", "icon_objective", "icon_cosine"], {"M": 40, "px": 8, "group": 4, "item": 16}
    )
    arr = level.array("icons")
    assert arr.chunks == (4, 8, 8, 3) and arr.shards == (16, 8, 8, 3)  # a shard per work item
    assert level.icon_layout() == (4, 16)
    level.write("icons", 16, np.full((16, 8, 8, 3), 7, np.uint8))
    g = zarr.open_group(str(tmp_path / "atlas.zarr"), mode="r")
    assert g["views/v1/layers/l/grid/4/icons"][16, 0, 0, 0] == 7  # readable with plain zarr
    assert not st.level("l", 4).has("icons")  # the main view has no such level
    objects = sorted(
        p.name for p in (tmp_path / "atlas.zarr/views/v1/layers/l/grid/4/icons/c").iterdir()
    )
    assert objects == ["1"]  # one storage object for 16 icons, not 16
