"""Exact k-nearest neighbours in blocks of matrix products, and UMAP's out-of-sample placement.

The reduce stage fits UMAP on a seeded sample (the *landmarks*) and places every other row at the
membership-weighted mean of its nearest landmarks' positions: UMAP's own transform initialisation
(umap-learn ``init_transform``), without the optimisation epochs that follow it there. Measured on
200,000 rows (benchmarks/reduce_bench.py) those epochs cost most of umap-learn's ``transform``
time and moved trustworthiness by under 0.003, while searching neighbours exactly instead of
through the approximate search graph moved it by +0.03: so the search is exact.

Exact search is one matrix product per block of queries plus a top-k, on CPU or CUDA (torch).
Distances follow umap-learn's conventions: cosine ``1 - cos``, correlation ``1 - r``, euclidean,
manhattan (``torch.cdist``, no matrix-product shortcut: slower).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

METRICS = ("cosine", "correlation", "euclidean", "manhattan")
# Similarity block held at once: block rows x reference rows float32 values (256 MB).
_BLOCK_VALUES = 1 << 26


def _device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _prepare(x: np.ndarray, metric: str) -> np.ndarray:
    """Rows as the metric compares them: unit rows for cosine, centred unit rows for correlation."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if metric == "correlation":
        x = x - x.mean(axis=1, keepdims=True)
    if metric in ("cosine", "correlation"):
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x


@dataclass
class NeighborIndex:
    """Reference rows (m, C) ready for exact search with ``metric``; picklable (numpy inside), so
    one copy goes to every task through the object store."""

    ref: np.ndarray
    metric: str = "cosine"
    ref_sq: np.ndarray | None = field(default=None, repr=False)

    @classmethod
    def build(cls, ref: np.ndarray, metric: str = "cosine") -> NeighborIndex:
        if metric not in METRICS:
            raise ValueError(f"metric {metric!r} is not one of {', '.join(METRICS)}")
        r = _prepare(ref, metric)
        sq = None
        if metric == "euclidean":
            sq = (r.astype(np.float64) ** 2).sum(1).astype(np.float32)
        return cls(r, metric, sq)

    def __len__(self) -> int:
        return len(self.ref)

    def query(
        self, x: np.ndarray, k: int, *, device: str = "auto", block: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest reference rows of each row of ``x`` (n, C): indices (n, k) int64 and
        distances (n, k) float32, nearest first. A query row equal to a reference row finds it
        at distance 0.

        On CPU the products run on one thread (the caller's setting is restored): a matrix
        product's rounding depends on how many threads split it, and a reused worker process
        may have any count, so this keeps every distance, and every layout placed from them,
        independent of which process ran the search."""
        import torch

        if not _device(device).startswith("cuda") and torch.get_num_threads() != 1:
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                return self.query(x, k, device=device, block=block)
            finally:
                torch.set_num_threads(threads)

        k = min(k, len(self.ref))
        dev = _device(device)
        q_all = _prepare(x, self.metric)
        # object-store arrays are read-only; torch wants writable memory (copied only then)
        ref = torch.from_numpy(np.require(self.ref, requirements="W")).to(dev)
        ref_sq = None
        if self.ref_sq is not None:
            ref_sq = torch.from_numpy(np.require(self.ref_sq, requirements="W")).to(dev)
        block = block or max(64, _BLOCK_VALUES // max(1, len(self.ref)))
        idx = np.empty((len(q_all), k), np.int64)
        dist = np.empty((len(q_all), k), np.float32)
        if self.metric == "euclidean" and ref_sq is None:
            raise ValueError("a euclidean index needs its squared norms (build it with build())")
        with torch.inference_mode():
            for a in range(0, len(q_all), block):
                q = torch.from_numpy(q_all[a : a + block]).to(dev)
                if self.metric == "manhattan":
                    d = torch.cdist(q, ref, p=1.0)
                    v, i = torch.topk(d, k, dim=1, largest=False)
                elif self.metric == "euclidean" and ref_sq is not None:
                    # argmin |q - r|^2 = argmax 2 q.r - |r|^2
                    s = torch.addmm(ref_sq, q, ref.T, beta=-1.0, alpha=2.0)
                    v, i = torch.topk(s, k, dim=1)
                    v = ((q * q).sum(1, keepdim=True) - v).clamp_min(0).sqrt()
                else:
                    v, i = torch.topk(q @ ref.T, k, dim=1)
                    v = (1.0 - v).clamp_min(0)
                idx[a : a + len(q)] = i.cpu().numpy()
                dist[a : a + len(q)] = v.float().cpu().numpy()
        return idx, dist


def membership_weights(dist: np.ndarray, *, iters: int = 64) -> np.ndarray:
    """UMAP's membership of each new row to its k nearest landmarks, normalized per row, as
    umap-learn's ``transform`` computes it (``smooth_knn_dist`` with local_connectivity 0, so
    rho = 0): sigma solved by bisection so that sum over j >= 1 of exp(-d_j / sigma) = log2(k),
    floored at 1e-3 x the row's mean distance (umap-learn floors at the batch mean, which would
    make a row's weights depend on its batch); weights exp(-d_j / sigma). Vectorised over rows."""
    d = np.asarray(dist, np.float64)
    n, k = d.shape
    if k == 1:
        return np.ones((n, 1), np.float32)
    target = np.log2(k)
    rest = d[:, 1:]
    lo = np.zeros((n, 1))
    hi = np.full((n, 1), np.inf)
    mid = np.ones((n, 1))
    for _ in range(iters):
        big = np.exp(-rest / mid).sum(1, keepdims=True) > target
        hi = np.where(big, mid, hi)
        lo = np.where(big, lo, mid)
        mid = np.where(np.isinf(hi), mid * 2.0, (lo + hi) / 2.0)
    sigma = np.maximum(mid, 1e-3 * d.mean(1, keepdims=True))
    w = np.exp(-d / np.maximum(sigma, 1e-300))
    total = w.sum(1, keepdims=True)
    # all weights underflowed (a row far from every landmark): its nearest landmark decides
    w = np.where(total > 0, w / np.where(total > 0, total, 1.0), np.eye(1, k))
    return w.astype(np.float32)


def place(indices: np.ndarray, dist: np.ndarray, embedding: np.ndarray) -> np.ndarray:
    """Rows at the membership-weighted mean of their neighbours' positions: (n, k) -> (n, 2)."""
    w = membership_weights(dist)
    return np.einsum("nk,nkd->nd", w, embedding[indices]).astype(np.float32)
