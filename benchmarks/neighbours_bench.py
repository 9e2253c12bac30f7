"""Nearest neighbours in activation space (cosine): exact blocked search against ANN libraries,
and our index (atlas_core.neighbours) against the exact peer.

For each candidate: build time (libraries on one thread: their deterministic setting; ours on
--threads, which never changes its bytes), index bytes against the activations' float16 bytes,
single-query latency for k = 10 (one query at a time, one thread), recall@10 against exact cosine
search (row queries, the row itself excluded), and the all-rows kNN graph (k = 10 for every row,
what the diff of two runs needs): for the libraries and the exact peer timed on the recall rows
and scaled linearly to every row (the per-row cost does not depend on which rows); ours builds
the whole graph, and its recall there is the graph's. Library search settings are swept and the
cheapest reaching recall 0.95 is reported. Determinism (at --det-rows): each index is built twice
on one thread and once on two, and the serialized bytes and search results compared.

Data: activations are float16 in the store, so vectors are drawn in float32, rounded to float16
and searched as float32. Two generators: ``signed`` (the default) matches what EfficientNet-Lite0
blocks.4 gives on photographs (measured on 3,000 crops of scikit-image's photos: a linear
bottleneck, about half the values negative, 74 of 112 directions for 90% of the variance, mean
cosine^2 0.07, median cosine to the nearest of 3,000 rows 0.70; this generator: 85, 0.09, 0.74):
a Gaussian mixture of 400 clusters with Zipf-like sizes, each an anisotropic Gaussian with a
power-law spectrum in its own random rotation. ``relu`` is the post-ReLU mixture of
benchmarks.common (non-negative, low-dimensional clusters: easier for every ANN method).

Each run replaces, in benchmarks/results/<out>.json, the sizes and candidates it measures; every
candidate keeps the exact peer of its own run (``peer``), and each size records the load average.

    python -m benchmarks.neighbours_bench --rows 100000             # every candidate, minutes
    python -m benchmarks.neighbours_bench                            # 100k, then 1M (big-libs)
    python -m benchmarks.neighbours_bench --rows 1000000 --dim 320 --libs exact,ours --no-graph
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from benchmarks.common import RESULTS, Timer, mixture, peak_rss_mb, write

log = logging.getLogger("benchmarks.neighbours")
K = 10
TARGET = 0.95
LIBS = ("exact", "faiss-hnsw", "faiss-ivf", "hnswlib", "usearch", "ours")


def signed_mixture(n: int, dim: int, *, clusters: int = 400, seed: int = 0) -> np.ndarray:
    """(n, dim) float32 rounded through float16: a mixture of anisotropic Gaussians (power-law
    spectrum, exponent 0.4, in a random rotation per cluster), cluster sizes ~ 1 / (i + 10).
    Generated in blocks so that 1M x 320 needs no more than the output's memory."""
    rng = np.random.default_rng(seed)
    spectrum = np.arange(1, dim + 1) ** -0.4
    spectrum = spectrum / np.sqrt((spectrum**2).sum()) * np.sqrt(dim)
    basis = np.linalg.qr(rng.normal(size=(dim, dim)))[0]
    # a shared offset: real rows have a small common direction (mean cosine^2 about 0.07)
    offset = rng.normal(size=dim) * 0.35
    centres = offset + (rng.normal(size=(clusters, dim)) * spectrum) @ basis.T
    rotations = [np.linalg.qr(rng.normal(size=(dim, dim)))[0] for _ in range(clusters)]
    weights = 1.0 / (np.arange(clusters) + 10.0)
    label = rng.choice(clusters, n, p=weights / weights.sum())
    out = np.empty((n, dim), np.float32)
    for c in range(clusters):
        rows = np.flatnonzero(label == c)
        z = rng.normal(size=(len(rows), dim)).astype(np.float32) * (0.8 * spectrum)
        out[rows] = centres[c] + z @ rotations[c].T
    return out.astype(np.float16).astype(np.float32)


