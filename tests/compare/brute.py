"""The diff computed the slow way: Python loops over samples, sets and dicts, no numpy tricks.

Every figure of atlas_core.compare is checked against these on small random pairs of runs.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import numpy as np

NAMES = (
    "right_to_right",
    "right_to_wrong",
    "wrong_to_right",
    "wrong_to_same_wrong",
    "wrong_to_other_wrong",
)


@dataclass
class Pair:
    """Two runs' arrays over the same N sample rows."""

    la: np.ndarray
    lb: np.ndarray
    ka: np.ndarray
    kb: np.ndarray
    pa: np.ndarray
    pb: np.ndarray
    y: np.ndarray

    def block(self, a: int, b: int) -> dict:
        return {
            "knn_a": self.ka[a:b],
            "knn_b": self.kb[a:b],
            "pred_a": self.pa[a:b],
            "pred_b": self.pb[a:b],
            "label": self.y[a:b],
        }


def random_pair(n: int, k: int, seed: int, *, hole_a: float = 0.08, hole_b: float = 0.08) -> Pair:
    """A structured random pair: B's layout is A's moved a little (some rows far), holes (NaN
    rows) in either run, rows on the edges 0 and 1, kNN rows with -1 padding, the row itself,
    repeated ids and holes among the neighbours; predictions with -1, labels with -1."""
    rng = np.random.default_rng(seed)
    la = rng.random((n, 2))
    lb = np.clip(la + rng.normal(0, 0.08, (n, 2)), 0, 1)
    far = rng.random(n) < 0.1
    lb[far] = rng.random((far.sum(), 2))
    la[rng.random(n) < 0.05] = [1.0, 0.0]
    la[rng.random(n) < hole_a] = np.nan
    lb[rng.random(n) < hole_b] = np.nan
    ka = rng.integers(0, n, (n, k))
    kb = np.where(rng.random((n, k)) < 0.5, ka, rng.integers(0, n, (n, k)))
    kb = np.take_along_axis(kb, rng.permuted(np.tile(np.arange(k), (n, 1)), axis=1), axis=1)
    for g in (ka, kb):
        g[rng.random((n, k)) < 0.05] = -1
        self_at = rng.random(n) < 0.05
        g[self_at, 0] = np.flatnonzero(self_at)
        rep = rng.random(n) < 0.05
        g[rep, 1] = g[rep, 2]
    pa = rng.integers(-1, 4, n)
    pb = np.where(rng.random(n) < 0.6, pa, rng.integers(-1, 4, n))
    y = rng.integers(-1, 4, n)
    return Pair(la, lb, ka, kb, pa, pb, y)


def cell_of(xy: np.ndarray, size: int) -> int | None:
    x, y = float(xy[0]), float(xy[1])
    if math.isnan(x) or math.isnan(y):
        return None
    ix = max(0, min(math.floor(x * size), size - 1))
    iy = max(0, min(math.floor(y * size), size - 1))
    return iy * size + ix


@dataclass
class BruteLevel:
    cells_a: list[int]
    cells_b: list[int]
    count_a: Counter
    count_b: Counter
    flows: dict[int, Counter] = field(default_factory=dict)  # A cell -> Counter of B cells
    back: dict[int, Counter] = field(default_factory=dict)  # B cell -> Counter of A cells
    p_a: dict[int, list[float]] = field(default_factory=dict)
    p_b: dict[int, list[float]] = field(default_factory=dict)
    flips_a: dict[int, list[int]] = field(default_factory=dict)
    flips_b: dict[int, list[int]] = field(default_factory=dict)
    trans_a: dict[int, Counter] = field(default_factory=dict)
    trans_b: dict[int, Counter] = field(default_factory=dict)


def kept(p: Pair) -> list[bool]:
    return [
        not (math.isnan(p.la[i][0]) or math.isnan(p.la[i][1]))
        and not (math.isnan(p.lb[i][0]) or math.isnan(p.lb[i][1]))
        for i in range(len(p.la))
    ]


