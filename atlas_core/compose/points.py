"""The explorer's points: every sample of a layer as typed columns the viewer loads when its points
layer is turned on (never one JSON of objects).

A page opened from disk (``file://``) cannot ``fetch()`` a file, but it can load a script, so
each file is a script that hands its payload to the page's loader (``ATLAS_PUT``, as every other
data file of the viewer): columns are base64 of little-endian typed arrays (a third larger than
the bytes; the page decodes them to typed arrays). Files, under ``viewer/data/points/``:

- ``points.js``: the header: point count, chunk size, field dtypes, class, label and source
  name tables, the grid sizes (the page derives a point's cell at every level from x and y with
  the same float32 rule as :func:`atlas_core.grid.cell_index`, so nothing per level is shipped);
- ``points-<i>.js``: points ``i * chunk ..``: ``x``, ``y`` (float32, the normalized layout),
  ``row`` (uint32 sample row of the store), ``pred`` (int16 model class of the image's top-1
  prediction, -1 none), ``conf`` (float16 top-1 probability, as stored), ``label`` (int16 label,
  -1 none; only where the data has labels), ``source`` (uint16 index into the sources table);
- ``detail-<j>.js``: what an export needs and the map does not, for images ``j * per ..``:
  ``uri`` (strings), ``top`` (int16, top classes per image), ``prob`` (float16), ``pos``
  (int16 (y, x) of each of the images' ``k`` samples); loaded only for the rows exported;
- ``patches.js``: the sample rows that have an exemplar patch (sorted), and where the patch is
  (its place in the exemplar sheets, its source's thumbnail slot, its box in the source).

Strings (class, label, source names, URIs) are JSON strings in the payload and the page writes
them with ``textContent`` only.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import numpy as np

from atlas_core.compose.viewer import put_script
from atlas_core.errors import AtlasError

CHUNK = 262_144  # points per file: 1M points are 4 files of about 7 MB
DETAIL_IMAGES = 16_384  # images per detail file
FIELDS = {  # column -> little-endian dtype, as the page reads it
    "x": "f4",
    "y": "f4",
    "row": "u4",
    "pred": "i2",
    "conf": "f2",
    "label": "i2",
    "source": "u2",
}
MAX_SOURCES = 65_535  # sources beyond this share the last name, "other sources"


def b64(a: np.ndarray, dtype: str) -> str:
    """``a`` as a little-endian typed array of ``dtype``, base64."""
    data = np.ascontiguousarray(a, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()
    return base64.b64encode(data).decode("ascii")


def source_of(uri: str, cropped: bool = False) -> str:
    """The source of an image: its folder's name (``n01440764/``), the tar file it is a member
    of (``shard-0.tar``), or, for a crop of a larger photo (the demo's), the photo's file;
    ``(root)`` for a bare name. Plain string operations: it runs once per image."""
    if cropped:
        return uri.split("::", 1)[0].rstrip("/").rpartition("/")[2] or uri
    if uri.startswith("tar://") and "::" in uri:
        return uri.split("::", 1)[1].rstrip("/").rpartition("/")[2] or uri
    parent = uri.split("://", 1)[-1].rpartition("/")[0].rpartition("/")[2]
    return f"{parent}/" if parent else "(root)"


CROP = "\x00crop:"  # marks a cropped image's key among the folder keys (no path holds a NUL)


class Sources:
    """Source names numbered as they are first met (at most :data:`MAX_SOURCES` + 1)."""

    def __init__(self) -> None:
        self.index: dict[str, int] = {}
        self._ids: dict[tuple[str, bool], int] = {}  # a folder (or a cropped file) -> its id

    def __call__(self, uris: np.ndarray, crops: np.ndarray | None = None) -> np.ndarray:
        """(N,) uint16 source id of each URI (``crops`` (N, 4): -1 rows are whole images).
        Vectorised (Arrow's string kernels): a name is made once per folder (or cropped file,
        or tar member), so a million URIs cost no Python loop over them."""
        import pyarrow as pa
        import pyarrow.compute as pc

        if not len(uris):
            return np.zeros(0, np.uint16)
        text = pa.array(np.asarray(uris, dtype=object), pa.string())
        crop = pa.array(
            np.zeros(len(uris), bool) if crops is None else np.asarray(crops)[:, 0] >= 0
        )
        folder = pc.replace_substring_regex(text, pattern="[^/]*$", replacement="")
        whole = pc.if_else(pc.match_substring(text, "::"), text, folder)
        marked = pc.binary_join_element_wise(CROP, text, "")  # a crop's key is its file
        keys = pc.dictionary_encode(pc.if_else(crop, marked, whole))
        keys = keys.combine_chunks() if isinstance(keys, pa.ChunkedArray) else keys
        ids = np.array(
            [
                self._id(k.removeprefix(CROP), k.startswith(CROP))
                for k in keys.dictionary.to_pylist()
            ],
            np.uint16,
        )
        return ids[keys.indices.to_numpy(zero_copy_only=False)]

    def _id(self, key: str, cropped: bool) -> int:
        if (key, cropped) not in self._ids:
            self._ids[(key, cropped)] = self._number(source_of(key, cropped))
        return self._ids[(key, cropped)]

    def _number(self, name: str) -> int:
        if name not in self.index and len(self.index) >= MAX_SOURCES:
            name = "other sources"
        return self.index.setdefault(name, len(self.index))

    def names(self) -> list[str]:
        return sorted(self.index, key=self.index.__getitem__)


class PointsWriter:
    """Writes the points files as blocks of samples arrive, in row order.

    ``put(name, data)`` stores one file (``name`` relative to ``viewer/data/points/``). Blocks
    are any size; files hold ``chunk`` points each, so a driver holds at most a chunk plus a
    block. ``k`` is the store's samples per image, ``levels`` the grid sizes, ``labelled``
    whether the data has labels (without them no label column is written).
    """

    def __init__(
        self,
        put: Callable[[str, bytes], None],
        *,
        k: int,
        levels: list[int],
        labelled: bool,
        chunk: int = CHUNK,
    ) -> None:
        if chunk < 1:
            raise AtlasError(f"points chunk {chunk} must be at least 1")
        self.put, self.k, self.levels, self.labelled, self.chunk = put, k, levels, labelled, chunk
        self.fields = [f for f in FIELDS if labelled or f != "label"]
        self.pending: dict[str, list[np.ndarray]] = {f: [] for f in self.fields}
        self.held = 0
        self.n = 0
        self.files = 0
        self.classes: set[int] = set()
        self.label_ids: set[int] = set()
        self.details = 0

    def add(
        self,
        *,
        row: np.ndarray,
        x: np.ndarray,
        y: np.ndarray,
        pred: np.ndarray,
        conf: np.ndarray,
        source: np.ndarray,
        label: np.ndarray | None = None,
    ) -> None:
        """One block of points, all (n,): sample ``row`` (int, ascending across blocks), layout
        ``x``, ``y`` in [0, 1], ``pred`` (model class, -1 none), ``conf`` (its probability, NaN
        none), ``source`` (id from :class:`Sources`), ``label`` (-1 none) where labelled."""
        cols = {"row": row, "x": x, "y": y, "pred": pred, "conf": conf, "source": source}
        if self.labelled:
            if label is None:
                raise AtlasError("a labelled points writer needs a label per point")
            cols["label"] = label
        n = len(row)
        for name, a in cols.items():
            if len(a) != n:
                raise AtlasError(f"points column {name} has {len(a)} values for {n} rows")
        for name in ("pred", "label"):
            a = np.asarray(cols.get(name, np.zeros(0, np.int64)))
            if len(a) and (a.max() >= 2**15 or a.min() < -1):
                raise AtlasError(f"points column {name} holds {a.max()}: classes must be < 32768")
            (self.classes if name == "pred" else self.label_ids).update(
                np.unique(a[a >= 0]).tolist()
            )
        if n and int(np.asarray(row).max()) >= 2**32:
            raise AtlasError("sample rows beyond 2**32 do not fit the points' uint32 row column")
        for name in self.fields:
            self.pending[name].append(np.asarray(cols[name]))
        self.held += n
        while self.held >= self.chunk:
            self._flush(self.chunk)

    def _flush(self, n: int) -> None:
        """Write the first ``n`` held points as one file."""
        payload: dict[str, Any] = {}
        for name in self.fields:
            whole = np.concatenate(self.pending[name]) if self.pending[name] else np.zeros(0)
            payload[name] = b64(whole[:n], FIELDS[name])
            self.pending[name] = [whole[n:]]
        self.put(f"points-{self.files}.js", put_script(payload).encode("utf-8"))
        self.files += 1
        self.held -= n
        self.n += n

    def add_details(
        self, start: int, uri: np.ndarray, top: np.ndarray, prob: np.ndarray, pos: np.ndarray
    ) -> None:
        """Images [start, start + len(uri)) for exports: URIs (N,), top classes (N, t) and their
        probabilities (N, t), and the (y, x) positions of their samples (N * k, 2). ``start``
        must be a multiple of :data:`DETAIL_IMAGES` and blocks at most that long."""
        if start % DETAIL_IMAGES or len(uri) > DETAIL_IMAGES:
            raise AtlasError(f"detail blocks start at multiples of {DETAIL_IMAGES} (got {start})")
        payload = {
            "uri": [str(u) for u in uri],
            "top": b64(np.where(top >= 0, top, -1), "i2"),
            "prob": b64(prob, "f2"),
            "pos": b64(pos, "i2"),
            "t": int(top.shape[1]) if top.ndim == 2 else 0,
        }
        self.put(f"detail-{start // DETAIL_IMAGES}.js", put_script(payload).encode("utf-8"))
        self.details = max(self.details, start // DETAIL_IMAGES + 1)

    def add_patches(
        self, row: np.ndarray, e: np.ndarray, slot: np.ndarray, box: np.ndarray
    ) -> None:
        """The sample rows that have a patch (R,), their place in the exemplar sheets (R,), their
        source's thumbnail slot (R,) and the patch's box in the source (R, 4), any order."""
        order = np.argsort(row, kind="stable")
        payload = {
            "row": b64(row[order], "u4"),
            "e": b64(e[order], "i4"),
            "slot": b64(slot[order], "i4"),
            "box": b64(box[order], "f4"),
        }
        self.put("patches.js", put_script(payload).encode("utf-8"))

    def finish(
        self,
        class_name: Callable[[int], str],
        sources: list[str],
        label_names: list[str] | None = None,
        *,
        topk: int = 0,
        patches: bool = False,
    ) -> dict[str, Any]:
        """Write the last chunk and the header; returns the header (the run record's
        ``points`` entry holds its file name and the point count). ``label_names[i]`` names
        label i where given, else the model's class name does."""
        if self.held:
            self._flush(self.held)
        names = label_names or []

        def label_name(i: int) -> str:
            return names[i] if i < len(names) else class_name(i)

        header = {
            "n": self.n,
            "chunk": self.chunk,
            "files": self.files,
            "k": self.k,
            "levels": self.levels,
            "fields": {f: FIELDS[f] for f in self.fields},
            "classes": [[c, class_name(c)] for c in sorted(self.classes)],
            "labels": [[c, label_name(c)] for c in sorted(self.label_ids)]
            if self.labelled
            else None,
            "sources": sources,
            "details": {"files": self.details, "per": DETAIL_IMAGES, "topk": topk},
            "patches": patches,
        }
        self.put("points.js", put_script(header).encode("utf-8"))
        return header


def read_points(files: dict[str, bytes]) -> dict[str, np.ndarray]:
    """The columns of a points folder (``name -> bytes`` as written), concatenated: what the
    page decodes, for tests and notebooks."""
    header = _payload(files["points.js"])
    out: dict[str, list[np.ndarray]] = {f: [] for f in header["fields"]}
    for i in range(header["files"]):
        p = _payload(files[f"points-{i}.js"])
        for f, dt in header["fields"].items():
            raw = base64.b64decode(p[f])
            out[f].append(np.frombuffer(raw, np.dtype(dt).newbyteorder("<")))
    return {f: np.concatenate(v) if v else np.zeros(0) for f, v in out.items()}


def _payload(data: bytes) -> dict[str, Any]:
    import json

    text = data.decode("utf-8")
    out: dict[str, Any] = json.loads(text[text.index(", ") + 2 : text.rindex(");")])
    return out
