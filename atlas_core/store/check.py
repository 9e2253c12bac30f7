"""Checks of a run store against its commit markers, reading only (``atlas verify``).

Per extraction shard: the marker exists and names the store's extraction fingerprint and the
shard's rows; every storage object (chunk or zarr shard) of its rows exists; the statuses
recounted from the store equal the marker's counts; rows that decoded hold activations and the
others are holes (NaN); the activations' checksum equals the marker's.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from atlas_core.data.decode import Status
from atlas_core.store.markers import Markers
from atlas_core.store.run_store import RunStore


@dataclass(frozen=True)
class Problem:
    """One thing wrong: where (``shard 3``, ``stage reduce``, ``store``) and what."""

    where: str
    what: str

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"


def recount(status: np.ndarray) -> dict[str, int]:
    """Status counts of a shard's images as its task recorded them: duplicates, classified by
    the driver after the shards, count as what the task saw (ok)."""
    names = (Status(int(v)).name.lower() for v in status)
    return dict(Counter("ok" if n == "duplicate" else n for n in names))


def check_shards(store: RunStore, markers: Markers) -> tuple[list[Problem], dict[str, int]]:
    """Every extraction shard against its marker; returns (problems, row counts by status)."""
    problems: list[Problem] = []
    fp = store.attrs.get("extract_fingerprint")
    status = store.status()  # read once, sliced per shard
    records = markers.read_all("extract")  # listed in bulk
    for i, (a, b) in enumerate(store.shards):
        rec = records.get(f"extract/shard-{i:06d}")
        where = f"shard {i} (images {a}..{b})"
        if rec is None:
            problems.append(Problem(where, "no commit marker: not committed (a resume redoes it)"))
            continue
        problems += [Problem(where, w) for w in _shard_problems(store, rec, fp, a, b, status[a:b])]
    statuses = Counter(Status(int(v)).name.lower() for v in status)
    counts = {"expected": store.n_images, "ok": statuses.pop("ok", 0)}
    counts["lost"] = statuses.pop("pending", 0)
    counts["failed"] = sum(statuses.values())
    if counts["expected"] != counts["ok"] + counts["failed"] + counts["lost"]:
        problems.append(Problem("store", f"rows do not add up: {counts}"))
    if counts["lost"]:
        problems.append(Problem("store", f"{counts['lost']} images were never extracted"))
    return problems, counts


def _shard_problems(
    store: RunStore, rec: dict[str, Any], fp: Any, a: int, b: int, status: np.ndarray
) -> list[str]:
    out = []
    if rec.get("fingerprint") != fp:
        out.append(f"marker fingerprint {rec.get('fingerprint')} is not the store's {fp}")
    if rec.get("rows") != [a, b]:
        out.append(f"marker rows {rec.get('rows')} are not the plan's {[a, b]}")
    missing = store.missing_objects(a, b)
    if missing:
        out.append(f"{len(missing)} storage objects missing, e.g. {missing[0]}")
        return out  # the reads below would only report the same loss again
    counts = recount(status)
    if counts != rec.get("status_counts"):
        out.append(f"statuses in the store {counts} differ from the marker's")
    ok = np.repeat(status == int(Status.OK), store.k)
    for layer in store.layers:
        acts = store.extraction(layer).acts(a * store.k, b * store.k)
        full = ~np.isnan(acts).any(axis=1)
        if (full != ok).any():
            out.append(
                f"layer {layer}: {int((full != ok).sum())} sample rows are holes where "
                "the image is ok, or hold values where it is not"
            )
    if rec.get("acts_hash") != store.acts_hash(a, b):
        out.append("activations differ from what the task wrote (checksum)")
    return out


def missing_arrays(store: RunStore, keys: list[str]) -> list[str]:
    """The array paths among ``keys`` that ``store`` lacks (a stage's declared outputs)."""
    return [k for k in keys if not store.has(k)]