def make_data(kind: str, n: int, dim: int, seed: int = 0) -> np.ndarray:
    if kind == "signed":
        return signed_mixture(n, dim, seed=seed)
    return mixture(n, dim, seed=seed).astype(np.float16).astype(np.float32)


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def exact_topk(
    ref: np.ndarray, q: np.ndarray, k: int, *, block: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine top-k of unit queries against unit rows ``ref`` (blocked torch matmul)."""
    import torch

    r = torch.from_numpy(ref)
    rows = np.empty((len(q), k), np.int64)
    sims = np.empty((len(q), k), np.float32)
    with torch.inference_mode():
        for a in range(0, len(q), block):
            v, i = torch.topk(torch.from_numpy(q[a : a + block]) @ r.T, k, dim=1)
            rows[a : a + block], sims[a : a + block] = i.numpy(), v.numpy()
    return rows, sims


def drop_self(rows: np.ndarray, self_rows: np.ndarray, k: int) -> np.ndarray:
    """(q, k + 1) results of row queries -> (q, k) without the query's own row."""
    keep = rows != self_rows[:, None]
    out = np.full((len(rows), k), -1, np.int64)
    for i in range(len(rows)):
        r = rows[i][keep[i]][:k]
        out[i, : len(r)] = r
    return out


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    hits = sum(len(np.intersect1d(f[f >= 0], t)) for f, t in zip(found, truth, strict=True))
    return hits / truth.size


@dataclass
class Candidate:
    """One library at one setting: build(x, threads), search(q, k, threads) on unit vectors,
    to_bytes(); ``knobs`` are the search settings swept, cheapest first."""

    name: str
    params: dict[str, Any]
    build: Callable[[np.ndarray, int], Any]
    search: Callable[[Any, np.ndarray, int, int, Any], tuple[np.ndarray, np.ndarray]]
    to_bytes: Callable[[Any], bytes]
    knobs: list[Any] = field(default_factory=list)


def _faiss_threads(threads: int) -> None:
    import faiss

    faiss.omp_set_num_threads(threads)


def faiss_hnsw(m: int = 32, ef_construction: int = 64) -> Candidate:
    import faiss

    def build(x: np.ndarray, threads: int) -> Any:
        _faiss_threads(threads)
        index = faiss.IndexHNSWFlat(x.shape[1], m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
        index.add(x)
        return index

    def search(index: Any, q: np.ndarray, k: int, threads: int, ef: Any) -> Any:
        _faiss_threads(threads)
        index.hnsw.efSearch = max(ef, k)
        sims, rows = index.search(q, k)
        return rows.astype(np.int64), sims

    return Candidate(
        "faiss-hnsw",
        {"library": f"faiss-cpu {faiss.__version__}", "M": m, "efConstruction": ef_construction},
        build,
        search,
        lambda index: faiss.serialize_index(index).tobytes(),
        [16, 32, 64, 128, 256, 512],
    )


def faiss_ivf(n: int) -> Candidate:
    import faiss

    nlist = int(2 ** round(np.log2(4 * np.sqrt(n))))

    def build(x: np.ndarray, threads: int) -> Any:
        _faiss_threads(threads)
        quantizer = faiss.IndexFlatIP(x.shape[1])
        index = faiss.IndexIVFFlat(quantizer, x.shape[1], nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = 1234
        index.cp.niter = 10
        index.train(x[np.random.default_rng(0).permutation(len(x))[: 64 * nlist]])
        index.add(x)
        return index

    def search(index: Any, q: np.ndarray, k: int, threads: int, nprobe: Any) -> Any:
        _faiss_threads(threads)
        index.nprobe = nprobe
        sims, rows = index.search(q, k)
        return rows.astype(np.int64), sims

    return Candidate(
        "faiss-ivf",
        {"library": f"faiss-cpu {faiss.__version__}", "nlist": nlist, "niter": 10, "seed": 1234},
        build,
        search,
        lambda index: faiss.serialize_index(index).tobytes(),
        [4, 8, 16, 32, 64, 128, 256],
    )


def hnswlib_index(m: int = 16, ef_construction: int = 100) -> Candidate:
    import hnswlib

    def build(x: np.ndarray, threads: int) -> Any:
        index = hnswlib.Index(space="ip", dim=x.shape[1])
        index.init_index(len(x), ef_construction=ef_construction, M=m, random_seed=100)
        index.add_items(x, np.arange(len(x)), num_threads=threads)
        return index

    def search(index: Any, q: np.ndarray, k: int, threads: int, ef: Any) -> Any:
        index.set_ef(max(ef, k))
        rows, dist = index.knn_query(q, k=k, num_threads=threads)
        return rows.astype(np.int64), (1.0 - dist).astype(np.float32)

    def to_bytes(index: Any) -> bytes:
        import pickle

        return pickle.dumps(index)

    return Candidate(
        "hnswlib",
        {"library": "hnswlib 0.8.0", "M": m, "ef_construction": ef_construction, "seed": 100},
        build,
        search,
        to_bytes,
        [16, 32, 64, 128, 256, 512],
    )


def usearch_index(
    dtype: str = "f16", connectivity: int = 16, expansion_add: int = 128
) -> Candidate:
    import usearch
    from usearch.index import Index

    def build(x: np.ndarray, threads: int) -> Any:
        index = Index(
            ndim=x.shape[1],
            metric="ip",
            dtype=dtype,
            connectivity=connectivity,
            expansion_add=expansion_add,
        )
        index.add(np.arange(len(x)), x, threads=threads)
        return index

    def search(index: Any, q: np.ndarray, k: int, threads: int, ef: Any) -> Any:
        index.expansion_search = max(ef, k)
        found = index.search(q, k, threads=threads)
        return found.keys.astype(np.int64), (1.0 - found.distances).astype(np.float32)

    return Candidate(
        f"usearch-{dtype}",
        {
            "library": f"usearch {usearch.__version__}",
            "dtype": dtype,
            "connectivity": connectivity,
            "expansion_add": expansion_add,
        },
        build,
        search,
        lambda index: bytes(index.save()),
        [16, 32, 64, 128, 256, 512],
    )


def ours_index(exact_rows: int | None = None) -> Candidate:
    """Our index at its defaults (``exact_rows`` overrides when one list would be exact)."""
    from atlas_core.neighbours import NeighbourIndex, NeighbourParams

    params = NeighbourParams() if exact_rows is None else NeighbourParams(exact_rows=exact_rows)

    def blocks(x: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        for a in range(0, len(x), 65536):
            yield a, x[a : a + 65536]

    def build(x: np.ndarray, threads: int) -> Any:
        return NeighbourIndex.build(blocks(x), params, threads=threads)

    def search(index: Any, q: np.ndarray, k: int, threads: int, probe: Any) -> Any:
        return index.search(q, k, probe=probe, threads=threads)

    return Candidate(
        "ours",
        {"library": "atlas_core.neighbours", **params.as_dict()},
        build,
        search,
        lambda index: index.to_bytes(),
        [None],
    )


def _latency_ms(fn: Callable[[np.ndarray], Any], queries: np.ndarray) -> dict[str, float]:
    """Median and 95th percentile of one query at a time (k = 10), in ms."""
    times = []
    for q in queries:
        t0 = time.perf_counter()
        fn(q[None])
        times.append(time.perf_counter() - t0)
    return {
        "query_ms_median": round(1e3 * float(np.median(times)), 3),
        "query_ms_p95": round(1e3 * float(np.percentile(times, 95)), 3),
    }


@dataclass
class Truth:
    """Exact answers for the recall figures: ``rows`` (q,) sampled query rows, ``knn`` (q, k)
    their exact neighbours (self excluded)."""

    rows: np.ndarray
    knn: np.ndarray


def measure_exact(
    x: np.ndarray, truth_rows: np.ndarray, lat_rows: np.ndarray
) -> tuple[Truth, dict]:
    """The exact peer (torch, one thread): per query, batched, and the all-rows graph scaled
    from a block of 2048 rows. Also numpy's per-query time."""
    import torch

    torch.set_num_threads(1)
    with Timer() as t_truth:
        rows, _ = exact_topk(x, x[truth_rows], K + 1)
    truth = Truth(truth_rows, drop_self(rows, truth_rows, K))
    per_row = t_truth.seconds / len(truth_rows)
    out: dict[str, Any] = {"build_s": 0.0, "index_bytes": x.nbytes, "recall": 1.0}
    out.update(_latency_ms(lambda q: exact_topk(x, q, K), x[lat_rows]))
    numpy_ms = []
    for q in x[lat_rows[:20]]:
        t0 = time.perf_counter()
        s = x @ q
        np.argpartition(-s, K)[:K]
        numpy_ms.append(time.perf_counter() - t0)
    out["numpy_query_ms_median"] = round(1e3 * float(np.median(numpy_ms)), 3)
    out["graph_s"] = round(per_row * len(x), 1)
    out["graph_s_measured_on_rows"] = len(truth_rows)
    return truth, out


def _sweep(cand: Candidate, index: Any, x: np.ndarray, truth: Truth, threads: int) -> tuple:
    """The cheapest knob reaching TARGET recall (or the last one), with every knob's recall."""
    curve = []
    for knob in cand.knobs:
        with Timer() as t:
            rows, _ = cand.search(index, x[truth.rows], K + 1, threads, knob)
        r = recall(drop_self(rows, truth.rows, K), truth.knn)
        curve.append({"knob": knob, "recall": round(r, 4), "batch_s": round(t.seconds, 3)})
        log.info("  %s knob %s: recall %.4f (%.2fs)", cand.name, knob, r, t.seconds)
        if r >= TARGET:
            return knob, r, t.seconds, curve
    return cand.knobs[-1], r, t.seconds, curve


def measure(
    cand: Candidate,
    data: tuple[np.ndarray, np.ndarray],
    truth: Truth,
    lat_rows: np.ndarray,
    threads: int,
    full_graph: bool = True,
) -> dict:
    """Build (libraries on one thread, their deterministic setting; ours on ``threads``, which
    never changes its bytes), size, sweep, latency, graph time (libraries: scaled from the truth
    rows' batched search on ``threads`` threads; the search side is deterministic per query).
    ``data``: unit rows for the libraries, the float16-valued rows as stored for ours."""
    x, raw = data
    gc.collect()
    with Timer() as t_build:
        index = cand.build(raw, threads) if cand.name == "ours" else cand.build(x, 1)
    blob = cand.to_bytes(index)
    knob, r, batch_s, curve = _sweep(cand, index, x, truth, threads)
    out: dict[str, Any] = {
        "params": cand.params,
        "build_s": round(t_build.seconds, 2),
        "index_bytes": len(blob),
        "knob": knob,
        "recall": round(r, 4),
        "sweep": curve,
    }
    out.update(_latency_ms(lambda q: cand.search(index, q, K, 1, knob), x[lat_rows]))
    if cand.name == "ours":
        out["index"] = index.describe()
    if cand.name == "ours" and not full_graph:
        out["graph_s"] = float("nan")
    elif cand.name == "ours":
        with Timer() as t_graph:
            graph, _ = index.knn_graph(K, threads=threads)
        out["graph_s"] = round(t_graph.seconds, 1)
        out["graph_recall"] = round(recall(graph[truth.rows], truth.knn), 4)
        out["graph_s_measured_on_rows"] = len(x)
    else:
        out["graph_s"] = round(batch_s * len(x) / len(truth.rows), 1)
        out["graph_s_measured_on_rows"] = len(truth.rows)
    out["graph_threads"] = threads
    out["build_threads"] = threads if cand.name == "ours" else 1
    return out


def determinism(cand: Candidate, data: tuple[np.ndarray, np.ndarray], truth: Truth) -> dict:
    """Build twice on one thread and once on two: equal bytes? equal search results?"""
    x = data[1] if cand.name == "ours" else data[0]
    knob = cand.knobs[len(cand.knobs) // 2]
    outs = []
    for threads in (1, 1, 2):
        with Timer() as t:
            index = cand.build(x, threads)
        res = cand.search(index, x[truth.rows], K, 1, knob)
        outs.append((cand.to_bytes(index), res, t.seconds))
        del index
    same = [
        outs[0][0] == o[0]
        and all(np.array_equal(a, b) for a, b in zip(outs[0][1], o[1], strict=True))
        for o in outs[1:]
    ]
    return {
        "same_bytes_1_thread_twice": outs[0][0] == outs[1][0],
        "same_results_1_thread_twice": bool(same[0])
        or bool(np.array_equal(outs[0][1][0], outs[1][1][0])),
        "same_bytes_1_vs_2_threads": outs[0][0] == outs[2][0],
        "same_results_1_vs_2_threads": bool(np.array_equal(outs[0][1][0], outs[2][1][0])),
        "build_s_1_thread": round(outs[0][2], 2),
        "build_s_2_threads": round(outs[2][2], 2),
    }


def candidates(names: list[str], n: int, *, exact_rows: int | None = None) -> list[Candidate]:
    """The named candidates whose library is installed (the peers are the optional extra
    ``neighbours-bench`` of pyproject.toml; a missing one is skipped with a note)."""
    make: dict[str, Callable[[], Candidate]] = {
        "faiss-hnsw": faiss_hnsw,
        "faiss-ivf": lambda: faiss_ivf(n),
        "hnswlib": hnswlib_index,
        "usearch": usearch_index,
        "ours": lambda: ours_index(exact_rows),
    }
    out = []
    for name in names:
        if name not in make:
            continue
        try:
            out.append(make[name]())
        except ImportError as exc:
            log.warning("%s skipped (%s): pip install '.[neighbours-bench]'", name, exc)
    return out


def table(n: int, dim: int, results: dict[str, dict]) -> None:
    """One line per candidate: ours/the library vs the exact peer of the same run (``peer``)."""
    acts16 = n * dim * 2
    log.info(
        "%-12s %9s %10s %8s %10s %8s %7s %9s %8s",
        f"rows={n}",
        "build s",
        "index MB",
        "x acts16",
        "query ms",
        "x exact",
        "recall",
        "graph s",
        "x exact",
    )
    for name, r in results.items():
        peer = r.get("peer", results["exact"])
        log.info(
            "%-12s %9.1f %10.1f %8.2f %10.2f %8.1f %7.3f %9.0f %8.1f",
            name,
            r["build_s"],
            r["index_bytes"] / 1e6,
            r["index_bytes"] / acts16,
            r["query_ms_median"],
            peer["query_ms_median"] / r["query_ms_median"],
            r.get("graph_recall", r["recall"]),
            r["graph_s"],
            peer["graph_s"] / max(r["graph_s"], 1e-9),
        )


def run_size(args: argparse.Namespace, n: int) -> dict[str, Any]:
    import torch

    raw = make_data(args.data, n, args.dim)
    x = unit(raw)
    rng = np.random.default_rng(1)
    truth_rows = np.sort(rng.choice(n, min(n, args.queries), replace=False))
    lat_rows = rng.choice(n, args.latency_queries, replace=False)
    log.info("%d x %d (%s): exact peer", n, args.dim, args.data)
    truth, exact = measure_exact(x, truth_rows, lat_rows)
    results: dict[str, dict] = {"exact": exact}
    libs = args.libs if n < 500_000 else [lib for lib in args.libs if lib in args.big_libs]
    for cand in candidates(libs, n):
        log.info("%d x %d: %s", n, args.dim, cand.name)
        torch.set_num_threads(1)
        results[cand.name] = measure(cand, (x, raw), truth, lat_rows, args.threads, args.graph)
        results[cand.name]["peer"] = {k: exact[k] for k in ("query_ms_median", "graph_s")}
        log.info("  %s", {k: v for k, v in results[cand.name].items() if k != "sweep"})
    table(n, args.dim, results)
    return {"rows": n, "dim": args.dim, "data": args.data, "results": results}


def run_determinism(args: argparse.Namespace) -> dict[str, Any]:
    n = args.det_rows
    raw = make_data(args.data, n, args.dim, seed=2)
    x = unit(raw)
    rows = np.sort(np.random.default_rng(3).choice(n, min(n, 500), replace=False))
    truth = Truth(rows, np.zeros((len(rows), K), np.int64))
    out = {}
    # ours with inverted lists even at this size (below exact_rows it would hold one list)
    for cand in candidates(args.libs, n, exact_rows=0):
        out[cand.name] = determinism(cand, (x, raw), truth)
        log.info("determinism %s at %d rows: %s", cand.name, n, out[cand.name])
    return {"rows": n, "results": out}


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rows", default="100000,1000000", help="comma-separated sizes")
    p.add_argument("--dim", type=int, default=112)
    p.add_argument("--data", choices=("signed", "relu"), default="signed")
    p.add_argument("--libs", default=",".join(LIBS), help=f"any of {','.join(LIBS)}")
    p.add_argument("--queries", type=int, default=2000, help="rows with exact answers (recall)")
    p.add_argument("--latency-queries", type=int, default=100)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="graph search")
    p.add_argument("--det-rows", type=int, default=20000, help="0: skip determinism checks")
    p.add_argument("--out", default="neighbours", help="benchmarks/results/<out>.json")
    p.add_argument(
        "--big-libs",
        default="exact,faiss-ivf,ours",
        help="candidates at 500k rows and more (HNSW builds on one thread take tens of minutes)",
    )
    p.add_argument("--no-graph", dest="graph", action="store_false", help="skip our full graph")
    args = p.parse_args()
    args.libs = [s for s in args.libs.split(",") if s]
    args.big_libs = [s for s in args.big_libs.split(",") if s]
    unknown = sorted(set(args.libs) - set(LIBS))
    if unknown:
        p.error(f"unknown --libs {unknown}; choose from {', '.join(LIBS)}")
    result = _previous(args.out)
    result.update({"k": K, "target_recall": TARGET, "threads": args.threads})
    if args.det_rows:
        det = run_determinism(args)
        if result.get("determinism", {}).get("rows") == det["rows"]:
            det["results"] = {**result["determinism"]["results"], **det["results"]}
        result["determinism"] = det
    for n in args.rows.split(","):
        size = run_size(args, int(n))
        size["load_average"] = os.getloadavg()
        size["peak_rss_mb"] = peak_rss_mb()
        key = (size["rows"], size["dim"], size["data"])
        old = [s for s in result.get("sizes", []) if (s["rows"], s["dim"], s["data"]) == key]
        if old:  # candidates measured before and not now stay, with their own run's peer
            size["results"] = {**old[0]["results"], **size["results"]}
        result["sizes"] = [s for s in result.get("sizes", []) if s not in old] + [size]
        write(args.out, result)


def _previous(name: str) -> dict[str, Any]:
    """The results file's earlier sizes and determinism checks (a run replaces the candidates
    it measures again); each candidate keeps the exact peer of the run that measured it."""
    path = RESULTS / f"{name}.json"
    if not path.exists():
        return {}
    old = json.loads(path.read_text())
    for size in old.get("sizes", []):
        for r in size["results"].values():
            r.setdefault(
                "peer", {k: size["results"]["exact"][k] for k in ("query_ms_median", "graph_s")}
            )
    return {k: v for k, v in old.items() if k in ("sizes", "determinism")}


if __name__ == "__main__":
    main()
