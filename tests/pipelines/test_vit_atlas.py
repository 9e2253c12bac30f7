"""A whole atlas of a vision transformer from a weights file loaded by name: timm's
``vit_tiny_patch16_224`` (random weights saved here with safetensors), layer ``blocks.6``; and
the same architecture saved without its head (as CLIP towers and DINOv2 are) runs without
predictions, while a setting that needs class logits stops before any work."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import zarr
from safetensors.torch import save_file

from atlas_core.errors import ConfigError
from pipelines.commands.run import run
from tests.conftest import debug_settings, make_images

pytestmark = pytest.mark.ray
ARCH = "vit_tiny_patch16_224"


def _weights(path: Path, num_classes: int) -> Path:
    torch.manual_seed(0)
    model = timm.create_model(ARCH, pretrained=False, num_classes=num_classes)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def _settings(images: Path, run_dir: Path, weights: Path, *extra: str):
    return debug_settings(
        "model=timm",
        f"model.name=timm:{ARCH}",
        f"model.weights={weights}",
        "layer=blocks.6",
        "data=folder",
        f"data.path={images}",
        f"run_dir={run_dir}",
        "extract.chunk_images=16",
        "extract.batch_size=8",
        "reduce.n_neighbors=8",
        "grid.sizes=[3]",
        "render.icon_px=16",
        "render.steps=2",
        "exemplars.k=2",
        *extra,
    )


def test_a_vit_atlas_from_a_safetensors_file_by_name(tmp_path: Path, local_ray) -> None:
    make_images(tmp_path / "imgs", 32, size=64, seed=2)
    w = _weights(tmp_path / "vit.safetensors", 1000)
    s, resolved = _settings(tmp_path / "imgs", tmp_path / "run", w)
    manifest = run(s, resolved)
    assert all(v["status"] == "done" for v in manifest["stages"].values()), manifest["stages"]
    g = zarr.open_group(str(tmp_path / "run" / "atlas.zarr"), mode="r")
    acts = g["layers/blocks.6/acts"][:]
    assert acts.shape == (32, 192) and np.isfinite(acts).all()
    assert g["images/top_class"].shape[1] == 5  # an ImageNet head: predictions kept
    icons = g["layers/blocks.6/grid/3/icons"][:]
    assert icons.shape[1:] == (16, 16, 3)  # rendered at 224 (fixed positions), stored at 16
    ex = dict(g["layers/blocks.6/exemplars"].attrs)
    assert ex["grid"] == [14, 14] and ex["token_patch_px"] == 16
    assert (tmp_path / "run" / "viewer" / "index.html").is_file()


def test_a_model_without_a_class_head_runs_without_predictions(tmp_path: Path, local_ray) -> None:
    make_images(tmp_path / "imgs", 32, size=64, seed=3)
    w = _weights(tmp_path / "tower.safetensors", 0)  # saved headless, as CLIP towers are
    with pytest.raises(ConfigError) as e:
        run(_settings(tmp_path / "imgs", tmp_path / "refused", w, "extract.attr_classes=3")[0], {})
    assert "no class head" in str(e.value) and "extract.attr_classes=0" in str(e.value)
    assert not (tmp_path / "refused" / "atlas.zarr").exists()  # before any work
    s, resolved = _settings(
        tmp_path / "imgs",
        tmp_path / "run",
        w,
        "stages=[extract,reduce,grid,exemplars,render,plausibility,compose]",
    )
    manifest = run(s, resolved)
    assert manifest["stages"]["compose"]["status"] == "done"
    g = zarr.open_group(str(tmp_path / "run" / "atlas.zarr"), mode="r")
    assert g["images/top_class"].shape[1] == 0  # no predictions
    assert g["layers/blocks.6/acts"].shape == (32, 192)