def preservation(p: Pair) -> list[float | None]:
    """p_i by the definition in atlas_core/compare/neighbours.py, one sample at a time."""
    keep = kept(p)
    out: list[float | None] = []
    for i in range(len(p.la)):
        if not keep[i]:
            out.append(None)
            continue
        va = {int(j) for j in p.ka[i] if j >= 0 and j != i and keep[j]}
        vb = {int(j) for j in p.kb[i] if j >= 0 and j != i and keep[j]}
        out.append(len(va & vb) / len(va) if va else None)
    return out


def flip(p: Pair, i: int, keep: list[bool]) -> int | None:
    if not keep[i] or p.pa[i] < 0 or p.pb[i] < 0:
        return None
    return int(p.pa[i] != p.pb[i])


def transition(p: Pair, i: int, keep: list[bool]) -> str | None:
    if flip(p, i, keep) is None or p.y[i] < 0:
        return None
    y, a, b = p.y[i], p.pa[i], p.pb[i]
    if a == y and b == y:
        return "right_to_right"
    if a == y:
        return "right_to_wrong"
    if b == y:
        return "wrong_to_right"
    if a == b:
        return "wrong_to_same_wrong"
    return "wrong_to_other_wrong"


def level(p: Pair, size: int, min_count: int) -> BruteLevel:
    keep = kept(p)
    pres = preservation(p)
    ca = [cell_of(p.la[i], size) for i in range(len(p.la))]
    cb = [cell_of(p.lb[i], size) for i in range(len(p.lb))]
    count_a = Counter(c for c in ca if c is not None)
    count_b = Counter(c for c in cb if c is not None)
    out = BruteLevel(
        sorted(c for c, n in count_a.items() if n >= min_count),
        sorted(c for c, n in count_b.items() if n >= min_count),
        count_a,
        count_b,
    )
    for i in range(len(p.la)):
        if not keep[i]:
            continue
        a, b = ca[i], cb[i]
        out.flows.setdefault(a, Counter())[b] += 1
        out.back.setdefault(b, Counter())[a] += 1
        for cell, ps, fl, tr in (
            (a, out.p_a, out.flips_a, out.trans_a),
            (b, out.p_b, out.flips_b, out.trans_b),
        ):
            if pres[i] is not None:
                ps.setdefault(cell, []).append(pres[i])
            f = flip(p, i, keep)
            if f is not None:
                fl.setdefault(cell, []).append(f)
            t = transition(p, i, keep)
            if t is not None:
                tr.setdefault(cell, Counter())[t] += 1
    return out


def top_flows(counter: Counter, top: int) -> list[tuple[int, int]]:
    """(cell, count), most first, ties by lower cell."""
    return sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))[:top]


def overall(p: Pair) -> dict:
    keep = kept(p)
    pres = [v for v in preservation(p) if v is not None]
    flips = [f for i in range(len(p.la)) if (f := flip(p, i, keep)) is not None]
    trans = Counter(t for i in range(len(p.la)) if (t := transition(p, i, keep)) is not None)
    triples: dict[tuple[int, int, int], int] = defaultdict(int)
    for i in range(len(p.la)):
        if flip(p, i, keep) is not None:
            triples[(int(p.y[i]) if p.y[i] >= 0 else -1, int(p.pa[i]), int(p.pb[i]))] += 1
    return {
        "kept_both": sum(keep),
        "kept_a": sum(not np.isnan(p.la[i]).any() for i in range(len(p.la))),
        "kept_b": sum(not np.isnan(p.lb[i]).any() for i in range(len(p.lb))),
        "preservation": sum(pres) / len(pres) if pres else None,
        "preservation_samples": len(pres),
        "flip_rate": sum(flips) / len(flips) if flips else None,
        "flips": sum(flips),
        "flip_samples": len(flips),
        "transitions": {n: trans.get(n, 0) for n in NAMES},
        "triples": dict(triples),
    }
