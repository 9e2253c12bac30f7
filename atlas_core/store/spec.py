"""Array declarations and the node base: each node of the run store declares its arrays once.

An :class:`ArraySpec` gives an array's shape rule (dimension names resolved from the node's
dimensions when it is created), its rows per chunk and per storage object (a zarr shard of
several chunks when the two differ), dtype, fill value and compression. Every write goes through
:meth:`RunStore.write_region`, which checks that the region is whole storage objects (one writer
per object: zarr-python has no locking and rewrites whole objects) and retries transient errors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import numpy as np
import zarr

from atlas_core.errors import StoreError

Dim = str | int


class Store(Protocol):
    """What a node needs of the run store (``RunStore`` is the one implementation)."""

    def create_array(
        self,
        key: str,
        spec: ArraySpec,
        dims: Mapping[str, int],
        *,
        shape: tuple[int, ...] | None = ...,
        dtype: Any = ...,
    ) -> zarr.Array: ...

    def write_region(self, key: str, start: int, data: np.ndarray) -> None: ...

    def read(self, key: str, start: int = ..., stop: int | None = ...) -> np.ndarray: ...

    def take(self, key: str, rows: np.ndarray) -> np.ndarray: ...

    def has(self, key: str) -> bool: ...

    def array(self, key: str) -> zarr.Array: ...

    def group_attrs(self, path: str) -> dict[str, Any]: ...

    def set_group_attrs(self, path: str, attrs: Mapping[str, Any]) -> None: ...


@dataclass(frozen=True)
class ArraySpec:
    """One array of a node.

    shape: dimension names (resolved from the node's dims) or fixed sizes; the first is the rows.
    chunk: the dims key of rows per chunk (None: every row in one chunk).
    obj: the dims key of rows per storage object; when it differs from ``chunk``, the object is
    a zarr shard (the sharding codec) of ``obj / chunk`` chunks. None: the chunk is the object.
    compress: zstd (zarr's default) or no compression (for already compressed bytes).
    """

    dtype: Any
    fill: Any
    shape: tuple[Dim, ...]
    chunk: str | None = None
    obj: str | None = None
    compress: bool = True

    def resolve(
        self, dims: Mapping[str, int]
    ) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...] | None]:
        """(shape, chunks, shards or None) for the given dims."""
        try:
            shape = tuple(int(dims[d]) if isinstance(d, str) else int(d) for d in self.shape)
        except KeyError as exc:
            raise StoreError(f"an array needs dimension {exc} to be created") from exc
        rows = shape[0]
        chunk = int(dims[self.chunk]) if self.chunk else max(rows, 1)
        obj = int(dims[self.obj]) if self.obj else chunk
        chunk, obj = max(1, min(chunk, max(rows, 1))), max(1, min(obj, max(rows, 1)))
        tail = tuple(max(1, s) for s in shape[1:])
        if obj != chunk and obj % chunk == 0:
            return shape, (chunk, *tail), (obj, *tail)
        return shape, (obj, *tail), None


class Node:
    """A group of the run store holding one kind of artifact (images, a layer, a level, ...).

    ARRAYS: name -> :class:`ArraySpec`, the node's arrays declared once. ``path`` is the group's
    path in the store (``layers/blocks.4/grid/16``); reads and writes name arrays by their key.
    """

    ARRAYS: ClassVar[dict[str, ArraySpec]] = {}

    def __init__(self, store: Store, path: str) -> None:
        self.store = store
        self.path = path

    def key(self, name: str) -> str:
        if name not in self.ARRAYS:
            raise StoreError(f"{type(self).__name__} has no array {name!r}")
        return f"{self.path}/{name}"

    def create(
        self,
        names: Sequence[str] | None,
        dims: Mapping[str, int],
        dtypes: Mapping[str, Any] | None = None,
    ) -> None:
        """Create (or recreate, empty) the named arrays (None: all) for these dims; ``dtypes``
        overrides a declared dtype (the activations' float16 or float32)."""
        for name in names if names is not None else list(self.ARRAYS):
            dtype = (dtypes or {}).get(name)
            self.store.create_array(self.key(name), self.ARRAYS[name], dims, dtype=dtype)

    def put(self, name: str, data: Any, dims: Mapping[str, int] | None = None) -> None:
        """Create one array sized to ``data`` and write all of it (the driver's small arrays)."""
        data = np.asarray(data)
        self.store.create_array(self.key(name), self.ARRAYS[name], dims or {}, shape=data.shape)
        self.write(name, 0, data)

    def write(self, name: str, start: int, data: Any) -> None:
        """Rows [start, start + len(data)) of array ``name``: whole storage objects only."""
        self.store.write_region(self.key(name), start, np.asarray(data))

    def read(self, name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        return self.store.read(self.key(name), start, stop)

    def take(self, name: str, rows: np.ndarray) -> np.ndarray:
        """Rows ``rows`` (any order), read one chunk at a time."""
        return self.store.take(self.key(name), rows)

    def has(self, name: str) -> bool:
        return self.store.has(self.key(name))

    def array(self, name: str) -> zarr.Array:
        return self.store.array(self.key(name))

    @property
    def attrs(self) -> dict[str, Any]:
        return self.store.group_attrs(self.path)

    def set_attrs(self, attrs: Mapping[str, Any]) -> None:
        self.store.set_group_attrs(self.path, attrs)
