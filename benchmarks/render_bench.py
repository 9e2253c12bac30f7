"""Render benchmark: our batched renderer against one-icon-at-a-time rendering with the real
torch-lucent ``render_vis``, on the same model, layer, directions, steps, icon size and objective,
and against lucent's defaults (128 px upsampled to 224 px, the whole network every step).

Directions are real: means of groups of EfficientNet-Lite0 blocks.4 activations of photo crops.
Fidelity is the same figure for every method: the cosine between the finished icon's activation at
the layer's centre (fed back at its own size) and its direction.

Also this machine's limit for the work: the bare forward and backward pass of the same truncated
network at the same batch (our group) and icon size, without transforms, parameterization or
optimizer; ``fraction_of_limit`` is ours over it.

    python -m benchmarks.render_bench [--icons 32] [--steps 64] [--px 64] [--lucent-default 3]
"""

from __future__ import annotations

import argparse
import logging
import time

import numpy as np
import torch

from benchmarks.common import Timer, report, write

log = logging.getLogger("benchmarks.render")
LAYER = "blocks.4"


def directions(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n cell-like directions (means of 16 activations each) and the layer's second moment."""
    from atlas_core.data import decode, photo_crops
    from atlas_core.extract import ActivationExtractor, sample_positions
    from atlas_core.models import ModelSpec, load_model

    m = load_model(ModelSpec())
    man = photo_crops(n * 16, seed=seed)
    pairs = zip(man.uris, man.crops, strict=True)
    imgs = np.stack([m.preprocess.to_array(decode(u, c).image) for u, c in pairs])
    ex = ActivationExtractor(m, [LAYER], {LAYER: (14, 14)}, topk=0)
    acts, moment, count = [], 0.0, 0
    for i in range(0, len(imgs), 64):
        b = imgs[i : i + 64]
        out = ex(
            m.preprocess.batch(b),
            sample_positions(np.arange(i, i + len(b)), 1, (14, 14), seed=seed),
        )
        acts.append(out.acts[LAYER])
        moment = moment + out.moment[LAYER].sum(0).numpy()
        count += out.moment_count[LAYER]
    a = np.concatenate(acts)
    groups = np.random.default_rng(seed).permutation(len(a)).reshape(n, 16)
    return a[groups].mean(axis=1).astype(np.float32), moment / count


def ours(model, dirs, whiten, px, steps):
    """The pipeline's way: fixed groups of ``suggest_group()`` icons (16 on a CPU), each one
    tensor. Returns (seconds, icons, cosines, the group)."""
    from atlas_core.featvis import IconRecipe, IconRenderer, IconSettings

    settings = IconSettings(icon_px=px, steps=steps, attempts=1)
    r = IconRenderer(model, LAYER, IconRecipe.from_settings(settings, whiten=whiten))
    group = r.suggest_group()
    with Timer() as t:
        icons, _, cos, _ = r.render_groups(dirs, seeds=range(len(dirs)), group=group)
    return t.seconds, icons, cos, group


def bare_limit(model, px: int, batch: int, steps: int = 24) -> float:
    """This machine's physical limit for the work: icon-steps per second of the bare forward
    and backward pass of the same truncated network (normalize, stop at the layer) on a batch
    of ``batch`` images of ``px`` px, no transforms, no parameterization, no optimizer. Three
    untimed warm-up steps."""
    from atlas_core.featvis import IconRecipe, IconRenderer, IconSettings

    recipe = IconRecipe.from_settings(IconSettings(icon_px=px, steps=1, attempts=1))
    r = IconRenderer(model, LAYER, recipe)
    x = torch.rand(batch, 3, px, px).contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)  # channels-last, as our transforms hand the network its input
    for i in range(3 + steps):
        if i == 3:
            t0 = time.perf_counter()
        loss = r.forward(x)[LAYER].sum()
        loss.backward()
        x.grad = None
    return batch * steps / (time.perf_counter() - t0)


