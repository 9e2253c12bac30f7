"""A network that changes: two checkpoints of the tiny net trained on generated images, loaded
through the registry, and their diff concentrated where training changed the representation."""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from atlas_core.compare import (
    DiffAccumulator,
    both_kept,
    exact_knn,
    largest_changes,
    rows_in_cells,
)
from atlas_core.data.sources import folder_labels, folder_manifest
from atlas_core.models import ModelSpec, load_model
from atlas_core.models import train_tiny as tt
from atlas_core.reduce.normalize import normalize_layout

log = logging.getLogger(__name__)
COLOUR = 3  # labels below are the colour classes, the rest stripes


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    t0 = time.perf_counter()
    states = tt.train()
    log.info("two checkpoints trained in %.1f s", time.perf_counter() - t0)
    return tt.save(states, tmp_path_factory.mktemp("tiny")), states


@pytest.fixture(scope="module")
def held_out():
    return tt.make_images(64, seed=2)  # 384 images the training never saw


def _features(path, images):
    """Pooled last-block features (n, 32) and top-1 (n,) of the checkpoint, via the registry."""
    model = load_model(ModelSpec("tiny", weights=str(path)))
    with torch.no_grad():
        f = model.module.blocks(model.preprocess.batch(images)).mean(dim=(2, 3))
        return f.numpy(), model.module.head(f).argmax(1).numpy()


def test_the_late_checkpoint_classifies_far_better(checkpoints, held_out) -> None:
    paths, states = checkpoints
    images, labels = held_out
    early = _features(paths["early"], images)[1]
    late = _features(paths["late"], images)[1]
    assert np.array_equal(late, tt.predict(states["late"], images))  # the file is the state
    acc = {n: float((p == labels).mean()) for n, p in (("early", early), ("late", late))}
    colour = labels < COLOUR
    early_colour = float((early[colour] == labels[colour]).mean())
    early_stripes = float((early[~colour] == labels[~colour]).mean())
    log.info(
        "accuracy %s; early on colours %.3f, on stripes %.3f", acc, early_colour, early_stripes
    )
    assert acc["late"] >= 0.95 and acc["early"] <= 0.8
    assert early_colour >= 0.9 and early_stripes <= 0.6  # colours first, orientation later


def test_training_is_deterministic() -> None:
    plan = tt.TrainPlan(per_class=20, early_steps=2, late_steps=5, seed=3)
    a, b = tt.train(plan), tt.train(plan)
    for name in ("early", "late"):
        assert all(torch.equal(a[name][k], b[name][k]) for k in a[name])
    assert not torch.equal(a["early"]["head.weight"], a["late"]["head.weight"])


def test_the_image_folder_labels_match_the_classes(tmp_path) -> None:
    from PIL import Image

    paths = tt.write_images(tmp_path, 3, seed=5)
    images, labels = tt.make_images(3, seed=5)
    man = folder_manifest(str(tmp_path))
    got, names = folder_labels(man.uris)
    order = [paths.index(type(paths[0])(u)) for u in man.uris]
    assert names == tuple(f"{i}-{c}" for i, c in enumerate(tt.CLASSES))
    assert got.tolist() == labels[order].tolist()
    assert np.array_equal(np.asarray(Image.open(paths[7])), images[7])  # PNG: lossless


def _pca_layout(f: np.ndarray) -> np.ndarray:
    c = f - f.mean(axis=0)
    _, _, vt = np.linalg.svd(c, full_matrices=False)
    return normalize_layout(c @ vt[:2].T)[0]


def test_the_diff_concentrates_where_training_changed(checkpoints, held_out) -> None:
    """Each checkpoint's own map (a 2-D PCA of its features, normalized), kNN k=10 in feature
    space: preservation well below 1, flips nearly all wrong -> right and in the stripe images,
    and across the early map's cells the flip rate rises as preservation falls."""
    paths, _ = checkpoints
    images, labels = held_out
    fa, pa = _features(paths["early"], images)
    fb, pb = _features(paths["late"], images)
    la, lb = _pca_layout(fa), _pca_layout(fb)
    kept = both_kept(la, lb)
    acc = DiffAccumulator(kept, (4, 8), k=10)
    ka, kb = exact_knn(fa, 10, rows=kept), exact_knn(fb, 10, rows=kept)
    part = acc.add(0, la, lb, knn_a=ka, knn_b=kb, pred_a=pa, pred_b=pb, label=labels)
    diff = acc.finish()
    f = diff.figures
    log.info("tiny early -> late: %s", {k: v for k, v in f.items() if k != "transitions"})
    assert 0.05 < f["neighbourhood_preservation"] < 0.8 and 0.1 < f["flip_rate"] < 0.6
    t = f["transitions"]
    assert t["wrong_to_right"] >= 0.9 * f["flips"] and t["right_to_wrong"] <= 0.02 * f["flips"]
    stripes = labels >= COLOUR
    flips_s, flips_c = part.flip[stripes].mean(), part.flip[~stripes].mean()
    pres_s, pres_c = np.nanmean(part.preservation[stripes]), np.nanmean(part.preservation[~stripes])
    log.info(
        "stripes: flip %.3f pres %.3f; colours: flip %.3f pres %.3f",
        flips_s,
        pres_s,
        flips_c,
        pres_c,
    )
    assert flips_s >= 5 * flips_c and pres_s < 0.6 * pres_c
    a = diff.levels[8].a
    rho = spearmanr(a.flip_rate, 1 - a.preservation, nan_policy="omit").statistic
    quarter = np.sort(a.flips)[::-1][: max(1, len(a.flips) // 4)].sum() / a.flips.sum()
    log.info(
        "level 8: %d cells, spearman(flip, 1-pres) %.2f, top quarter holds %.2f of flips",
        len(a.cell),
        rho,
        quarter,
    )
    assert rho > 0.5 and quarter > 0.7
    top = a.cell[largest_changes(a, 3, "flips")]
    in_top = rows_in_cells(la, 8, top)
    assert stripes[in_top].mean() > 0.8  # the most-changed cells are stripe cells
