"""A layer's neighbour index: inverted lists over spherical k-means cells, exact cosine inside.

Rows are split into ``lists`` cells by spherical k-means (seeded sample, seeded init); a query
scans the rows of its ``probe`` nearest cells and ranks them by the exact cosine on the held
vectors (the store's own float16 values), so every cosine returned is exact and only a neighbour
in an unscanned cell can be missed. The all-rows graph scans, for the rows of one cell together,
the ``graph_probe`` cells nearest to that cell's centroid: one matrix product per block of rows,
which is what makes 1M rows take minutes on two cores (benchmarks/neighbours_bench.py).

Determinism: every matrix product runs on one torch thread (a product's rounding depends on how
many threads split it); parallelism is over independent work units (blocks of queries, cells), so
results and bytes depend on the data, the parameters and the seed only. Ties (equal cosines) go
to the lower row, in every path.

On CUDA (``device="cuda"``: the build's k-means and assignment, and the all-rows graph) the
products and top-k selections run on the GPU, one work unit at a time, with the unit rows held
there (n x C x 4 bytes); the tie rules and the merging are the CPU's. Cosines then carry the
GPU's float32 rounding: the same on one kind of GPU run to run, not bit-equal to the CPU's, so a
neighbour whose cosine ties another's within rounding may change places.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from atlas_core.determinism import one_thread
from atlas_core.errors import ConfigError, StoreError
from atlas_core.neighbours.params import NeighbourParams

log = logging.getLogger(__name__)
T = TypeVar("T")

FORMAT = "activation-atlas-neighbours"
FORMAT_VERSION = 1
_MAGIC = b"ATLASNN\x00"
# Similarity values one work unit holds at once (float32: 16 MB).
_BLOCK_VALUES = 1 << 22
Blocks = Iterable[tuple[int, np.ndarray]]


@contextmanager
def _full_float32(device: str) -> Iterator[None]:
    """CUDA products in full float32 inside the block (no TF32, whatever the process set)."""
    if device == "cpu":
        yield
        return
    import torch

    was = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = was


def _map(fn: Callable[[Any], T], items: Sequence[Any], threads: int) -> list[T]:
    """fn over items on ``threads`` Python threads (torch releases the GIL in its kernels)."""
    if threads <= 1 or len(items) <= 1:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(fn, items))


@dataclass
class _Rows:
    """Present rows read from blocks: ``rows`` (n,) int64 ascending, ``vectors`` (n, C)."""

    rows: np.ndarray
    vectors: np.ndarray
    n_rows: int
    digest: str


def _read(blocks: Blocks, dtype: str) -> _Rows:
    """Gather the present rows of ``blocks`` ((row_offset, (b, C) float array), ascending and
    non-overlapping); a row holding a NaN or an infinity is absent. The digest (blake2b of every
    present row's index and held bytes) lets a loaded index check it got the same vectors."""
    # rows and bytes hashed apart, so the digest does not depend on how the rows were blocked
    row_hash, vec_hash = hashlib.blake2b(digest_size=16), hashlib.blake2b(digest_size=16)
    rows, vecs = [], []
    end, dim = 0, -1
    for offset, block in blocks:
        b = np.asarray(block)
        if b.ndim != 2 or (dim >= 0 and b.shape[1] != dim) or offset < end:
            raise ConfigError(
                "blocks",
                f"block at row {offset} of shape {b.shape}",
                valid=f"2-D blocks of {dim if dim >= 0 else 'C'} columns at ascending offsets "
                f">= {end}",
                fix="feed the layer's activations in row order, one (offset, block) at a time.",
            )
        dim = b.shape[1]
        keep = np.flatnonzero(np.isfinite(b).all(1))
        held = np.ascontiguousarray(b[keep], dtype=dtype)
        r = (offset + keep).astype(np.int64)
        row_hash.update(r.tobytes())
        vec_hash.update(held.tobytes())
        rows.append(r)
        vecs.append(held)
        end = offset + len(b)
    if dim < 0:
        raise ConfigError("blocks", "no blocks", fix="feed at least one block of activations.")
    return _Rows(
        np.concatenate(rows),
        np.concatenate(vecs),
        end,
        f"{dim}:{row_hash.hexdigest()}:{vec_hash.hexdigest()}",
    )


def _norms(vectors: np.ndarray) -> np.ndarray:
    out = np.empty(len(vectors), np.float32)
    for a in range(0, len(vectors), 65536):
        v = vectors[a : a + 65536].astype(np.float32)
        out[a : a + 65536] = np.sqrt(np.einsum("ij,ij->i", v, v))
    return out


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), np.float32(1e-30))


