"""The diff benchmark's own brute-force check, at a size the suite can afford."""

from __future__ import annotations

from benchmarks import diff_bench


def test_the_benchmark_diff_matches_its_loops_and_streams_like_one_block() -> None:
    got = diff_bench.one(20_000, "streamed")
    assert got["sample_rows_checked"] == 2000 and got["sample_mismatches"] == 0
    assert got["cells_checked"] >= 3 and got["cell_mismatches"] == 0
    whole = diff_bench.one(20_000, "in_memory")
    assert whole["figures"] == got["figures"]
    f = got["figures"]
    assert 0.3 < f["neighbourhood_preservation"] < 0.95 and 0.02 < f["flip_rate"] < 0.5


def test_the_command_benchmark_diffs_its_stores_as_the_accumulator_does(tmp_path) -> None:
    """The command's whole path on two stores written through RunStore (more rows than one
    block) equals a DiffAccumulator fed the same rows; the exact kNN graph of a store's
    activations covers every row."""
    from benchmarks import diff_command_bench as cb

    n = cb.BLOCK + 4_464
    want = cb.generate(tmp_path / "c", n, acts=False)
    got = cb.command(n, tmp_path / "c")
    assert got["page"] and got["rows"] == n
    assert got["figures"] == {k: v for k, v in want.items() if k != "transitions"}
    assert set(got["phases"]) >= {"kept", "knn_a", "knn_b", "accumulate", "write"}
    cb.generate(tmp_path / "k", 10_000, acts=True)
    knn = cb.exact_knn_time(10_000, tmp_path / "k")
    assert knn["graph_rows"] == 10_000 and knn["seconds"] > 0
