from __future__ import annotations

import numpy as np
import pytest
import torch

from atlas_core.featvis import (
    IconRecipe,
    IconRenderer,
    IconSettings,
    channel,
    direction_cossim,
    fft_image,
    icon_transforms,
    neuron,
    to_valid_rgb,
    whitening_matrix,
)
from atlas_core.featvis.optimize import optimize
from atlas_core.featvis.recipe import Optimizer
from atlas_core.featvis.streams import Streams, icon_seed
from atlas_core.featvis.transforms import compose
from atlas_core.models import ModelSpec, load_model


def _tiny_renderer(
    spectrum: np.ndarray | None = None, white: np.ndarray | None = None, **kw
) -> IconRenderer:
    s = IconSettings(**{"icon_px": 32, "steps": 12, "attempts": 1, **kw})
    recipe = IconRecipe.from_settings(s, spectrum=spectrum, whiten=white)
    return IconRenderer(load_model(ModelSpec(name="tiny")), "blocks.2", recipe)


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


def test_the_cosine_objective_is_the_cosine_at_the_centre() -> None:
    from atlas_core.featvis.objectives import direction_cosine

    t = torch.randn(3, 5, 4, 4, generator=torch.Generator().manual_seed(1))
    v = torch.randn(3, 5, generator=torch.Generator().manual_seed(2))
    got = direction_cosine("l", v)({"l": t})
    a = t[:, :, 2, 2]
    centre = (a * v).sum(-1) / (a.norm(dim=-1) * v.norm(dim=-1))
    assert torch.allclose(got, centre, atol=1e-6)
    every = torch.stack(
        [
            torch.stack(
                [
                    (t[:, :, y, x] * v).sum(-1) / (t[:, :, y, x].norm(dim=-1) * v.norm(dim=-1))
                    for x in range(4)
                ]
            )
            for y in range(4)
        ]
    )
    filled = direction_cosine("l", v, fill=0.25)({"l": t})
    assert torch.allclose(filled, 0.75 * centre + 0.25 * every.mean((0, 1)), atol=1e-6)
    r = _tiny_renderer(objective="cosine", fill=0.0, steps=3, white=np.eye(32) * 5)
    d = np.random.default_rng(0).normal(size=(2, 32)).astype(np.float32)
    out = r.render(d, seeds=(1, 2))  # no whitening for the cosine
    assert np.allclose(out.objective, out.cosine, atol=2e-3)  # the objective is the fidelity


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


