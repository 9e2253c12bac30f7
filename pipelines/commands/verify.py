"""``atlas verify RUN_DIR``: re-check a finished or interrupted run without changing it.

Checks, and prints by shard or stage what is wrong (exit 1 when anything is, 0 when nothing):
every extraction shard against its commit marker (``atlas_core.store.check``: marker, storage
objects present, statuses recounted, holes, checksum); rows expected = ok + failed + lost counted
from the stored statuses; the stage chain, in every view, from the stage registry: every stage
marker against the fingerprint recomputed from the run's own ``manifest.json`` config, no stage
done after one it needs that is not, and each done stage's declared outputs.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import replace
from typing import Any

from atlas_core.errors import AtlasError
from atlas_core.models.card import ModelCard
from atlas_core.store import Markers, RunLocation, RunStore
from atlas_core.store.check import Problem, check_shards
from pipelines.core.settings import Settings
from pipelines.core.views import View
from pipelines.stages import REGISTRY

log = logging.getLogger("atlas.verify")


def verify(run_dir: str, storage_options: dict[str, Any] | None = None) -> list[Problem]:
    """Every problem found in the run at ``run_dir`` (empty: the run is consistent)."""
    return check(run_dir, storage_options)[0]


def check(
    run_dir: str, storage_options: dict[str, Any] | None = None
) -> tuple[list[Problem], dict[str, int]]:
    """(every problem found, the rows by status: expected, ok, failed, lost)."""
    loc = RunLocation.of(run_dir, storage_options)
    try:
        store = loc.open_store("r")
    except AtlasError as exc:
        return [Problem("store", str(exc))], {}
    markers = loc.markers()
    shards = markers  # a shared extraction keeps its shard markers beside its own store
    if store.parent is not None:
        shared = str(store.attrs["extraction"]).removesuffix("/atlas.zarr")
        shards = RunLocation.of(shared, storage_options).markers()
    problems, counts = check_shards(store, shards)
    settings = _settings(loc, problems)
    card = ModelCard.from_json(store.attrs.get("model_card") or {})
    if settings is not None and card is None:
        problems.append(Problem("store", "records no model card; stages unchecked"))
    elif settings is not None and card is not None:
        problems += _check_chain(settings, card, store, markers)
    return problems, counts


def _settings(loc: RunLocation, problems: list[Problem]) -> Settings | None:
    """The run's settings, from the config its manifest recorded (None: no manifest yet)."""
    from omegaconf import OmegaConf

    from pipelines.settings import schema

    manifest = loc.read_json(loc.manifest_url)
    if manifest is None:
        problems.append(Problem("manifest", "unreadable or missing; stages unchecked"))
        return None
    config = manifest.get("config") or {}
    if not config:
        problems.append(Problem("manifest", "records no config; stage fingerprints unchecked"))
        return None
    settings = OmegaConf.to_object(OmegaConf.merge(schema(Settings), config))
    if not isinstance(settings, Settings):
        return None
    # the run as it is now, where it is now (it may have been moved or copied)
    return replace(settings, run_dir=loc.root, storage_options=loc.storage_options)


def _check_chain(s: Settings, card: ModelCard, store: RunStore, markers: Markers) -> list[Problem]:
    from pipelines.commands.run import plan_run

    plan = plan_run(s, card)
    records = markers.read_all("")
    out: list[Problem] = []
    for view in [None, *plan.views]:
        v = view or View()
        loc = s.location.in_view(v.slug)
        missing: list[str] = []
        for st in REGISTRY:
            if (view is None) != (st.scope == "run") or (view and not st.applies_to(view)):
                continue
            rec = records.get(f"{loc.marker_prefix}stage-{st.name}")
            where = f"stage {st.name}" + (f" of view {v.slug}" if v.slug else "")
            if rec is None:
                missing.append(st.name)
                continue
            needed = [m for m in missing if m in REGISTRY.upstream(st.name)]
            if needed:
                out.append(Problem(where, f"marked done but stage {needed[0]} is not"))
            fp = plan.fp(st, v)
            if rec.get("fingerprint") != fp:
                out.append(
                    Problem(
                        where,
                        f"marker fingerprint {rec.get('fingerprint')} is not "
                        f"{fp}, the one this run's config gives",
                    )
                )
            if st.outputs is not None:
                lost = st.outputs(plan.run_of(st, v), store.in_view(loc.store_prefix))
                out += [Problem(where, f"output missing: {m}") for m in lost]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="atlas verify", description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", help="a run directory or object-store prefix")
    ap.add_argument("--storage-options", default="{}", help="fsspec options as JSON")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    problems, counts = check(args.run_dir, json.loads(args.storage_options))
    # the report is the command's output: one line each, on stdout
    if counts:
        print("rows: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    for p in problems:
        print(f"FAIL {p}")
    print(f"{args.run_dir}: {'ok' if not problems else f'{len(problems)} problems'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
