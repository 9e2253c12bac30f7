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
