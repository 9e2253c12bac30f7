from __future__ import annotations

import numpy as np
import torch

from atlas_core.featvis import (
    IconRenderer,
    RenderSettings,
    channel,
    direction_cossim,
    fft_image,
    icon_transforms,
    neuron,
    to_valid_rgb,
    whitening_matrix,
)
from atlas_core.featvis.optimize import optimize
from atlas_core.featvis.streams import Streams, icon_seed
from atlas_core.featvis.transforms import compose
from atlas_core.models import ModelSpec, load_model


def _tiny_renderer(**kw) -> IconRenderer:
    s = RenderSettings(**{"icon_px": 32, "steps": 12, "attempts": 1, **kw})
    return IconRenderer(load_model(ModelSpec(name="tiny")), "blocks.2", s)


def test_objectives_compose_like_numbers() -> None:
    acts = {"l": torch.arange(2 * 3 * 3 * 3, dtype=torch.float32).reshape(2, 3, 3, 3)}
    a, b = channel("l", 1), neuron("l", 2)
    assert torch.allclose((a + 2 * b - 1.0)(acts), a(acts) + 2 * b(acts) - 1.0)
    assert torch.allclose(b(acts), acts["l"][:, 2, 1, 1])
    assert (a + b).layers == frozenset({"l"})


def test_cossim_objective_matches_the_formula() -> None:
    torch.manual_seed(0)
    t = torch.randn(3, 5, 4, 4)
    v = torch.randn(3, 5)
    s = torch.randn(5, 5)
    s = s @ s.T
    got = direction_cossim("l", v, power=4, whiten=s)({"l": t})
    a = t[:, :, 2, 2]
    vw = v @ s
    dot = (a * vw).mean(-1)
    cos = torch.clamp(dot / (a.norm(dim=-1) + 1e-4), min=0.1)
    assert torch.allclose(got, dot * cos**4)


def test_whitening_is_the_inverse_second_moment() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4000, 6)) @ rng.normal(size=(6, 6))
    m = x.T @ x / len(x)
    s = whitening_matrix(m, eps=0)
    assert np.allclose(s @ m, np.eye(6), atol=1e-4)
    white = x @ np.linalg.cholesky(s.astype(np.float64))
    assert np.allclose(white.T @ white / len(x), np.eye(6), atol=1e-3)


def test_fft_image_and_transforms_keep_shapes_in_range() -> None:
    gen = Streams.from_seed(0, 4)
    params, raw = fft_image((4, 3, 40, 40), rng=gen)
    img = to_valid_rgb(raw)()
    assert img.shape == (4, 3, 40, 40) and img.min() >= 0 and img.max() <= 1
    out = compose(icon_transforms(40))(img, gen)
    assert out.shape == (4, 3, 40, 40)
    (out.sum()).backward()
    assert params[0].grad is not None and params[0].grad.abs().sum() > 0


def test_objective_rises_after_a_few_steps() -> None:
    r = _tiny_renderer()
    gen = torch.Generator().manual_seed(0)
    vecs = torch.randn(4, 32, generator=gen)
    obj = direction_cossim("blocks.2", vecs, power=2)
    params, raw = fft_image((4, 3, 32, 32), rng=Streams.from_seed(1, 4))
    image_fn = to_valid_rgb(raw)
    with torch.no_grad():
        before = obj(r.forward(image_fn()))
    _, after, hist = optimize(
        r.forward,
        obj,
        params,
        image_fn,
        steps=40,
        lr=0.05,
        transforms=icon_transforms(32),
        rng=Streams.from_seed(2, 4),
    )
    assert (after > before).all(), (before, after)
    assert hist[-1] > hist[0]


SEEDS = (11, 12, 13, 14, 15, 16)