def _topk(cos: Any, cand_rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The best ``k`` of each row of ``cos`` (b, m) torch float32 (on any device) over
    candidates ``cand_rows`` (m,): rows (b, k) int64 and cosines (b, k) float32, best first,
    ties to the lower row; -inf (excluded) entries are never returned (-1 and NaN fill the
    tail)."""
    import torch

    b, m = cos.shape
    kk = min(k, m)
    vals_t, idx_t = torch.topk(cos, kk, dim=1)
    vals, rows = vals_t.cpu().numpy(), cand_rows[idx_t.cpu().numpy()]
    order = np.lexsort((rows, -vals), axis=1)
    vals, rows = np.take_along_axis(vals, order, 1), np.take_along_axis(rows, order, 1)
    # a tie at the k-th value with more candidates than places: topk chose among them freely
    crowded = (cos >= vals_t[:, -1:]).sum(1).cpu().numpy() > kk if kk else np.zeros(b, bool)
    for i in np.flatnonzero(crowded):
        c = cos[i].cpu().numpy()
        sel = np.flatnonzero(c >= vals[i, -1])
        best = sel[np.lexsort((cand_rows[sel], -c[sel]))[:kk]]
        rows[i], vals[i] = cand_rows[best], c[best]
    out_rows = np.full((b, k), -1, np.int64)
    out_cos = np.full((b, k), np.nan, np.float32)
    ok = np.isfinite(vals)
    out_rows[:, :kk] = np.where(ok, rows, -1)
    out_cos[:, :kk] = np.where(ok, vals, np.nan)
    return out_rows, out_cos


def _merge(
    a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray], k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Two best-first (rows, cosines) lists of the same queries -> the best k, ties lower row."""
    rows = np.concatenate([a[0], b[0]], 1)
    cos = np.concatenate([a[1], b[1]], 1)
    key = np.where(np.isnan(cos), np.inf, -cos)
    order = np.lexsort((rows, key), axis=1)[:, :k]
    return np.take_along_axis(rows, order, 1), np.take_along_axis(cos, order, 1)


def _split(ranges: list[tuple[int, int]], cap: int) -> list[list[tuple[int, int]]]:
    """Position ranges cut into chunks of at most ``cap`` positions, in order."""
    chunks: list[list[tuple[int, int]]] = [[]]
    room = cap
    for lo, hi in ranges:
        while lo < hi:
            if room == 0:
                chunks.append([])
                room = cap
            step = min(hi - lo, room)
            chunks[-1].append((lo, lo + step))
            lo, room = lo + step, room - step
    return [c for c in chunks if c]


def _assign(
    units: Callable[[int, int], np.ndarray],
    n: int,
    centroids: np.ndarray,
    threads: int,
    device: str = "cpu",
) -> np.ndarray:
    """Nearest centroid (highest cosine, ties to the lower index) of rows 0..n, where
    ``units(a, b)`` gives unit rows a..b as float32: (n,) int64. Off the CPU one block at a
    time (``threads`` then only matter on the CPU)."""
    import torch

    c = torch.from_numpy(centroids).to(device)
    step = max(1, _BLOCK_VALUES // max(1, len(centroids)))

    def one(a: int) -> np.ndarray:
        u = torch.from_numpy(units(a, min(n, a + step))).to(device)
        return torch.argmax(u @ c.T, dim=1).cpu().numpy()

    with one_thread(), _full_float32(device):
        parts = _map(one, list(range(0, n, step)), threads if device == "cpu" else 1)
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def _kmeans(
    sample: np.ndarray, lists: int, iters: int, seed: int, threads: int, device: str = "cpu"
) -> np.ndarray:
    """Spherical k-means of unit rows ``sample`` (s, C): unit centroids (lists, C) float32.
    Seeded initial centroids (distinct sample rows); a cell that empties keeps its centroid."""
    rng = np.random.default_rng(seed)
    cent = sample[np.sort(rng.choice(len(sample), lists, replace=False))].copy()
    for _ in range(iters):
        assign = _assign(lambda a, b: sample[a:b], len(sample), cent, threads, device)
        counts = np.bincount(assign, minlength=lists)
        full = counts > 0
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])[full]
        sums = np.add.reduceat(sample[np.argsort(assign, kind="stable")].astype(np.float64), starts)
        cent[full] = _unit(sums)
    return cent


