"""``make bench``: run every benchmark, each writing benchmarks/results/<name>.json."""

from __future__ import annotations

import subprocess
import sys

BENCHMARKS = (
    "extract_bench",
    "reduce_bench",
    "render_bench",
    "quality_bench",
    "compose_bench",
)


def main() -> None:
    names = sys.argv[1:] or BENCHMARKS
    failed = []
    for name in names:
        print(f"== {name}", flush=True)
        if subprocess.run([sys.executable, "-m", f"benchmarks.{name}"], check=False).returncode:
            failed.append(name)
    if failed:
        sys.exit(f"benchmarks failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