def test_rendering_is_reproducible_and_best_of_n_keeps_the_best() -> None:
    d = np.random.default_rng(0).normal(size=(6, 32)).astype(np.float32)
    one = _tiny_renderer().render(d, seeds=SEEDS)
    two = _tiny_renderer().render(d, seeds=SEEDS)
    assert np.array_equal(one[0], two[0]) and np.array_equal(one[1], two[1])
    assert one[0].shape == (6, 32, 32, 3) and one[0].dtype == np.uint8
    # attempt a of icon i draws from the stream icon_seed(seeds[i], "attempt", a)
    per_attempt = [_render_attempt(_tiny_renderer(), d, a) for a in range(3)]
    assert np.allclose(per_attempt[0], one[1], atol=1e-6)
    _icons, best, cos = _tiny_renderer(attempts=3).render(d, seeds=SEEDS)
    assert np.allclose(best, np.max(per_attempt, axis=0), atol=1e-6)
    assert not np.allclose(best, per_attempt[0])  # some icon took a later attempt
    assert cos.shape == (6,) and (np.abs(cos) <= 1).all()


def test_an_icon_does_not_depend_on_its_batch() -> None:
    """Every random draw of an icon comes from its own seed: the same icon, rendered alone, in
    another batch split, or in another order, has the same bytes."""
    d = np.random.default_rng(1).normal(size=(5, 32)).astype(np.float32)
    seeds = [icon_seed(0, "blocks.2", 4, i, 0) for i in range(5)]
    r = _tiny_renderer(steps=8, attempts=2)
    whole = r.render(d, seeds=seeds)[0]
    split = np.concatenate([r.render(d[a:b], seeds=seeds[a:b])[0] for a, b in ((0, 2), (2, 5))])
    alone = r.render(d[3:4], seeds=seeds[3:4])[0]
    backwards = r.render(d[::-1].copy(), seeds=seeds[::-1])[0][::-1]
    assert np.array_equal(whole, split) and np.array_equal(whole[3:4], alone)
    assert np.array_equal(whole, backwards)
    other = r.render(d[:1], seeds=[seeds[0] + 1])[0]
    assert not np.array_equal(whole[:1], other)  # the seed does matter


def _render_attempt(r: IconRenderer, d: np.ndarray, attempt: int) -> np.ndarray:
    s = r.settings
    gen = Streams([icon_seed(x, "attempt", attempt) for x in SEEDS])
    params, raw = fft_image((len(d), 3, s.icon_px, s.icon_px), sd=s.sd, rng=gen)
    obj = direction_cossim(r.layer, torch.tensor(d), power=s.cos_power)
    _, score, _ = optimize(
        r.forward,
        obj,
        params,
        to_valid_rgb(raw),
        steps=s.steps,
        lr=s.lr,
        transforms=r.transforms,
        rng=gen,
    )
    return score.numpy()


def test_alpha_parameterization_renders_rgb_icons_on_white() -> None:
    gen = Streams.from_seed(0, 2)
    params, raw = fft_image((2, 4, 32, 32), rng=gen)
    rgba = to_valid_rgb(raw)()
    assert rgba.shape == (2, 4, 32, 32) and 0 <= rgba.min() and rgba.max() <= 1
    from atlas_core.featvis.transforms import collapse_alpha, flatten_alpha

    out = collapse_alpha()(rgba, gen)
    out.sum().backward()
    assert out.shape == (2, 3, 32, 32) and params[0].grad[:, 3].abs().sum() > 0  # alpha learns
    clear = torch.cat([torch.zeros(1, 3, 4, 4), torch.zeros(1, 1, 4, 4)], 1)
    assert torch.equal(flatten_alpha(clear), torch.ones(1, 3, 4, 4))  # transparent -> white
    d = np.random.default_rng(0).normal(size=(2, 32)).astype(np.float32)
    icons, score, cos = _tiny_renderer(alpha=True).render(d, seeds=(1, 2))
    assert icons.shape == (2, 32, 32, 3) and np.isfinite(score).all() and cos.shape == (2,)