@dataclass
class NeighbourIndex:
    """Cosine k-nearest neighbours over one layer's present rows.

    params: how it was built. n_rows: rows of the layer (absent ones included). centroids:
    (lists, C) float32 unit cell centres. rows: (n,) int64 present rows in cell order (ascending
    within a cell). offsets: (lists + 1,) int64, cell j holds rows[offsets[j]:offsets[j + 1]].
    vectors: (n, C) ``params.vector_dtype`` in cell order; norms: (n,) float32. digest: what
    identifies the vectors (their rows and bytes), checked when an index is loaded.
    """

    params: NeighbourParams
    n_rows: int
    centroids: np.ndarray
    rows: np.ndarray
    offsets: np.ndarray
    vectors: np.ndarray
    norms: np.ndarray
    digest: str
    _where: np.ndarray | None = field(default=None, repr=False, compare=False)

    @classmethod
    def build(
        cls,
        blocks: Blocks,
        params: NeighbourParams | None = None,
        *,
        threads: int = 1,
        device: str = "cpu",
    ) -> NeighbourIndex:
        """The index of ``blocks``: (row_offset, (b, C) float32) in ascending row order, as read
        from the store; rows holding NaN are absent. Holds the present rows (n x C x 2 bytes as
        float16), and at most twice that while building. ``threads`` splits the work, never the
        results; ``device``: where the k-means and the assignment multiply (module docstring)."""
        p = params or NeighbourParams()
        got = _read(blocks, p.vector_dtype)
        n, dim = got.vectors.shape
        norms = _norms(got.vectors)
        lists = p.lists_for(n) if n else 1
        centroids = np.zeros((lists, dim), np.float32)
        assign = np.zeros(n, np.int64)
        if lists > 1:
            rng = np.random.default_rng(p.seed)
            take = np.sort(rng.choice(n, min(n, p.train_per_list * lists), replace=False))
            sample = got.vectors[take].astype(np.float32) / np.maximum(norms[take, None], 1e-30)
            centroids = _kmeans(sample, lists, p.iters, p.seed, threads, device)
            del sample

            def units(a: int, b: int) -> np.ndarray:
                return got.vectors[a:b].astype(np.float32) / np.maximum(norms[a:b, None], 1e-30)

            assign = _assign(units, n, centroids, threads, device)
        order = np.argsort(assign, kind="stable")
        offsets = np.concatenate([[0], np.cumsum(np.bincount(assign, minlength=lists))])
        log.info("neighbour index: %d of %d rows present, %d lists", n, got.n_rows, lists)
        return cls(
            p,
            got.n_rows,
            centroids,
            got.rows[order],
            offsets.astype(np.int64),
            got.vectors[order],
            norms[order],
            got.digest,
        )

    @property
    def lists(self) -> int:
        return len(self.centroids)

    @property
    def dim(self) -> int:
        return self.centroids.shape[1]

    def describe(self) -> dict[str, Any]:
        """What produced the index: method, library and version, lists, parameters, seed."""
        import torch

        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "method": "exact" if self.lists == 1 else "ivf-flat, exact cosine re-rank",
            "library": "atlas_core.neighbours (torch matmul)",
            "torch": torch.__version__.split("+")[0],
            "lists": self.lists,
            "present": len(self.rows),
            "n_rows": self.n_rows,
            "dim": self.dim,
            "params": self.params.as_dict(),
        }

    def _units(self, chunk: list[tuple[int, int]], table: np.ndarray | None = None) -> np.ndarray:
        """Unit float32 rows at the positions of ``chunk``, from ``table`` (all of them, already
        unit float32) when given, else converted from the held vectors."""
        if table is not None:
            return np.concatenate([table[lo:hi] for lo, hi in chunk])
        v = np.concatenate([self.vectors[lo:hi] for lo, hi in chunk]).astype(np.float32)
        n = np.concatenate([self.norms[lo:hi] for lo, hi in chunk])
        return v / np.maximum(n[:, None], np.float32(1e-30))

    def _scan(
        self,
        q: Any,
        ranges: list[tuple[int, int]],
        own: np.ndarray | None,
        k: int,
        allowed: np.ndarray | None = None,
        table: Any = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Best k of unit queries ``q`` (b, C) over the positions in ``ranges`` (ascending,
        not overlapping: the positions are then sorted, which the exclusion relies on), never the
        position ``own[i]`` for query i (-1: none); ``allowed`` (b, lists) bool: the cells each
        query may take rows from (None: all in ``ranges``); ``table``: see _units, or every unit
        row as a torch tensor, with ``q`` a tensor on its device (the graph's path)."""
        import torch

        best = (np.full((len(q), k), -1, np.int64), np.full((len(q), k), np.nan, np.float32))
        qt = q if torch.is_tensor(q) else torch.from_numpy(q)
        for chunk in _split(ranges, max(1, _BLOCK_VALUES // len(q))):
            if torch.is_tensor(table):
                cand = torch.cat([table[lo:hi] for lo, hi in chunk])
            else:
                cand = torch.from_numpy(self._units(chunk, table))
            cos = qt @ cand.T
            pos = np.concatenate([np.arange(lo, hi) for lo, hi in chunk])
            if allowed is not None:
                cell = np.searchsorted(self.offsets, pos, side="right") - 1
                cos.masked_fill_(torch.from_numpy(~allowed[:, cell]).to(cos.device), -np.inf)
            if own is not None and (own >= 0).any():
                i = np.flatnonzero(np.isin(own, pos))
                j = torch.from_numpy(np.searchsorted(pos, own[i])).to(cos.device)
                cos[torch.from_numpy(i).to(cos.device), j] = -np.inf
            best = _merge(best, _topk(cos, self.rows[pos], k), k)
        return best

    def _positions(self, exclude: np.ndarray | None, q: int) -> np.ndarray:
        """Positions of the rows to exclude, one per query (-1: none or absent)."""
        if exclude is None:
            return np.full(q, -1, np.int64)
        ex = np.asarray(exclude, np.int64).reshape(-1)
        if ex.shape != (q,):
            raise ConfigError("exclude", f"shape {ex.shape}", valid=f"({q},), one row per query")
        if self._where is None:  # row -> position, made once (n_rows x 8 bytes)
            self._where = np.full(self.n_rows, -1, np.int64)
            self._where[self.rows] = np.arange(len(self.rows))
        inside = (ex >= 0) & (ex < self.n_rows)
        return np.where(inside, self._where[np.clip(ex, 0, max(0, self.n_rows - 1))], -1)

    def _queries(self, queries: np.ndarray) -> np.ndarray:
        q = np.asarray(queries, np.float32)
        q = q.reshape(1, -1) if q.ndim == 1 else q
        if q.ndim != 2 or q.shape[1] != self.dim or not np.isfinite(q).all():
            raise ConfigError(
                "queries",
                f"array of shape {q.shape}" + ("" if np.isfinite(q).all() else " holding NaN"),
                valid=f"finite (q, {self.dim}) vectors of this layer",
                fix="query with a present row's activation, a cell mean or a selection's mean.",
            )
        return _unit(q)

    def search(
        self,
        queries: np.ndarray,
        k: int = 10,
        *,
        exclude: np.ndarray | None = None,
        probe: int | None = None,
        threads: int = 1,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` present rows of highest cosine to each query (q, C) (or (C,)): rows (q, k)
        int64 and cosines (q, k) float32, best first, ties to the lower row; -1 and NaN where
        fewer than k rows were scanned. ``exclude`` (q,) int64: a row each query must not return
        (the query's own row; -1 for none). ``probe``: cells scanned (default params.probe)."""
        qn = self._queries(queries)
        own = self._positions(exclude, len(qn))
        groups = self._groups(qn, probe)
        with one_thread():
            parts = _map(lambda g: self._search_group(qn, own, g, k), groups, threads)
        rows = np.full((len(qn), k), -1, np.int64)
        cos = np.full((len(qn), k), np.nan, np.float32)
        for (which, _, _), (r, c) in zip(groups, parts, strict=True):
            rows[which], cos[which] = r, c
        return rows, cos

    def _groups(self, qn: np.ndarray, probe: int | None) -> list[tuple[np.ndarray, Any, Any]]:
        """Queries in work units: (query indices, cells scanned (ascending), allowed (b, lists)
        or None). With several cells, queries sharing their nearest cell go together, so a unit
        scans the union of its queries' ``probe`` cells with one product and masks per query."""
        everything = np.arange(self.lists)
        if self.lists == 1:
            return [
                (np.arange(a, min(len(qn), a + 256)), everything, None)
                for a in range(0, len(qn), 256)
            ]
        cells = self._nearest_cells(qn, min(probe or self.params.probe, self.lists))
        order = np.argsort(cells[:, 0], kind="stable")
        groups = []
        for a in range(0, len(qn), 32):
            which = order[a : a + 32]
            allowed = np.zeros((len(which), self.lists), bool)
            np.put_along_axis(allowed, cells[which], True, axis=1)
            groups.append((which, np.flatnonzero(allowed.any(0)), allowed))
        return groups

    def _search_group(
        self, qn: np.ndarray, own: np.ndarray, group: tuple[np.ndarray, Any, Any], k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        which, cells, allowed = group
        ranges = [(int(self.offsets[c]), int(self.offsets[c + 1])) for c in cells]
        return self._scan(qn[which], ranges, own[which], k, allowed)

    def _nearest_cells(self, qn: np.ndarray, p: int, *, own: bool = False) -> np.ndarray:
        """The ``p`` cells of highest centroid cosine for each unit row (q, p), best first (ties
        to the lower cell); ``own``: qn are the centroids themselves and each keeps its own."""
        import torch

        with one_thread():
            cos = torch.from_numpy(qn) @ torch.from_numpy(self.centroids).T
            if own:
                cos.fill_diagonal_(np.inf)
            cells = torch.topk(cos, p, dim=1).indices.numpy()
        return cells

    def knn_graph(
        self, k: int = 10, *, probe: int | None = None, threads: int = 1, device: str = "cpu"
    ) -> tuple[np.ndarray, np.ndarray]:
        """Every present row's ``k`` nearest other present rows: rows (n_rows, k) int64 and
        cosines (n_rows, k) float32, indexed by row (absent rows: -1 and NaN), best first, ties
        to the lower row, the row itself never included. The rows of one cell are searched
        together over the ``probe`` cells nearest to its centroid (default params.graph_probe;
        exact with one cell). ``device``: where the products and top-k run (module docstring);
        ``threads`` only matter on the CPU."""
        import torch

        p = min(probe or self.params.graph_probe, self.lists)
        near = self._nearest_cells(self.centroids, p, own=True)
        units = []
        for c in range(self.lists):
            lo, hi = int(self.offsets[c]), int(self.offsets[c + 1])
            ranges = [(int(self.offsets[j]), int(self.offsets[j + 1])) for j in np.sort(near[c])]
            m = sum(b - a for a, b in ranges)
            step = int(np.clip(_BLOCK_VALUES // max(m, 1), 16, 1024))
            units += [(a, min(hi, a + step), ranges) for a in range(lo, hi, step)]

        # every row is scanned graph_probe times: convert the held vectors to unit float32 once
        # (n x C x 4 bytes while the graph is built, on the device that multiplies) instead of
        # once per scan
        n = len(self.vectors)
        if device == "cpu":
            held = torch.from_numpy(np.empty(self.vectors.shape, np.float32))
        else:
            held = torch.empty(self.vectors.shape, dtype=torch.float32, device=device)
        for a in range(0, n, 65536):
            held[a : a + 65536] = torch.from_numpy(self._units([(a, min(n, a + 65536))]))

        def one(  # (held bound as a default, so that `del` below frees it)
            unit: tuple[int, int, list[tuple[int, int]]], held: Any = held
        ) -> tuple[np.ndarray, np.ndarray]:
            a, b, ranges = unit
            return self._scan(held[a:b], ranges, np.arange(a, b), k, table=held)

        with one_thread(), _full_float32(device), torch.inference_mode():
            parts = _map(one, units, threads if device == "cpu" else 1)
        del one, held
        if device != "cpu":  # give the GPU back to the tasks after this one in this worker
            torch.cuda.empty_cache()
        rows = np.full((self.n_rows, k), -1, np.int64)
        cos = np.full((self.n_rows, k), np.nan, np.float32)
        for (lo, hi, _), (found, found_cos) in zip(units, parts, strict=True):
            rows[self.rows[lo:hi]], cos[self.rows[lo:hi]] = found, found_cos
        return rows, cos

    def graph_device(self, device: str) -> str:
        """``device`` for :meth:`knn_graph`, or ``cpu`` where that GPU's free memory cannot
        hold the unit rows the graph keeps there (n x C x 4 bytes) with room to work: said in
        the log, and the caller records which it got."""
        if device == "cpu":
            return device
        import torch

        need = len(self.vectors) * self.dim * 4 * 1.25 + 2**30
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        if need <= free:
            return device
        log.warning(
            "neighbour graph: %s has %.1f GB free, the %d x %d unit rows need %.1f GB: "
            "computing it on the CPU",
            device,
            free / 1e9,
            len(self.vectors),
            self.dim,
            need / 1e9,
        )
        return "cpu"

    def to_bytes(self, *, with_vectors: bool = False) -> bytes:
        """The index as bytes (a store keeps them as a uint8 array): a magic, a JSON header
        (format, version, parameters, method, library versions, the vectors' digest, the arrays'
        dtypes and shapes), then the arrays raw. Without ``with_vectors`` (default) the vectors
        stay out (they are the store's activations: 1M x 112 float16 is 224 MB, the rest about
        12 MB) and ``from_bytes`` takes them from the same blocks again. Same data, parameters
        and versions -> same bytes."""
        arrays = {"centroids": self.centroids, "rows": self.rows, "offsets": self.offsets}
        if with_vectors:
            arrays["vectors"] = self.vectors
        header = {
            **self.describe(),
            "digest": self.digest,
            "arrays": [[k, v.dtype.str, list(v.shape)] for k, v in arrays.items()],
        }
        text = json.dumps(header, sort_keys=True).encode()
        parts = [_MAGIC, np.uint64(len(text)).tobytes(), text]
        parts += [np.ascontiguousarray(v).tobytes() for v in arrays.values()]
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, blob: bytes | np.ndarray, blocks: Blocks | None = None) -> NeighbourIndex:
        """The index ``to_bytes`` wrote; ``blocks`` (the same activations it was built from)
        are needed when the bytes hold no vectors, and must match the recorded digest."""
        header, arrays = _parse(bytes(blob) if isinstance(blob, np.ndarray) else blob)
        params = NeighbourParams(**header["params"])
        vectors = arrays.get("vectors")
        if vectors is None:
            if blocks is None:
                raise ConfigError(
                    "blocks",
                    None,
                    fix="this index was saved without its vectors: pass the layer's activation "
                    "blocks it was built from (the store's acts, in row order).",
                )
            got = _read(blocks, params.vector_dtype)
            if got.digest != header["digest"] or got.n_rows != header["n_rows"]:
                raise StoreError(
                    f"the activations ({got.n_rows} rows, digest {got.digest}) are not those "
                    f"the neighbour index was built from ({header['n_rows']} rows, digest "
                    f"{header['digest']}): rebuild the index from the layer's current acts"
                )
            vectors = got.vectors[np.searchsorted(got.rows, arrays["rows"])]
        return cls(
            params,
            int(header["n_rows"]),
            arrays["centroids"],
            arrays["rows"],
            arrays["offsets"],
            vectors,
            _norms(vectors),
            header["digest"],
        )


def _parse(blob: bytes) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Header and arrays of an index's bytes; refuses other formats and versions."""
    if blob[: len(_MAGIC)] != _MAGIC:
        raise StoreError(f"not a neighbour index (no {FORMAT} magic): rebuild the index")
    at = len(_MAGIC) + 8
    size = int(np.frombuffer(blob[len(_MAGIC) : at], np.uint64)[0])
    header = json.loads(blob[at : at + size])
    if header.get("format") != FORMAT or header.get("format_version") != FORMAT_VERSION:
        raise StoreError(
            f"neighbour index format {header.get('format')!r} version "
            f"{header.get('format_version')!r}; this code reads {FORMAT!r} version "
            f"{FORMAT_VERSION}: rebuild the index"
        )
    at += size
    arrays = {}
    for name, dtype, shape in header["arrays"]:
        count = int(np.prod(shape))
        arrays[name] = np.frombuffer(blob, np.dtype(dtype), count, offset=at).reshape(shape).copy()
        at += count * np.dtype(dtype).itemsize
    return header, arrays
