from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from atlas_core.extract import ActivationExtractor, map_positions, sample_positions
from atlas_core.models import ModelSpec, load_model


def test_positions_are_seeded_per_image_and_avoid_edges() -> None:
    ids = np.arange(5000)
    a = sample_positions(ids, 3, (14, 14), seed=4)
    assert a.shape == (15000, 2)
    assert a.min() == 1 and a.max() == 12  # edge cells 0 and 13 never used, the rest all are
    sub = np.array([17, 4000, 3])
    b = sample_positions(sub, 3, (14, 14), seed=4)
    rows = (sub[:, None] * 3 + np.arange(3)).ravel()
    assert np.array_equal(a[rows], b)  # any subset can be recreated
    assert not np.array_equal(a, sample_positions(ids, 3, (14, 14), seed=5))
    hist = np.bincount(a[:, 0], minlength=14)[1:13]
    assert hist.min() > 0.8 * hist.mean()  # roughly uniform
    centre = sample_positions(ids[:4], 2, (7, 7), seed=0, mode="centre")
    assert (centre == 3).all()


def test_map_positions_keeps_the_same_place() -> None:
    pos = np.array([[0, 0], [3, 6], [6, 6]])
    assert map_positions(pos, (7, 7), (14, 14)).tolist() == [[1, 1], [7, 13], [13, 13]]
    assert map_positions(pos, (7, 7), (7, 7)).tolist() == pos.tolist()


def test_extraction_equals_a_direct_forward_pass() -> None:
    m = load_model(ModelSpec(name="tiny"))
    grids = {"blocks.1": (16, 16), "blocks.2": (8, 8)}
    ex = ActivationExtractor(m, ["blocks.1", "blocks.2"], grids, topk=3)
    x = torch.randn(6, 3, 64, 64)
    pos = sample_positions(np.arange(6), 2, (8, 8), seed=0)
    out = ex(x, pos)
    with torch.no_grad():
        f1 = m.module.blocks[:2](x)
        f2 = m.module.blocks[2](f1)
        logits = m.module(x)
    img = np.repeat(np.arange(6), 2)
    fine = map_positions(pos, (8, 8), (16, 16))
    ref2 = f2[img, :, pos[:, 0], pos[:, 1]].numpy()
    ref1 = f1[img, :, fine[:, 0], fine[:, 1]].numpy()
    assert np.abs(out.acts["blocks.2"] - ref2).max() < 1e-4
    assert np.abs(out.acts["blocks.1"] - ref1).max() < 1e-4
    flat = f2.permute(0, 2, 3, 1).reshape(6, -1, f2.shape[1]).double().numpy()
    per_image = out.moment["blocks.2"].numpy()  # (B, C, C): one image's positions each
    assert per_image.shape == (6, 32, 32)
    for b in range(6):
        assert np.allclose(per_image[b], flat[b].T @ flat[b], rtol=1e-6)
    assert out.moment_count["blocks.2"] == 6 * 64
    assert np.array_equal(out.top_class, logits.topk(3, -1).indices.numpy())
    assert np.allclose(out.top_prob.sum(1), logits.softmax(-1).topk(3, -1).values.sum(1).numpy())


def test_extraction_without_logits_stops_at_the_layer() -> None:
    m = load_model(ModelSpec(name="tiny"))
    calls = []
    m.module.head.register_forward_hook(lambda *_: calls.append(1))
    ex = ActivationExtractor(m, ["blocks.2"], {"blocks.2": (8, 8)}, topk=0)
    out = ex(torch.randn(2, 3, 64, 64), np.array([[1, 1], [2, 2]]))
    assert calls == [] and out.acts["blocks.2"].shape == (2, 32) and out.top_class.shape == (2, 0)


@pytest.mark.parametrize("frozen", [False, True])
def test_attribution_of_several_layers_in_one_pass_matches_finite_differences(
    frozen: bool,
) -> None:
    """a . d logit_c / d a at the sampled position of each layer: d/dt logit_c((1 + t) a) at t = 0,
    for two layers extracted in one pass (with trainable and with frozen weights: the graph must
    reach every captured layer either way)."""
    torch.manual_seed(0)
    m = load_model(ModelSpec(name="tiny"))
    m.module.double()
    m.module.requires_grad_(not frozen)
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    pos = sample_positions(np.arange(2), 2, (8, 8), seed=0)
    grids = {"blocks.1": (16, 16), "blocks.2": (8, 8)}
    layers = list(grids)
    top = ActivationExtractor(m, layers, grids, topk=3, attr_classes=3)(x, pos)
    every = ActivationExtractor(m, layers, grids, topk=3, attr_classes=-1, class_chunk=4)(x, pos)
    assert top.attr is not None and every.attr is not None

    def logit(layer: int, b: int, p: np.ndarray, t: float, c: int) -> float:
        def scale(_m, _i, o):
            o = o.clone()
            o[b, :, p[0], p[1]] *= 1 + t
            return o

        h = m.module.blocks[layer].register_forward_hook(scale)
        with torch.no_grad():
            out = float(m.module(x)[b, c])
        h.remove()
        return out

    eps, checked = 1e-6, 0
    for name in layers:
        where = map_positions(pos, (8, 8), grids[name])
        block = int(name.split(".")[1])
        for s in range(4):
            b = s // 2
            for j in range(3):
                c = int(top.top_class[b, j])
                up = logit(block, b, where[s], eps, c)
                fd = (up - logit(block, b, where[s], -eps, c)) / (2 * eps)
                assert abs(top.attr[name][s, j] - fd) < 1e-5 * max(1.0, abs(fd)), (name, s, j)
                assert abs(every.attr[name][s, c] - top.attr[name][s, j]) < 1e-6
                checked += 1
        assert every.attr[name].shape == (4, 10)
    assert checked == 24
    assert not np.allclose(top.attr["blocks.1"], 0)  # the earlier layer is in the graph


def test_a_shards_moment_does_not_depend_on_how_its_images_were_batched() -> None:
    """Moments are summed image by image, in order: batches of 6, of 4 + 2 and of 1 give the
    same float64 sum to the bit (a batched sum would depend on the batch's blocking)."""
    from atlas_core.extract import ShardBuffers

    m = load_model(ModelSpec(name="tiny"))
    ex = ActivationExtractor(m, ["blocks.2"], {"blocks.2": (8, 8)}, topk=0)
    x = torch.randn(6, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    pos = sample_positions(np.arange(6), 1, (8, 8), seed=0)
    sums = []
    for split in ((0, 6), (0, 4, 6), (0, 1, 2, 3, 4, 5, 6)):
        buf = ShardBuffers(6, 1, {"blocks.2": 32}, 0, 0)
        for a, b in itertools.pairwise(split):
            idx = np.arange(a, b)
            buf.add(idx, ex(x[a:b], pos[a:b]))
        sums.append(buf.result(0, 0, 6, 0.0).moment["blocks.2"])
    assert sums[0].shape == (32, 32) and np.abs(sums[0]).sum() > 0
    assert np.array_equal(sums[0], sums[1]) and np.array_equal(sums[0], sums[2])
