"""The torchvision JPEG path (nvJPEG on CUDA) against the PIL path it replaces there."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from atlas_core.data import DecodePolicy, decode
from atlas_core.data.jpeg import decode_jpegs
from atlas_core.models.preprocess import Preprocess


def _jpeg(arr: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=95, **kw)
    return buf.getvalue()


def _smooth(h: int, w: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // w, y * 255 // h, (x + y) * 127 // (h + w)], -1).astype(np.uint8)


def _check(device: str, tmp_path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    datas = [
        _jpeg(_smooth(90, 120)),
        _jpeg(_smooth(60, 80), exif=exif.tobytes()),
        b"\x89PNG not a jpeg",
        _jpeg(_smooth(90, 120))[:200],
        _jpeg(np.zeros((4, 4, 3), np.uint8)),
    ]
    out = decode_jpegs(datas, device=device, policy=DecodePolicy(min_side=8))
    assert out[0] is not None and out[1] is not None
    assert out[2] is None and out[4] is None  # not a JPEG; too small: the PIL path classifies
    assert tuple(out[1].shape) == (3, 80, 60)  # EXIF rotation applied, as PIL's path does
    for i in (0, 1):
        p = tmp_path / f"{i}.jpg"
        p.write_bytes(datas[i])
        ref = np.asarray(decode(str(p)).image).astype(int)
        got = out[i].permute(1, 2, 0).cpu().numpy().astype(int)
        assert np.abs(got - ref).mean() < 2.0  # two JPEG decoders agree to rounding
    pre = Preprocess(size=64, crop_pct=0.875)
    x = pre.tensor_to_input(out[0])
    ref = pre.to_array(decode(str(tmp_path / "0.jpg")).image).astype(np.float32) / 255
    assert x.shape == (3, 64, 64) and np.abs(x.permute(1, 2, 0).cpu().numpy() - ref).mean() < 0.02


def test_torchvision_jpeg_path_matches_pil_on_cpu(tmp_path) -> None:
    _check("cpu", tmp_path)


@pytest.mark.gpu
def test_nvjpeg_path_matches_pil(tmp_path) -> None:
    assert torch.cuda.is_available()
    _check("cuda", tmp_path)
