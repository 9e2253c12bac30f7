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


def test_a_group_renders_to_the_same_bytes_in_any_work_split() -> None:
    """Icons are optimized in fixed groups: the same group holds the same icons in the same
    order whatever the work item, so every forward pass sees the same shape and the same bytes
    (recorded here), which is what makes the result independent of the CPU's batch-dependent
    kernels; every random draw comes from the icon's own seed."""
    import hashlib

    d = np.random.default_rng(1).normal(size=(10, 32)).astype(np.float32)
    seeds = [icon_seed(0, "blocks.2", 4, i, 0) for i in range(10)]
    r = _tiny_renderer(steps=5, attempts=2)
    seen: list[tuple[tuple[int, ...], str]] = []
    forward = r.forward

    def recording(images: torch.Tensor):
        seen.append((tuple(images.shape),
                     hashlib.sha256(images.detach().contiguous().numpy().tobytes()).hexdigest()))
        return forward(images)

    r.forward = recording  # type: ignore[method-assign]
    whole = r.render_groups(d, seeds=seeds, group=4)
    log_whole, seen[:] = list(seen), []
    parts = [r.render_groups(d[a:b], seeds=seeds[a:b], group=4) for a, b in ((0, 4), (4, 10))]
    assert log_whole == seen  # the same tensors, call for call
    assert {shape[0] for shape, _ in seen} == {8, 4, 2}  # groups of 4 and 2, x 2 attempts
    for k in range(3):
        assert np.array_equal(whole[k], np.concatenate([p[k] for p in parts]))
    other = r.render_groups(d[:4], seeds=[seeds[0] + 1, *seeds[1:4]], group=4)
    assert not np.array_equal(whole[0][:1], other[0][:1])  # the seed does matter


def test_streams_are_per_icon_counters_on_the_device() -> None:
    """A stream's draws depend on its seed and how many draws came before, never on the
    other streams of the batch; uniform draws are in [0, 1), normal draws look normal."""
    a = Streams([5, 6, 7])
    b = Streams([7, 9])
    ua, ub = a.uniform(1000), b.uniform(1000)
    assert torch.equal(ua[2], ub[0]) and not torch.equal(ua[0], ua[1])
    assert 0 <= float(ua.min()) and float(ua.max()) < 1 and abs(float(ua.mean()) - 0.5) < 0.02
    n = Streams([1]).normal(20000)
    assert abs(float(n.mean())) < 0.03 and abs(float(n.std()) - 1) < 0.03
    c = Streams([5])
    c.uniform(10)
    assert torch.equal(c.uniform(5)[0], Streams([5]).uniform(15)[0, 10:])


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
