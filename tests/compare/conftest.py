"""A real pair of runs for the diff's tests: the tiny network's two checkpoints (early, late,
trained here in seconds) atlased over the same generated, labelled images, every stage (so the
diff page has tiles and exemplar patches), two levels. Built once per session."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

PER_CLASS = 32  # 192 images, six classes


@dataclass(frozen=True)
class TinyPair:
    base: Path
    early: Path
    late: Path
    images: Path


@pytest.fixture(scope="session")
def tiny_pair(tmp_path_factory) -> TinyPair:
    import ray

    from atlas_core.models import train_tiny as tt
    from pipelines.commands.run import run as run_atlas
    from tests.conftest import debug_settings

    base = tmp_path_factory.mktemp("diff")
    paths = tt.save(tt.train(), base / "weights")
    tt.write_images(base / "images", PER_CLASS)
    started = not ray.is_initialized()
    if started:
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            log_to_driver=False,
            configure_logging=False,
        )
    try:
        for name in ("early", "late"):
            s, resolved = debug_settings(
                f"model.weights={paths[name]}",
                "data=folder",
                f"data.path={base / 'images'}",
                "data.labels=folder",
                "grid.sizes=[4,8]",
                "exemplars.k=4",
                f"run_dir={base / name}",
            )
            run_atlas(s, resolved)
    finally:
        if started:
            ray.shutdown()
    return TinyPair(base, base / "early", base / "late", base / "images")
