"""``atlas verify RUN_DIR``: re-check a finished or interrupted run without changing it.

Checks, and prints by shard or stage what is wrong (exit 1 when anything is, 0 when nothing):
every extraction shard against its commit marker (``atlas_core.store.check``: marker, storage
objects present, statuses recounted, holes, checksum); rows expected = ok + failed + lost counted
from the stored statuses; the stage chain: every stage marker against the fingerprint recomputed
from the run's own ``manifest.json`` config, no stage done after one that is not, and each done
stage's outputs present.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import replace
from typing import Any

import fsspec

from atlas_core.errors import AtlasError
from atlas_core.store import Markers, RunStore
from atlas_core.store.check import Problem, check_shards, missing_stage_outputs
from pipelines.settings import STAGES, Settings, store_url

log = logging.getLogger("atlas.verify")


def verify(run_dir: str, storage_options: dict[str, Any] | None = None) -> list[Problem]:
    """Every problem found in the run at ``run_dir`` (empty: the run is consistent)."""
    opts = storage_options or {}
    try:
        store = RunStore.open(store_url(run_dir), mode="r", storage_options=opts)
    except AtlasError as exc:
        return [Problem("store", str(exc))]
    markers = Markers(run_dir, opts)
    shards = markers  # a shared extraction keeps its shard markers beside its own store
    if store.parent is not None:
        shards = Markers(str(store.attrs["extraction"]).removesuffix("/atlas.zarr"), opts)
    problems, counts = check_shards(store, shards)
    log.info("rows: %s", counts)
    settings = _settings(run_dir, opts, problems)
    if settings is not None:
        problems += _check_chain(settings, store, markers)
    return problems


def _settings(run_dir: str, opts: dict[str, Any], problems: list[Problem]) -> Settings | None:
    """The run's settings, from the config its manifest recorded (None: no manifest yet)."""
    from omegaconf import OmegaConf

    from pipelines.settings import schema

    try:
        with fsspec.open(f"{run_dir.rstrip('/')}/manifest.json", "r", **opts) as f:
            config = json.load(f).get("config") or {}
    except (FileNotFoundError, json.JSONDecodeError) as exc:
        problems.append(Problem("manifest", f"unreadable or missing ({exc}); stages unchecked"))
        return None
    if not config:
        problems.append(Problem("manifest", "records no config; stage fingerprints unchecked"))
        return None
    settings = OmegaConf.to_object(OmegaConf.merge(schema(Settings), config))
    if not isinstance(settings, Settings):
        return None
    # the run as it is now, where it is now (it may have been moved or copied)
    return replace(settings, run_dir=run_dir, storage_options=opts)


def _check_chain(s: Settings, store: RunStore, markers: Markers) -> list[Problem]:
    from pipelines.run import fingerprints, needs

    fps, out, missing = fingerprints(s), [], []
    for stage in STAGES:
        rec = markers.read(f"stage-{stage}")
        where = f"stage {stage}"
        if rec is None:
            missing.append(stage)
            continue
        needed = [m for m in missing if needs(stage, m)]
        if needed:
            out.append(Problem(where, f"marked done but stage {needed[0]} is not"))
        if rec.get("fingerprint") != fps[stage]:
            got = rec.get("fingerprint")
            out.append(Problem(where, f"marker fingerprint {got} is not {fps[stage]}, the one "
                                      "this run's config gives"))  # fmt: skip
        lost = _missing_outputs(s, store, stage, rec)
        out += [Problem(where, f"output missing: {m}") for m in lost]
    return out


def _missing_outputs(s: Settings, store: RunStore, stage: str, rec: dict[str, Any]) -> list[str]:
    fs, root = fsspec.core.url_to_fs(s.run_dir, **s.storage_options)
    if stage in ("classes", "patches"):
        details = rec.get("details") or {}
        files = [v["viewer"] for v in details.get("views", [])]
        files += [f"patches/{r['view']}/index.html" for r in details.get("reports", [])]
        return [f for f in files if not fs.exists(f"{root.rstrip('/')}/{f}")]
    if stage != "compose":
        layouts = s.joint_layers or (s.layer,)
        return missing_stage_outputs(store, stage, s.layer, s.extracted_layers, layouts,
                                     s.grid.sizes)  # fmt: skip
    files = ["atlas.png", "viewer/index.html", *(f"atlas-{g}.png" for g in s.grid.sizes)]
    return [f for f in files if not fs.exists(f"{root.rstrip('/')}/{f}")]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="atlas verify", description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", help="a run directory or object-store prefix")
    ap.add_argument("--storage-options", default="{}", help="fsspec options as JSON")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    problems = verify(args.run_dir, json.loads(args.storage_options))
    for p in problems:
        print(f"FAIL {p}")
    print(f"{args.run_dir}: {'ok' if not problems else f'{len(problems)} problems'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
