"""Batched JPEG decoding with torchvision: nvJPEG on a CUDA device, libjpeg-turbo on the CPU.

The extraction path picks it automatically on CUDA for JPEG files: decoding then runs on the GPU,
next to the forward pass, and the CPU only reads bytes. Anything it cannot handle (not a JPEG,
too many pixels, a decoder error of any kind) returns None and goes through the PIL policy of
:mod:`atlas_core.data.decode`, which classifies it; EXIF orientation is applied either way. The
pixel limit is the PIL path's own check (:func:`header_refusal` on the header's size).
"""

from __future__ import annotations

import io

import torch
from PIL import Image

from atlas_core.data.decode import DecodePolicy, header_refusal

_DEFAULT_POLICY = DecodePolicy()


def is_jpeg(data: bytes) -> bool:
    return data[:3] == b"\xff\xd8\xff"


def _acceptable(data: bytes, policy: DecodePolicy) -> bool:
    """A JPEG whose header (read without decoding) is within the policy's limits."""
    if not is_jpeg(data):
        return False
    try:
        with Image.open(io.BytesIO(data)) as img:
            w, h = img.size
            if img.mode not in ("RGB", "L"):  # CMYK and friends: PIL's conversion policy
                return False
    except Exception:  # an unreadable header: let the PIL path classify it
        return False
    return header_refusal(w, h, policy) is None


def decode_jpegs(
    datas: list[bytes], *, device: torch.device | str, policy: DecodePolicy = _DEFAULT_POLICY
) -> list[torch.Tensor | None]:
    """uint8 RGB tensors (3, H, W) on ``device``, EXIF orientation applied; None where the
    caller must fall back to the PIL path."""
    from torchvision.io import ImageReadMode, decode_jpeg

    out: list[torch.Tensor | None] = [None] * len(datas)
    idx = [i for i, d in enumerate(datas) if _acceptable(d, policy)]
    if not idx:
        return out
    tensors = [torch.frombuffer(bytearray(datas[i]), dtype=torch.uint8) for i in idx]
    try:
        decoded = decode_jpeg(
            tensors, mode=ImageReadMode.RGB, device=device, apply_exif_orientation=True
        )
    except Exception:  # one bad file fails the batch: decode one by one
        decoded = []
        for t in tensors:
            try:
                decoded.append(
                    decode_jpeg(
                        t, mode=ImageReadMode.RGB, device=device, apply_exif_orientation=True
                    )
                )
            except Exception:  # whatever the decoder raises: the PIL path classifies the file
                decoded.append(None)
    for i, d in zip(idx, decoded, strict=True):
        out[i] = d
    return out
