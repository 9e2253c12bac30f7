"""Issue 26, partial results merge whatever keys a shard produced: a shard of only failures (no
sums at all), or one whose spectrum sample rows (every 8th) all failed (no ``~spectrum``),
anywhere in the moment tree, gives the direct sum over the shards that had each part."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from atlas_core.extract.moments import MomentTree, partial_from_bytes, partial_to_bytes

KEYS = ("blocks.3", "blocks.4", "~spectrum")


def _shard(rng: np.random.Generator, keys: tuple[str, ...]) -> tuple[dict, dict]:
    sums = {k: rng.standard_normal((3, 3)) for k in keys}
    return sums, {k: int(rng.integers(1, 50)) for k in keys}


def _direct(parts: list[tuple[dict, dict]]) -> tuple[dict, dict]:
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for s, c in parts:
        for k in s:
            sums[k] = sums.get(k, 0) + s[k]
            counts[k] = counts.get(k, 0) + c[k]
    return sums, counts


def _cases(n: int) -> dict[str, set[int]]:
    """Which shards hold only failures: first, middle, last, several, all."""
    return {
        "first": {0},
        "middle": {n // 2},
        "last": {n - 1},
        "ends": {0, n - 1},
        "all": set(range(n)),
    }


@pytest.mark.parametrize("n", [1, 2, 5, 8])
@pytest.mark.parametrize("where", ["first", "middle", "last", "ends", "all"])
def test_shards_of_only_failures_anywhere_in_the_tree(n: int, where: str) -> None:
    failed = _cases(n)[where]
    rng = np.random.default_rng(n)
    parts = []
    for i in range(n):
        if i in failed:
            parts.append(({}, {}))  # every row failed: no key at all
        elif i % 3 == 1:
            parts.append(_shard(rng, KEYS[:2]))  # rows sampled for the spectrum all failed
        else:
            parts.append(_shard(rng, KEYS))
    want_s, want_c = _direct(parts)
    orders = [list(range(n)), list(reversed(range(n)))]
    orders += [list(rng.permutation(n)) for _ in range(3)]
    totals = []
    for order in orders:
        tree = MomentTree(n)
        for i in order:
            blob = partial_to_bytes(*parts[i])  # as a task persists it
            tree.add(int(i), *partial_from_bytes(blob))
            tree = MomentTree.from_bytes(tree.to_bytes(), n)  # and through a checkpoint
        assert tree.complete
        sums, counts = tree.total()
        assert counts == want_c and sums.keys() == want_s.keys()
        for k in want_s:
            assert np.allclose(sums[k], want_s[k], rtol=0, atol=1e-12)
        totals.append(sums)
    for other in totals[1:]:  # the order shards finish in does not change a bit
        assert all(np.array_equal(other[k], totals[0][k]) for k in totals[0])


def test_every_subset_of_missing_keys_in_pairs() -> None:
    rng = np.random.default_rng(0)
    subsets = [c for r in range(len(KEYS) + 1) for c in itertools.combinations(KEYS, r)]
    for left, right in itertools.product(subsets, repeat=2):
        parts = [_shard(rng, left), _shard(rng, right)]
        tree = MomentTree(2)
        tree.add(1, *parts[1])
        tree.add(0, *parts[0])
        sums, counts = tree.total()
        want_s, want_c = _direct(parts)
        assert counts == want_c
        assert all(np.allclose(sums[k], want_s[k]) for k in want_s) and sums.keys() == want_s.keys()