@pytest.mark.parametrize(
    "scales,degrees,window",
    [
        ([1.0], [0.0], slice(0, 64)),  # integer crops only: the whole image
        ([1.15, 1.25], [-5.0, 5.0], slice(0, 64)),  # zoomed in: the window stays in the crop
        (None, None, slice(24, 40)),  # the real tables: where the window is inside the crop
    ],
)
def test_the_fused_icon_transform_is_the_chain(scales, degrees, window) -> None:
    """One resampling gives the chain's image (pad, five jitters, scale and rotate, a jitter,
    the crop back) from the same per-image draws, wherever the chain's window stays inside its
    jittered crop (beyond, the chain repeats the crop's edge)."""
    from atlas_core.featvis import transforms as T

    x = torch.rand(8, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    kw = {} if scales is None else {"scales": scales, "degrees": degrees}
    chain = [
        T.pad(16),
        *[T.jitter(d) for d in (4, 4, 8, 8, 8)],
        T.scale_rotate(scales or T.ICON_SCALES, degrees or T.ICON_DEGREES),
        T.jitter(2),
        T.crop_or_pad_to(64),
    ]
    want = compose(chain)(x, Streams.from_seed(3, 8))
    got = T.fused_icon_transform(64, **kw)(x, Streams.from_seed(3, 8))
    assert got.shape == want.shape == (8, 3, 64, 64)
    assert (got - want)[..., window, window].abs().max() < 1e-4
    assert not torch.equal(got[0], got[1])  # per image draws


def test_objective_rises_after_a_few_steps() -> None:
    r = _tiny_renderer()
    gen = torch.Generator().manual_seed(0)
    vecs = torch.randn(4, 32, generator=gen)
    obj = direction_cossim("blocks.2", vecs, power=2)
    params, raw = fft_image((4, 3, 32, 32), rng=Streams.from_seed(1, 4))
    image_fn = to_valid_rgb(raw)
    with torch.no_grad():
        before = obj(r.forward(image_fn()))
    _, after, hist, _ = optimize(
        r.forward,
        obj,
        params,
        image_fn,
        steps=40,
        optimizer=Optimizer("adam", 0.05),
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
    _icons, best, cos, _ = _tiny_renderer(attempts=3).render(d, seeds=SEEDS)
    assert np.allclose(best, np.max(per_attempt, axis=0), atol=1e-6)
    assert not np.allclose(best, per_attempt[0])  # some icon took a later attempt
    assert cos.shape == (6,) and (np.abs(cos) <= 1).all()


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
    s = r.recipe
    gen = Streams([icon_seed(x, "attempt", attempt) for x in SEEDS])
    params, raw = fft_image((len(d), 3, s.px, s.px), sd=s.param.sd, rng=gen)
    obj = direction_cossim(r.layer, torch.tensor(d), power=s.objective.power)
    _, score, _, _ = optimize(
        r.forward,
        obj,
        params,
        to_valid_rgb(raw),
        steps=s.steps,
        optimizer=s.optimizer,
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
    icons, score, cos, alpha = _tiny_renderer(alpha="channel").render(d, seeds=(1, 2))
    assert icons.shape == (2, 32, 32, 3) and np.isfinite(score).all() and cos.shape == (2,)
    assert alpha is not None and alpha.shape == (2, 32, 32) and alpha.dtype == np.uint8
    assert alpha.min() < 250  # some of each icon is see-through
    _, _, _, none = _tiny_renderer().render(d, seeds=(1, 2))
    assert none is None


def test_saliency_alpha_is_where_the_objective_looked() -> None:
    """MACO's transparency: the summed |d objective / d pixel| over the steps, clipped at its
    80th percentile per icon. An objective that reads one corner of the image only gets an
    alpha of zero everywhere else."""
    from atlas_core.featvis.recipe import saliency_alpha

    seen = torch.zeros(2, 10, 10)
    seen[0, :3, :3] = torch.arange(9.0).reshape(3, 3) + 1
    seen[1] = torch.arange(100.0).reshape(10, 10)
    a = saliency_alpha(seen)
    assert torch.equal(a[0, 3:], torch.zeros(7, 10)) and a[0, 2, 2] == 1.0
    assert torch.allclose(a[1], (seen[1] / torch.quantile(seen[1].flatten(), 0.8)).clamp(max=1))
    d = np.random.default_rng(0).normal(size=(3, 32)).astype(np.float32)
    r = _tiny_renderer(alpha="saliency", steps=4)
    icons, _, cosine, alpha = r.render(d, seeds=(1, 2, 3))
    assert alpha is not None and alpha.shape == (3, 32, 32)
    assert ((alpha == 255).mean(axis=(1, 2)) >= 0.19).all() and (alpha < 255).any()
    # fidelity is measured on the icon as it is drawn: through its alpha, on white
    a = torch.from_numpy(alpha).float()[:, None] / 255
    drawn = torch.from_numpy(icons).permute(0, 3, 1, 2).float() / 255 * a + (1 - a)
    plain = torch.from_numpy(icons).permute(0, 3, 1, 2).float() / 255
    want = r.cosine(drawn, torch.from_numpy(d))
    assert np.abs(cosine - want).max() < 0.02  # the uint8 rounding of icon and alpha
    assert np.abs(cosine - r.cosine(plain, torch.from_numpy(d))).max() > 0.02


def _spectrum(h: int = 32, w: int = 32) -> np.ndarray:
    """A natural-looking amplitude spectrum (1 / f per channel), (3, h, w // 2 + 1)."""
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    f = np.maximum(np.sqrt(fx * fx + fy * fy), 1.0 / max(h, w))
    return np.stack([1.0 / f, 0.5 / f, 0.3 / f]).astype(np.float32)


def test_phase_only_keeps_the_magnitude_and_optimizes_the_phase() -> None:
    from atlas_core.featvis import PhaseOnly, maco_image

    mag = _spectrum()
    params, raw = maco_image((2, 3, 32, 32), mag, rng=Streams.from_seed(0, 2))
    x = raw()
    got = torch.fft.rfft2(x).abs()[:, :, :, 1:16].detach().numpy()  # columns free of symmetry
    ratio = got / mag[None, :, :, 1:16]
    for i in range(2):  # standardizing scales each image: one factor per image
        assert ratio[i].std() / ratio[i].mean() < 1e-3
    assert abs(float(x[0].mean())) < 1e-4 and abs(float(x[0].std()) - 1) < 2e-3
    assert list(params[0].shape) == [2, 3, 32, 17]
    img = PhaseOnly(mag)((2, 3, 32, 32), Streams.from_seed(0, 2), "cpu")[1]()
    assert img.shape == (2, 3, 32, 32) and 0 <= img.min() and img.max() <= 1


def test_phase_only_raises_the_objective_like_lucids() -> None:
    r = _tiny_renderer(param="maco", spectrum=_spectrum())
    gen = torch.Generator().manual_seed(0)
    vecs = torch.randn(4, 32, generator=gen)
    obj = direction_cossim("blocks.2", vecs, power=2)
    streams = Streams.from_seed(1, 4)
    params, image_fn = r.param((4, 3, 32, 32), streams, "cpu")
    with torch.no_grad():
        before = obj(r.forward(image_fn()))
    _, after, hist, _ = optimize(
        r.forward, obj, params, image_fn, steps=40, rng=streams, optimizer=Optimizer("nadam", 0.5)
    )
    assert (after > before + 0.01).all() and hist[-1] > hist[0]


@pytest.mark.parametrize("param", ["fft", "maco"])
def test_a_group_renders_to_the_same_bytes_in_any_work_split(param: str) -> None:
    """Icons are optimized in fixed groups: the same group holds the same icons in the same
    order whatever the work item, so every forward pass sees the same shape and the same bytes
    (recorded here), which is what makes the result independent of the CPU's batch-dependent
    kernels; every random draw comes from the icon's own seed. For both parameterizations."""
    import hashlib

    d = np.random.default_rng(1).normal(size=(10, 32)).astype(np.float32)
    seeds = [icon_seed(0, "blocks.2", 4, i, 0) for i in range(10)]
    r = _tiny_renderer(steps=5, attempts=2, param=param, spectrum=_spectrum())
    seen: list[tuple[tuple[int, ...], str]] = []
    forward = r.forward

    def recording(images: torch.Tensor):
        seen.append(
            (
                tuple(images.shape),
                hashlib.sha256(images.detach().contiguous().numpy().tobytes()).hexdigest(),
            )
        )
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
    assert np.array_equal(whole[0][1:4], other[0][1:4])  # and only for its own icon


def test_the_recipe_identity_covers_exactly_what_changes_an_icon() -> None:
    """An inactive setting (``fill`` under Lucid's objective, ``cos_power``/``whiten`` under the
    cosine, ``decay_power`` outside the Fourier parameterization) changes neither the settings'
    identity (the stage's fingerprint) nor the recipe's (the icon cache key); an active one
    changes both, and the whitening matrix and MACO's spectrum count by their bytes."""
    from atlas_core.featvis.recipe import IconRecipe, IconSettings

    def ids(**kw) -> tuple[dict, dict]:
        white, spec = kw.pop("white", None), kw.pop("spectrum", None)
        s = IconSettings(**kw)
        return s.identity(), IconRecipe.from_settings(s, spectrum=spec, whiten=white).identity()

    lucid = ids(objective="lucid")
    assert ids(objective="lucid", fill=0.1) == lucid
    assert ids(objective="lucid", cos_power=2)[0] != lucid[0]
    assert ids(objective="lucid", cos_power=2)[1] != lucid[1]
    cos = ids(objective="cosine")
    assert ids(objective="cosine", cos_power=1.0, whiten=False) == cos
    assert ids(objective="cosine", white=np.eye(4)) == cos  # the cosine is never whitened
    assert ids(objective="cosine", fill=0.2)[1] != cos[1]
    assert ids(param="pixel", decay_power=2.0) == ids(param="pixel")
    assert ids(saliency_percentile=50.0) == ids()  # no saliency alpha: inactive
    sal = ids(alpha="saliency")
    assert ids(alpha="saliency", saliency_percentile=50.0)[1] != sal[1]
    w1, w2 = np.eye(4), np.eye(4) * 2
    assert ids(white=w1)[1] != ids(white=w2)[1] and ids(white=w1)[1] == ids(white=w1.copy())[1]
    spec = _spectrum()
    assert ids(param="maco", spectrum=spec)[1] != ids(param="maco", spectrum=spec * 2)[1]


def test_a_bad_icon_setting_names_its_key() -> None:
    """The library value checks itself, naming the bare field (the pipeline's group, which
    derives from it, names the full key: tests/pipelines/test_config.py)."""
    from atlas_core.errors import ConfigError
    from atlas_core.featvis.recipe import IconSettings

    with pytest.raises(ConfigError, match=r"^steps: 0 is not valid"):
        IconSettings(steps=0)
    with pytest.raises(ConfigError, match=r"^alpha: 'channel'.*param=fft"):
        IconSettings(param="maco", alpha="channel")
