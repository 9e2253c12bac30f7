"""Grid stage: bin the layout at every size; per kept cell its mean, count and top classes."""

from __future__ import annotations

import logging

import numpy as np

from atlas_core.grid import cell_index, finalize, partial_sums, top_classes_per_cell
from atlas_core.store import RunStore
from atlas_core.store.run_store import GridArrays
from pipelines.common import StageResult
from pipelines.settings import Settings

log = logging.getLogger(__name__)


def run(s: Settings, fp: str) -> StageResult:
    store = RunStore.open(s.store_url, mode="r+", storage_options=s.storage_options)
    layout = store.layout(s.layer)
    acts = store.acts(s.layer)
    top1 = store.top_class()[:, 0] if store.top_class().shape[1] else None
    sample_label = top1[store.image_of_sample()] if top1 is not None else None
    kept_per_size = {}
    for size in s.grid.sizes:
        cells = cell_index(layout, size)
        kept, mean, count = finalize(partial_sums(cells, acts, size), s.grid.min_count)
        if sample_label is not None:
            tc, tn = top_classes_per_cell(cells, sample_label, kept, s.grid.top)
        else:
            tc = np.full((len(kept), s.grid.top), -1, np.int32)
            tn = np.zeros((len(kept), s.grid.top), np.int32)
        xy = np.stack([kept % size, kept // size], axis=1).astype(np.int32)
        store.write_grid(
            s.layer,
            GridArrays(size, xy, mean, count.astype(np.int32), tc, tn),
            {"min_count": s.grid.min_count, "fingerprint": fp},
        )
        kept_per_size[str(size)] = len(kept)
        log.info(
            "grid %d: %d of %d cells kept (count >= %d)",
            size,
            len(kept),
            size * size,
            s.grid.min_count,
        )
    return StageResult(counts={"cells_kept": kept_per_size})
