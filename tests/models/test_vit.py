"""Vision transformers through the feature-map adapter: random-init tiny timm models built here
(a ViT/16 with a class token, a distilled DeiT with two prefix tokens, a DINOv2-style model with
four registers), their tokens mapped to patch grids against a direct forward pass, sampled
tokens against a brute-force index, attribution against finite differences, a layer that is
neither a map nor tokens refused by name, and a headless model without predictions."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch

from atlas_core.errors import ConfigError
from atlas_core.extract import ActivationExtractor, sample_positions
from atlas_core.models.layers import TokenGrid, capture, layer_shapes
from atlas_core.models.preprocess import Preprocess
from atlas_core.models.receptive import receptive_field
from atlas_core.models.registry import LoadedModel, ModelSpec, _num_classes

# (timm architecture, overrides, prefix tokens, patch grid side at the input size)
MODELS = {
    "vit": ("vit_tiny_patch16_224", {"img_size": 64, "num_classes": 10}, 1, 4),
    "deit_distilled": (
        "deit_tiny_distilled_patch16_224",
        {"img_size": 64, "num_classes": 10},
        2,
        4,
    ),
    "dinov2_registers": ("vit_small_patch14_reg4_dinov2", {"img_size": 56, "num_classes": 0}, 5, 4),
}


def _model(kind: str) -> LoadedModel:
    arch, kw, _, _ = MODELS[kind]
    torch.manual_seed(0)
    module = timm.create_model(arch, pretrained=False, depth=2, **kw).eval()
    size = int(kw["img_size"])
    return LoadedModel(
        ModelSpec(f"timm:{arch}"), module, Preprocess(size=size, crop_pct=1.0), _num_classes(module)
    )


def _tokens(module: torch.nn.Module, x: torch.Tensor, layer: str) -> torch.Tensor:
    """The layer's raw output (B, N, C) from a plain hook: the reference."""
    got = {}
    target = dict(module.named_modules())[layer]
    h = target.register_forward_hook(lambda _m, _i, o: got.setdefault("t", o))
    with torch.no_grad():
        module(x)
    h.remove()
    return got["t"]