def lucent_one_at_a_time(model, dirs, whiten, px, steps, image_px, fixed, ours_tf=False):
    """Real lucent render_vis, one direction per call, our objective written as a lucent one.

    Each call gets a fresh copy of the model (made outside the timing): render_vis registers a
    forward hook on every module and never removes it, so reusing one model would run later
    calls under a growing pile of stale hooks. ``ours_tf``: our atlas transform list (one random
    stream per call) instead of lucent's standard transforms."""
    import copy

    import kornia
    from kornia.geometry import transform as kgt

    # torch-lucent 0.1.8 calls kornia's pre-0.5 top-level names; current kornia moved them.
    kornia.get_rotation_matrix2d = getattr(
        kornia, "get_rotation_matrix2d", kgt.get_rotation_matrix2d
    )
    kornia.warp_affine = getattr(kornia, "warp_affine", kgt.warp_affine)
    from lucent.optvis import objectives, param, render, transform

    pre = model.preprocess
    normalize = lambda x: pre.normalize(x)  # noqa: E731  (lucent composes plain callables)
    vw = torch.tensor(dirs) @ torch.tensor(whiten).T

    @objectives.wrap_objective()
    def cossim(layer, vec, power=4.0):
        def inner(hook):
            t = hook(layer)
            a = t[:, :, t.shape[2] // 2, t.shape[3] // 2]
            dot = (a * vec).mean(-1)
            return -(dot * torch.clamp(dot / (a.norm(dim=-1) + 1e-4), min=0.1) ** power).mean()

        return inner

    from atlas_core.featvis.streams import Streams
    from atlas_core.featvis.transforms import icon_transforms

    icons, seconds = [], 0.0
    for i, v in enumerate(vw):
        module = copy.deepcopy(model.module).eval()  # a clean model per call, not timed
        if ours_tf:
            rng = Streams.from_seed(i, 1)
            tfs = [lambda x, f=f: f(x, rng) for f in icon_transforms(image_px)]  # noqa: B023
        else:
            tfs = list(transform.standard_transforms)
        with Timer() as t:
            out = render.render_vis(
                module,
                cossim(LAYER.replace(".", "_"), v),
                param_f=lambda: param.image(image_px, fft=True, decorrelate=True),
                transforms=[*tfs, normalize],
                thresholds=(steps,),
                preprocess=False,
                progress=False,
                show_image=False,
                fixed_image_size=fixed,
            )
        seconds += t.seconds
        icons.append(out[-1][0])
    arr = (np.clip(np.stack(icons), 0, 1) * 255).round().astype(np.uint8)
    return seconds, arr


def fidelity(model, icons: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    from atlas_core.featvis import IconRecipe, IconRenderer, IconSettings

    recipe = IconRecipe.from_settings(IconSettings(icon_px=icons.shape[1]))
    r = IconRenderer(model, LAYER, recipe)
    x = torch.tensor(icons).permute(0, 3, 1, 2).float() / 255
    return r.cosine(x, torch.tensor(dirs))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--icons", type=int, default=32)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--px", type=int, default=64)
    ap.add_argument("--lucent-default", type=int, default=3, help="icons rendered at 128->224")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(torch.get_num_threads())
    from atlas_core.featvis import whitening_matrix
    from atlas_core.models import ModelSpec, load_model

    model = load_model(ModelSpec())
    dirs, moment = directions(args.icons)
    whiten = whitening_matrix(moment)
    n, steps = args.icons, args.steps
    t_ours, ic_ours, _, group = ours(model, dirs, whiten, args.px, steps)
    limit = bare_limit(model, args.px, group)
    rate = n * steps / t_ours
    t_one, ic_one = lucent_one_at_a_time(model, dirs, whiten, args.px, steps, args.px, args.px)
    t_otf, ic_otf = lucent_one_at_a_time(
        model, dirs, whiten, args.px, steps, args.px, args.px, ours_tf=True
    )
    k = max(1, min(args.lucent_default, n))
    t_def, ic_def = lucent_one_at_a_time(model, dirs[:k], whiten, args.px, steps, 128, None)
    f_ours, f_one, f_otf, f_def = (
        fidelity(model, ic_ours, dirs),
        fidelity(model, ic_one, dirs),
        fidelity(model, ic_otf, dirs),
        fidelity(model, ic_def, dirs[:k]),
    )
    per = {"ours": t_ours / n, "one": t_one / n, "otf": t_otf / n, "default": t_def / k}
    report(
        "render vs the bare forward+backward limit",
        rate,
        limit,
        "icon-steps/s",
        f"bare pass of the truncated network, batch {group}, {args.px} px",
    )
    report(
        f"render {n} icons {args.px}px x {steps} steps",
        per["ours"],
        per["one"],
        "s/icon",
        f"fidelity ours {f_ours.mean():.3f} one-at-a-time {f_one.mean():.3f}",
    )
    report(
        "vs lucent one at a time with our transform list",
        per["ours"],
        per["otf"],
        "s/icon",
        f"fidelity lucent with our transforms {f_otf.mean():.3f}",
    )
    report(
        "vs lucent defaults (128->224 px, whole network)",
        per["ours"],
        per["default"],
        "s/icon",
        f"fidelity lucent default {f_def.mean():.3f}",
    )

    def block(seconds_per_icon: float, fid: np.ndarray, how: str) -> dict[str, object]:
        return {
            "seconds_per_icon": round(seconds_per_icon, 4),
            "icon_steps_per_second": round(steps / seconds_per_icon, 1),
            "fidelity_cosine_mean": round(float(fid.mean()), 4),
            "fidelity_cosine_std": round(float(fid.std()), 4),
            "method": how,
        }

    write(
        "render",
        {
            "model": "efficientnet_lite0",
            "layer": LAYER,
            "icons": n,
            "icon_px": args.px,
            "steps": steps,
            "objective": "mean(a*Sv) * max(0.1, mean(a*Sv)/|a|)^4 at the centre",
            "device": "cuda" if torch.cuda.is_available() else "cpu",
            "ours": block(
                per["ours"], f_ours, f"groups of {group} icons (a tensor each), stops at the layer"
            ),
            "group": group,
            "bare_forward_backward_icon_steps_per_second": round(limit, 1),
            "fraction_of_limit": round(rate / limit, 3),
            "one_at_a_time": block(
                per["one"],
                f_one,
                "torch-lucent render_vis per direction, same "
                "px/steps/objective, lucent's standard transforms, whole network",
            ),
            "one_at_a_time_our_transforms": block(
                per["otf"],
                f_otf,
                "the same, with our atlas transform list instead of lucent's standard one",
            ),
            "lucent_defaults": block(
                per["default"],
                f_def,
                f"torch-lucent render_vis at 128 px upsampled to 224, {k} icons",
            ),
            "ratio_vs_one_at_a_time": round(per["one"] / per["ours"], 2),
            "ratio_vs_one_at_a_time_our_transforms": round(per["otf"] / per["ours"], 2),
            "untimed": "model loading, the fresh model copy per lucent call, fidelity checks, "
            "the group probe (suggest_group)",
            "ratio_vs_lucent_defaults": round(per["default"] / per["ours"], 2),
            "fidelity_delta_vs_one_at_a_time": round(float(f_ours.mean() - f_one.mean()), 4),
            # the same directions, icon by icon: is ours' fidelity below lucent's with our
            # transforms by more than chance? (the mean paired difference and its standard error)
            "fidelity_paired_vs_our_transforms": {
                "mean_difference": round(float((f_ours - f_otf).mean()), 4),
                "standard_error": round(float((f_ours - f_otf).std(ddof=1) / np.sqrt(n)), 4),
            },
        },
    )


if __name__ == "__main__":
    main()
