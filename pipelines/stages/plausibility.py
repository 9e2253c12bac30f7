"""Plausibility stage: every rendered icon judged against its own cell's exemplar patches.

One Ray task (on a GPU where the cluster gives this stage one) loads the judge network (default:
the atlas's own model; ``plausibility.judge`` names another), puts every icon and every exemplar
patch through its pooled features once, and scores each level's icons
(:mod:`atlas_core.quality`): per cell the margin of its icon's cosine to its own exemplars over
the other cells', and the rank of its own cell; the level's summary beside what a real exemplar
reaches in the icon's place. The driver writes ``grid/<G>/{icon_margin,icon_rank}`` and the
summaries (level attributes, the manifest, the viewer's cards, the sweep index).
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from typing import Any, ClassVar

import fsspec
import numpy as np
from PIL import Image

from atlas_core.exemplars.sheets import cell as sheet_cell
from atlas_core.models import ModelSpec, load_model
from atlas_core.quality import exemplar_reference, plausibility, pooled_features
from atlas_core.store import RunStore
from atlas_core.store.check import missing_arrays
from pipelines.core import ray_ops
from pipelines.core.common import resolve_device
from pipelines.core.schema import Group, Resources, setting
from pipelines.core.stage import Stage, StageResult, StageRun
from pipelines.stages.grid import GridConf

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlausibilityConf(Group):
    """plausibility: the judge network and the size it sees icons and patches at."""

    GROUP: ClassVar[str] = "plausibility"
    judge: str = ""  # a model name (model.name's choices); empty: the atlas's own model
    judge_weights: str | None = None  # the judge's weights (its default ones when empty)
    input_px: int = 112  # icons and patches are resized to this square for the judge
    batch: int = 64

    def __post_init__(self) -> None:
        self._ranges({"input_px": (16, 1024), "batch": (1, 4096)})


@dataclass(frozen=True)
class JudgeJob:
    store_url: str
    prefix: str
    run_dir: str
    storage_options: dict[str, Any]
    layer: str
    sizes: tuple[int, ...]
    judge: ModelSpec
    input_px: int
    batch: int
    device: str


def read_patches(root: str, opts: dict[str, Any], attrs: dict[str, Any], idx: np.ndarray
                 ) -> np.ndarray:  # fmt: skip
    """Patches ``idx`` (places in the exemplar index) from the exemplars stage's sheets:
    (n, p, p, 3) uint8; each sheet is read once."""
    per, cols, px = int(attrs["per_sheet"]), int(attrs["sheet_columns"]), int(attrs["patch_px"])
    out = np.zeros((len(idx), px, px, 3), np.uint8)
    sheets = idx // per
    for sh in np.unique(sheets):
        with fsspec.open(f"{root}/{attrs['sheets']}/patches-{int(sh)}.jpg", "rb", **opts) as f:
            sheet = np.asarray(Image.open(io.BytesIO(f.read())).convert("RGB"))
        for j in np.flatnonzero(sheets == sh):
            out[j] = sheet_cell(sheet, int(idx[j] % per), px, cols)
    return out


def judge_task(job: JudgeJob) -> dict[int, dict[str, Any]]:
    """Task body: per level, margins, ranks and the summaries (ours and the exemplar's)."""
    store = RunStore.open(job.store_url, storage_options=job.storage_options).in_view(job.prefix)
    device = resolve_device(job.device)
    judge = load_model(job.judge, device)
    ex_node = store.exemplars(job.layer)
    index = ex_node.index()
    if index is None or not len(index["row"]):
        return {}
    attrs = dict(ex_node.attrs)
    order = np.argsort(index["row"], kind="stable")
    levels = {}
    for g in job.sizes:
        level = store.level(job.layer, g)
        rows = level.optional("exemplar_row")
        if rows is None:
            continue
        at = np.searchsorted(index["row"], np.maximum(rows, 0), sorter=order)
        place = order[np.minimum(at, len(order) - 1)]
        ok = (rows >= 0) & (index["row"][place] == rows) & (index["ok"][place] == 1)
        levels[g] = (level.drawn(), level.read("icon_objective"), place, ok)  # as seen on white
    need = np.unique(np.concatenate([p[o] for _, _, p, o in levels.values()]))
    patches = read_patches(job.run_dir, job.storage_options, attrs, need)

    def feats(images: np.ndarray) -> np.ndarray:
        return pooled_features(judge.module, judge.preprocess, images, input_px=job.input_px,
                               batch=job.batch, device=device)  # fmt: skip

    pf = feats(patches)
    out = {}
    for g, (icons, objective, place, ok) in levels.items():
        rendered = ~np.isnan(objective)
        ex = pf[np.searchsorted(need, np.where(ok, place, need[0]))]  # (M, k, D)
        p = plausibility(feats(icons), ex, ok & rendered[:, None])
        ref = exemplar_reference(ex, ok)
        out[g] = {"margin": p.margin, "rank": p.rank, "icons": p.summary(),
                  "exemplar": ref.summary()}  # fmt: skip
    return out


def _judge_spec(ctx: StageRun) -> ModelSpec:
    conf = ctx.conf(PlausibilityConf)
    if not conf.judge:
        return ctx.s.model.spec
    with setting("plausibility", {"judge": conf.judge}):
        return ModelSpec(conf.judge, conf.judge_weights)


def run(ctx: StageRun) -> StageResult:
    s, conf = ctx.s, ctx.conf(PlausibilityConf)
    store = ctx.open_store("r+")
    ray_ops.init(s.cluster)
    res = ctx.resources()
    ray_ops.require("cluster.plausibility", res.num_cpus, res.num_gpus)
    sizes = ctx.conf(GridConf).sizes
    job = JudgeJob(s.store_url, store.prefix, ctx.run_dir, s.storage_options, s.layer, sizes,
                   _judge_spec(ctx), conf.input_px, conf.batch, ctx.device())  # fmt: skip
    (scored,) = ray_ops.map_tasks(judge_task, [job], num_cpus=res.num_cpus,
                                  num_gpus=res.num_gpus, desc="plausibility")  # fmt: skip
    counts: dict[str, Any] = {}
    judge = conf.judge or s.model.name
    for g in sizes:
        level = store.level(s.layer, g)
        if g not in scored:
            continue
        level.put_cells("icon_margin", scored[g]["margin"])
        level.put_cells("icon_rank", scored[g]["rank"])
        summary = {"judge": judge, "icons": scored[g]["icons"],
                   "exemplar": scored[g]["exemplar"]}  # fmt: skip
        level.set_attrs({"plausibility": summary})
        counts[str(g)] = summary
        i, e = scored[g]["icons"], scored[g]["exemplar"]
        log.info("plausibility %d (judge %s): icons margin %.3f, top-5 %.1f%% (chance %.1f%%); "
                 "an exemplar in the icon's place: margin %.3f, top-5 %.1f%%", g, judge,
                 i.get("margin_mean", float("nan")), 100 * i.get("top5", 0),
                 100 * i.get("chance_top5", 0), e.get("margin_mean", float("nan")),
                 100 * e.get("top5", 0))  # fmt: skip
    return StageResult(counts={"levels": counts}, details={"judge": judge,
                                                            "input_px": conf.input_px})


def outputs(ctx: StageRun, store: RunStore) -> list[str]:
    paths = [f"{store.level(ctx.s.layer, g).path}/icon_margin" for g in ctx.conf(GridConf).sizes]
    return missing_arrays(store, paths)


STAGE = Stage(
    name="plausibility",
    run=run,
    needs=("render", "exemplars"),
    settings=PlausibilityConf,
    resources={"plausibility": Resources()},
    outputs=outputs,
    reads="`grid/<G>/{icons,icon_objective,exemplar_row}`, `layers/<L>/exemplars/*`, the "
    "exemplar sheets",
    writes="`[views/<v>/]layers/<L>/grid/<G>/{icon_margin,icon_rank}`, the level's "
    "`plausibility` attribute",
    ray="one task: the judge's features of every icon and patch, once",
)