@pytest.mark.parametrize("kind", list(MODELS))
def test_tokens_map_to_the_patch_grid_after_the_models_own_prefix(kind: str) -> None:
    m = _model(kind)
    _, kw, prefix, side = MODELS[kind]
    grid = TokenGrid.of(m.module)
    assert grid is not None and grid.prefix == prefix  # read from the model, not from N
    x = torch.randn(2, 3, kw["img_size"], kw["img_size"])
    for layer in ("blocks.1", "blocks.1.mlp.fc1"):
        with torch.no_grad(), capture(m.module, [layer]) as out:
            m.module(x)
        raw = _tokens(m.module, x, layer)
        c = raw.shape[-1]
        want = raw[:, prefix:].transpose(1, 2).reshape(2, c, side, side)
        assert out[layer].shape == (2, c, side, side)
        assert torch.equal(out[layer], want)
        assert torch.equal(out[layer][1, :, 2, 3], raw[1, prefix + 2 * side + 3])
    shapes = layer_shapes(m.module, ["blocks.1"], kw["img_size"])
    assert shapes == {"blocks.1": (raw.shape[-1] // 4, side, side)}  # fc1 is 4 x wider


def test_sampled_tokens_are_the_tokens_at_their_patches() -> None:
    m = _model("deit_distilled")
    x = torch.randn(3, 3, 64, 64)
    pos = sample_positions(np.arange(3), 2, (4, 4), seed=7, edge=0)
    ex = ActivationExtractor(m, ["blocks.1"], {"blocks.1": (4, 4)}, topk=2)
    got = ex(x, pos).acts["blocks.1"]
    raw = _tokens(m.module, x, "blocks.1")
    for s, (y, xx) in enumerate(pos):
        img = s // 2
        want = raw[img, 2 + int(y) * 4 + int(xx)].numpy()  # after class and distillation tokens
        assert np.allclose(got[s], want, atol=1e-6)


def test_attribution_through_tokens_matches_finite_differences() -> None:
    """a . d logit_c / d a at the sampled token: d/dt logit_c((1 + t) a) at t = 0."""
    m = _model("vit")
    m.module.double()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    pos = sample_positions(np.arange(2), 2, (4, 4), seed=0, edge=0)
    out = ActivationExtractor(m, ["blocks.0"], {"blocks.0": (4, 4)}, topk=3, attr_classes=3)(x, pos)
    assert out.attr is not None

    def logit(b: int, y: int, xx: int, t: float, c: int) -> float:
        def scale(_m, _i, o):
            o = o.clone()
            o[b, 1 + y * 4 + xx] *= 1 + t
            return o

        h = m.module.blocks[0].register_forward_hook(scale)
        with torch.no_grad():
            v = float(m.module(x)[b, c])
        h.remove()
        return v

    eps = 1e-6
    for s in range(4):
        b, (y, xx) = s // 2, (int(pos[s][0]), int(pos[s][1]))
        for j in range(3):
            c = int(out.top_class[b, j])
            fd = (logit(b, y, xx, eps, c) - logit(b, y, xx, -eps, c)) / (2 * eps)
            assert abs(out.attr["blocks.0"][s, j] - fd) < 1e-5 * max(1.0, abs(fd)), (s, j)


def test_a_layer_that_is_neither_a_map_nor_tokens_is_refused_by_name() -> None:
    m = _model("vit")
    with pytest.raises(ConfigError) as e:
        layer_shapes(m.module, ["head"], 64)
    assert "head" in str(e.value) and "(1, 10)" in str(e.value) and "pick another" in str(e.value)


def test_the_receptive_field_of_a_token_is_measured_by_the_gradient() -> None:
    """Attention sees every patch: a token's theoretical field is the whole input, its
    effective field (90% of the gradient's mass) smaller."""
    m = _model("vit")
    rf = receptive_field(m.module, "blocks.1", 64)
    assert rf.grid == (4, 4) and rf.theoretical == 64 and 16 <= rf.effective <= 64


def test_a_model_without_a_class_head_has_no_classes() -> None:
    assert _model("dinov2_registers").num_classes == 0
    assert _model("vit").num_classes == 10
    clip = timm.create_model(
        "vit_base_patch16_clip_224", pretrained=False, depth=1, num_classes=512
    )  # a CLIP tower: its head is the projection
    assert _num_classes(clip, "timm:vit_base_patch16_clip_224") == 0
    assert _num_classes(clip, "timm:vit_base_patch16_224") == 512  # the same as a classifier
    clip.reset_classifier(1000)  # a CLIP tower fine-tuned on ImageNet-1k: a classifier
    assert _num_classes(clip, "timm:vit_base_patch16_clip_224") == 1000


@pytest.mark.parametrize(
    ("arch", "head"),
    [("resnet10t", "fc"), ("efficientnet_b0", "classifier"), ("convnext_atto", "head.fc")],
)
def test_timm_convnets_load_with_their_own_classifier_and_headless(tmp_path, arch, head) -> None:
    """The classifier's size is read under the architecture's own classifier name, so a timm
    conv net's checkpoint loads with its head, and without it as a headless model."""
    from safetensors.torch import save_file

    from atlas_core.models import load_model

    torch.manual_seed(0)
    state = timm.create_model(arch, pretrained=False, num_classes=7).state_dict()
    assert f"{head}.weight" in state
    full, headless = tmp_path / "full.safetensors", tmp_path / "headless.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(full))
    save_file(
        {k: v.contiguous() for k, v in state.items() if not k.startswith(f"{head}.")}, str(headless)
    )
    m = load_model(ModelSpec(f"timm:{arch}", str(full)))
    assert m.num_classes == 7
    assert torch.equal(m.module.state_dict()[f"{head}.weight"], state[f"{head}.weight"])
    assert load_model(ModelSpec(f"timm:{arch}", str(headless))).num_classes == 0


@pytest.mark.parametrize("mode", ["all", "mean", "cls"])
def test_every_token_the_mean_and_the_class_token(mode: str) -> None:
    """sampling=all takes every patch token in row-major order, mean the patch tokens' mean,
    cls the class token (the first prefix token), each against the raw tokens."""
    m = _model("vit")
    x = torch.randn(2, 3, 64, 64)
    k = 16 if mode == "all" else 1
    pos = sample_positions(np.arange(2), k, (4, 4), seed=1, mode=mode)
    pool = mode if mode in ("mean", "cls") else "position"
    got = ActivationExtractor(m, ["blocks.1"], {"blocks.1": (4, 4)}, topk=1, pool=pool)(
        x, pos
    ).acts["blocks.1"]
    raw = _tokens(m.module, x, "blocks.1").numpy()
    want = {
        "all": raw[:, 1:].reshape(-1, raw.shape[-1]),
        "mean": raw[:, 1:].mean(1),
        "cls": raw[:, 0],
    }[mode]
    assert got.shape == want.shape and np.allclose(got, want, atol=1e-5)


def test_the_class_token_needs_a_transformer_and_pools_need_no_attribution() -> None:
    from atlas_core.models import ModelSpec as Spec
    from atlas_core.models import load_model

    conv = load_model(Spec(name="tiny"))
    with pytest.raises(ConfigError, match="no class token"):
        ActivationExtractor(conv, ["blocks.2"], {"blocks.2": (8, 8)}, pool="cls")
    with pytest.raises(ConfigError, match="attribution is per position"):
        ActivationExtractor(
            _model("vit"), ["blocks.1"], {"blocks.1": (4, 4)}, topk=2, attr_classes=2, pool="mean"
        )
